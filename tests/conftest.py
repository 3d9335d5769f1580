"""The test cast: a real database (SQLite or PostgreSQL), real Redis, a real SMTP server.

``NURTURE_TEST_DATABASE`` picks the backend: unset or ``sqlite`` gives every test a
fresh SQLite file (a copy of one migrated at session start); ``postgresql`` creates
one database per session at ``postgresql://postgres@127.0.0.1:5432/nurture_test_<pid>``,
migrates it once and truncates every table between tests. CI runs the suite once
per backend.

Every test that touches the engine gets ``settings`` (also exported as ``NURTURE_*``
environment variables, since RQ jobs read ``Settings.from_env()``), a per-test RQ
queue on the local Redis (its keys are deleted afterwards), an aiosmtpd server with
a recording handler, and a fixed clock that the ``nurture`` fixture moves.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from redis import Redis
from rq import Queue, SimpleWorker
from rq.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from sqlmodel import Session, SQLModel, select

from nurture import db
from nurture.config import PROJECT_ROOT, Settings
from nurture.enrollment import LeadFilter, enroll
from nurture.lead_import import import_leads
from nurture.loading import load_campaigns
from nurture.models import Enrollment, Lead, Message, User
from nurture.queues import enqueue_send_batches
from nurture.scheduling import run_tick
from nurture.tasks import attempt_journal

REPO = PROJECT_ROOT
CAMPAIGNS_DIR = REPO / "campaigns"
CORPUS = Path(os.environ.get("NURTURE_CORPUS_DIR") or REPO.parent / "shared" / "corpus")  # see shared/corpus/README.md


def corpus_file(*parts: str) -> Path:
    """A file or folder of the public corpus; missing is a failure, not a skip (CI lays shared/ beside the clone)."""
    path = CORPUS.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"public corpus not found at {path}: put shared/ beside the repository or set NURTURE_CORPUS_DIR")
    return path
TEMPLATES_DIR = REPO / "templates" / "email"
NURTURE_BIN = REPO / ".venv" / "bin" / "nurture"
REDIS_URL = "redis://127.0.0.1:6379/0"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
SECRET_KEY = "test-secret-key-that-is-long-enough-0123456789"
FROM = "Отдел продаж Nurture <sales@nurture.example.com>"
BASE_URL = "https://nurture.example.com"
# Monday 2 March 2026, 07:00 UTC = 10:00 in Moscow (the default sequence's zone).
START = datetime(2026, 3, 2, 7, 0, tzinfo=timezone.utc)
BACKEND = os.environ.get("NURTURE_TEST_DATABASE", "sqlite").strip().lower() or "sqlite"
if BACKEND not in ("sqlite", "postgresql"):
    raise RuntimeError(f"NURTURE_TEST_DATABASE={BACKEND!r}: use sqlite or postgresql")


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.01, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# --- database -----------------------------------------------------------------------------------

def _forget_engine(url: str) -> None:
    """Close and drop this process's cached engine for ``url`` (no ResourceWarning later)."""
    for key in [k for k in db._engines if k[1] == url]:
        db._engines.pop(key).dispose()


@pytest.fixture(scope="session")
def _database_template(tmp_path_factory):
    """SQLite: one migrated file to copy per test. PostgreSQL: one migrated database per session."""
    if BACKEND == "sqlite":
        path = tmp_path_factory.mktemp("template") / "nurture.db"
        url = f"sqlite:///{path}"
        db.upgrade(url)
        _forget_engine(url)
        yield path
        return
    import psycopg

    name = f"nurture_test_{os.getpid()}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    try:
        db.upgrade(url)
        yield url
    finally:
        _forget_engine(url)
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(_database_template, tmp_path):
    if BACKEND == "sqlite":
        path = tmp_path / "nurture.db"
        shutil.copyfile(_database_template, path)
        url = f"sqlite:///{path}"
        yield url
        _forget_engine(url)
        return
    url = _database_template
    tables = ", ".join(f'"{t.name}"' for t in SQLModel.metadata.sorted_tables)
    with db.engine_for(url).begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    yield url


@pytest.fixture
def session(database_url):
    """A session on the test's own database, for tests that write and read rows directly."""
    with Session(db.engine_for(database_url), expire_on_commit=False) as s:
        yield s


@pytest.fixture
def is_postgresql():
    return BACKEND == "postgresql"


# --- SMTP -----------------------------------------------------------------------------------------

class RecordingHandler:
    """Accepts everything except what it is told to refuse; records every accepted message.

    ``replies``: recipient -> RCPT reply (e.g. "451 4.3.0 Try again later"); a list
    of replies is used up one per attempt, then the recipient is accepted.
    ``data_replies``: recipient -> DATA reply, the same way; ``data_filter(rcpts, raw)``
    may return a DATA reply for one particular message.
    ``delay``: seconds to wait in DATA before answering (a slow server).
    ``drop_in_data``: recipients whose message is received, then the connection drops
    before the answer (the client cannot know whether it was delivered).
    ``on_data``: called with (mail_from, rcpts, raw) after recording.
    """

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.replies: dict[str, str | list[str]] = {}
        self.data_replies: dict[str, str | list[str]] = {}
        self.rcpt_log: list[str] = []
        self.delay = 0.0
        self.on_data: Callable[[str, list[str], bytes], None] | None = None
        self.data_filter: Callable[[list[str], bytes], str | None] | None = None
        self.drop_in_data: set[str] = set()  # recipients whose DATA ends in a dropped connection

    @staticmethod
    def _take(table: dict, address: str) -> str | None:
        reply = table.get(address.lower())
        if isinstance(reply, list):
            if not reply:
                return None
            return reply.pop(0)
        return reply

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self.rcpt_log.append(address)
        reply = self._take(self.replies, address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.drop_in_data & {r.lower() for r in envelope.rcpt_tos}:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
            server.transport.abort()  # the data arrived, the answer never does
            return "250 OK"
        for rcpt in envelope.rcpt_tos:
            reply = self._take(self.data_replies, rcpt)
            if reply:
                return reply
        if self.data_filter:
            reply = self.data_filter(list(envelope.rcpt_tos), envelope.content)
            if reply:
                return reply
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        if self.on_data:
            self.on_data(envelope.mail_from, list(envelope.rcpt_tos), envelope.content)
        return "250 Message accepted for delivery"

    def parsed(self):
        import email
        import email.policy

        return [email.message_from_bytes(raw, policy=email.policy.default) for _, _, raw in self.messages]


class SmtpServer:
    """An aiosmtpd Controller that can be taken down and brought back on the same port."""

    def __init__(self, handler: RecordingHandler) -> None:
        self.handler = handler
        self.hostname, self.port = "127.0.0.1", free_port()
        self.controller: Controller | None = None

    def start(self) -> None:
        self.controller = Controller(self.handler, hostname=self.hostname, port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@pytest.fixture
def smtpd():
    handler = RecordingHandler()
    server = SmtpServer(handler)
    server.start()
    try:
        yield server, handler
    finally:
        server.stop()


# --- Redis ----------------------------------------------------------------------------------------

@pytest.fixture
def redis_conn():
    conn = Redis.from_url(REDIS_URL)
    conn.ping()
    yield conn
    conn.close()


def _delete_queue_keys(conn: Redis, queue_name: str) -> None:
    queue = Queue(queue_name, connection=conn)
    job_ids = set(queue.get_job_ids())
    for registry_class in (StartedJobRegistry, FinishedJobRegistry, FailedJobRegistry, DeferredJobRegistry,
                           ScheduledJobRegistry, CanceledJobRegistry):
        job_ids.update(registry_class(queue=queue).get_job_ids(cleanup=False))
    keys = set(conn.scan_iter(match=f"*{queue_name}*", count=1000))
    for job_id in job_ids:
        keys.update(conn.scan_iter(match=f"rq:*{job_id}*", count=1000))
    for worker_key in conn.scan_iter(match="rq:worker:*", count=1000):  # workers started by CLI subprocesses
        if not worker_key.endswith(b":executions") and conn.type(worker_key) == b"hash" \
                and queue_name.encode() in (conn.hget(worker_key, "queues") or b"").split(b","):
            keys.update((worker_key, worker_key + b":executions"))
            conn.srem("rq:workers", worker_key)
    if keys:
        conn.delete(*keys)
    conn.srem("rq:queues", f"rq:queue:{queue_name}")


# --- settings and the harness ---------------------------------------------------------------------

@pytest.fixture
def settings(database_url, smtpd, redis_conn, monkeypatch, tmp_path) -> Settings:
    controller, _ = smtpd
    queue_name = f"nurture-test-{os.getpid()}-{uuid.uuid4().hex[:10]}"
    for var in [v for v in os.environ if v.startswith("NURTURE_") and v != "NURTURE_TEST_DATABASE"]:
        monkeypatch.delenv(var)
    env = {
        "NURTURE_ENV": "dev",
        "NURTURE_DATABASE_URL": database_url,
        "NURTURE_REDIS_URL": REDIS_URL,
        "NURTURE_SMTP_URL": f"smtp://{controller.hostname}:{controller.port}?timeout=5",
        "NURTURE_QUEUE": queue_name,
        "NURTURE_NOW": iso(START),
        "NURTURE_FROM": FROM,
        "NURTURE_BASE_URL": BASE_URL,
        "NURTURE_SECRET_KEY": SECRET_KEY,
        "NURTURE_CAMPAIGNS_DIR": str(CAMPAIGNS_DIR),
        "NURTURE_TEMPLATES_DIR": str(TEMPLATES_DIR),
        "NURTURE_LEASE_SECONDS": "600",
    }
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    yield Settings.from_env()
    _delete_queue_keys(redis_conn, queue_name)


ANNA = "anna.sales@example.com"
IVAN = "ivan.sales@example.com"


@dataclass
class Nurture:
    """The engine wired for one test: clock, database, queue, SMTP server, worker."""

    settings: Settings
    redis: Redis
    smtp: RecordingHandler
    smtp_server: SmtpServer
    monkeypatch: pytest.MonkeyPatch
    tmp_path: Path
    enqueued: list[list[int]] = field(default_factory=list)

    # clock
    @property
    def now(self) -> datetime:
        return self.settings.clock.now()

    def at(self, moment: datetime) -> "Nurture":
        """Move the fixed clock of this process, of RQ jobs and of CLI subprocesses."""
        self.monkeypatch.setenv("NURTURE_NOW", iso(moment))
        self.settings = self.settings.with_now(iso(moment))
        return self

    def advance(self, **delta) -> "Nurture":
        return self.at(self.now + timedelta(**delta))

    # database
    def session(self) -> Session:
        return Session(db.engine_for(self.settings.database_url), expire_on_commit=False)

    def scalar(self, statement):
        with self.session() as s:
            return s.exec(statement).first()

    def all(self, statement) -> list:
        with self.session() as s:
            return list(s.exec(statement).all())

    def count(self, model, *where) -> int:
        with self.session() as s:
            return s.exec(select(sa.func.count()).select_from(model).where(*where)).one()

    def lead(self, email: str) -> Lead:
        with self.session() as s:
            return s.exec(select(Lead).where(Lead.email == email)).one()

    def messages(self, *where) -> list[Message]:
        return self.all(select(Message).where(*where).order_by(Message.id))

    def enrollments(self, *where) -> list[Enrollment]:
        return self.all(select(Enrollment).where(*where).order_by(Enrollment.id))

    # the cast
    def create_users(self) -> dict[str, int]:
        with self.session() as s:
            for email, name in ((ANNA, "Анна Соколова"), (IVAN, "Ivan Petrov")):
                s.add(User(email=email, name=name, role="rep", title="Account executive", phone="+7 900 000-00-00",
                           created_at=self.now))
            s.commit()
            return dict(s.exec(select(User.email, User.id)).all())

    def import_csv(self, text: str | bytes, **kwargs):
        data = text.encode("utf-8") if isinstance(text, str) else text
        with self.session() as s:
            return import_leads(s, data, self.now, self.settings.default_language, settings=self.settings, **kwargs)

    def load_campaigns(self, campaigns_dir: Path = CAMPAIGNS_DIR, templates_dir: Path = TEMPLATES_DIR):
        with self.session() as s:
            return load_campaigns(s, Path(campaigns_dir), Path(templates_dir), self.settings.default_language, self.now)

    def enroll(self, sequence_key: str = "systematic-follow-up", **filter_kwargs):
        if not filter_kwargs:
            filter_kwargs = {"everyone": True}
        with self.session() as s:
            return enroll(s, self.settings, sequence_key, LeadFilter(**filter_kwargs), self.now)

    # scheduler and worker
    def enqueue(self, ids: list[int]) -> None:
        self.enqueued.append(list(ids))
        enqueue_send_batches(self.queue, ids, self.settings.send_batch_size, self.settings.lease_seconds)

    @property
    def queue(self) -> Queue:
        return Queue(self.settings.queue_name, connection=self.redis)

    def tick(self, enqueue: Callable[[list[int]], None] | None = None):
        with self.session() as s:
            return run_tick(s, self.settings, self.now, enqueue or self.enqueue, attempt_journal(self.settings))

    def work(self) -> None:
        """Run the real RQ worker in burst mode, in this process."""
        worker = SimpleWorker([self.queue], connection=self.redis, name=f"{self.settings.queue_name}-{uuid.uuid4().hex[:6]}")
        worker.work(burst=True, logging_level="WARNING")
        failed = FailedJobRegistry(queue=self.queue)
        assert failed.count == 0, [self.queue.fetch_job(j).latest_result().exc_string for j in failed.get_job_ids()]

    def tick_and_work(self):
        report = self.tick()
        self.work()
        return report

    # CLI
    def cli(self, *args: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess:
        """Run the installed ``nurture`` command with this test's environment."""
        proc = subprocess.run([str(NURTURE_BIN), *args], capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ))
        if check:
            assert proc.returncode == 0, (proc.stdout, proc.stderr)
        return proc


@pytest.fixture
def nurture(settings, redis_conn, smtpd, monkeypatch, tmp_path) -> Nurture:
    server, handler = smtpd
    return Nurture(settings=settings, redis=redis_conn, smtp=handler, smtp_server=server,
                   monkeypatch=monkeypatch, tmp_path=tmp_path)


@pytest.fixture
def cast(nurture) -> Nurture:
    """Users anna and ivan (reps), and the shipped campaigns and templates loaded."""
    nurture.create_users()
    nurture.load_campaigns()
    return nurture


LEADS_CSV = """\
email;first_name;last_name;company;timezone;language;owner;tags
olga@example.com;Ольга;Иванова;ООО "Ромашка";Europe/Moscow;ru;anna.sales@example.com;webinar
petr@example.org;Пётр;Сидоров;Вектор;Asia/Vladivostok;ru;ivan.sales@example.com;webinar,pricing
john@example.net;John;Smith;Acme Corp;America/Los_Angeles;en;ivan.sales@example.com;inbound
emma@example.co.uk;Emma;Brown;Brown & Sons;Europe/London;en;anna.sales@example.com;inbound
"""


@pytest.fixture
def leads(cast) -> Nurture:
    """The cast plus four leads in four time zones, imported through the real import."""
    report = cast.import_csv(LEADS_CSV)
    assert report.created == 4 and not report.rejected, report
    return cast


@pytest.fixture
def team(nurture) -> Nurture:
    """The two reps, anna and ivan; no campaigns loaded."""
    nurture.users = nurture.create_users()
    return nurture


def drive(n: Nurture, until: datetime | None = None, max_rounds: int = 300) -> None:
    """Move the clock from due moment to due moment, ticking and working at each, until
    nothing is scheduled any more (or the next due moment is after ``until``)."""
    for _ in range(max_rounds):
        n.tick()
        n.work()
        due = [e.next_run_at for e in n.enrollments(Enrollment.status == "active") if e.next_run_at]
        due += [m.available_at for m in n.messages(Message.status == "queued") if m.available_at]
        if not due:
            return
        following = max(min(due), n.now + timedelta(seconds=1))
        if until is not None and following > until:
            return
        n.at(following)
    raise AssertionError(f"the calendar did not finish in {max_rounds} rounds")


def write_campaigns(directory: Path, *documents: str, shipped: bool = False) -> Path:
    """A campaigns folder with the given sequence YAML documents (and the shipped file)."""
    directory.mkdir(parents=True, exist_ok=True)
    if shipped:
        shutil.copy(CAMPAIGNS_DIR / "systematic-follow-up.yaml", directory / "systematic-follow-up.yaml")
    for document in documents:
        key = re.search(r"^key: *(\S+)", document, re.M)[1]  # not yaml.safe_load: some are broken on purpose
        (directory / f"{key}.yaml").write_text(document, encoding="utf-8")
    return directory


SHORT_SEQUENCE = """\
key: webinar-follow-up
name: Webinar follow-up
timezone: Europe/Moscow
steps:
  - key: thanks
    kind: first_contact
    day: 0
    template: first_contact
  - key: recording
    kind: news
    day: [7, 8]
    template: news
"""


# --- tracking, unsubscribe and inbound mail ----------------------------------------------------
# Added for test_tracking, test_event_stream, test_machine_detection, test_unsubscribe,
# test_inbound and test_imap. The existing fixtures above are unchanged.

INBOUND_SECRET = "inbound-secret-0123456789abcdef"
LINK_URLS = ("https://example.org/pricing?plan=pro&ref=mail", "https://docs.example.org/guide/start",
             "https://example.org/demo")

LINKS_TEMPLATE = """\
---
subjects:
  - "{lang_subject}, {{{{ lead.first_name }}}}"
---
<mjml lang="{lang}">
  <mj-body width="600px">
    <mj-section>
      <mj-column>
        <mj-text>{greeting} {{{{ lead.first_name }}}}! <a href="https://example.org/pricing?plan=pro&amp;ref=mail">{pricing}</a></mj-text>
        <mj-text>{guide}: https://docs.example.org/guide/start</mj-text>
        <mj-button href="https://example.org/demo">{demo}</mj-button>
        <mj-text><a href="mailto:{{{{ rep.email }}}}">{{{{ rep.email }}}}</a></mj-text>
      </mj-column>
    </mj-section>
    <mj-include path="_footer.{lang}.mjml" />
  </mj-body>
</mjml>
"""

LINKS_SEQUENCE = """\
key: {key}
name: "{name}"
timezone: Europe/Moscow
exit_on:
  reply: true
  domain_reply: {domain_reply}
  click: {click}
steps:
  - key: hello
    kind: first_contact
    day: 0
    template: links
  - key: again
    kind: follow_up
    day: [2, 3]
    template: links
  - key: later
    kind: news
    day: [20, 21]
    template: links
"""


def links_sequence(key: str = "links", name: str = "Links", click: bool = False, domain_reply: bool = False) -> str:
    return LINKS_SEQUENCE.format(key=key, name=name, click=str(click).lower(), domain_reply=str(domain_reply).lower())


def load_link_campaigns(n: Nurture, *sequences: str) -> None:
    """The ``links`` templates (three external links in HTML and text, the shipped footer) and the given sequences."""
    templates = n.tmp_path / "templates"
    if not templates.exists():
        templates.mkdir()
        for partial in TEMPLATES_DIR.glob("_*.mjml"):
            shutil.copy(partial, templates / partial.name)
        for lang, words in (("en", dict(lang_subject="Links", greeting="Hi", pricing="our prices", guide="The guide",
                                        demo="Book a demo")),
                            ("ru", dict(lang_subject="Ссылки", greeting="Здравствуйте,", pricing="наши цены",
                                        guide="Руководство", demo="Записаться на демо"))):
            (templates / f"links.{lang}.mjml").write_text(LINKS_TEMPLATE.format(lang=lang, **words), encoding="utf-8")
    campaigns = write_campaigns(n.tmp_path / "campaigns", *(sequences or (links_sequence(),)))
    n.load_campaigns(campaigns, templates)


def send_due(n: Nurture) -> None:
    """Jump to the latest next step due among active enrollments, then tick and work once."""
    due = [e.next_run_at for e in n.enrollments(Enrollment.status == "active") if e.next_run_at]
    n.at(max(max(due), n.now))
    n.tick_and_work()


def received_by(n: Nurture) -> dict[str, list]:
    """Recipient address -> the parsed messages it received, in order."""
    out: dict[str, list] = {}
    for (_, rcpts, _), parsed in zip(n.smtp.messages, n.smtp.parsed()):
        for rcpt in rcpts:
            out.setdefault(rcpt.lower(), []).append(parsed)
    return out


@pytest.fixture
def event_stream(settings, redis_conn):
    """This test's tracking event stream (named after its own queue, so tests running at
    the same time on the same Redis do not see each other), deleted afterwards."""
    from nurture.event_stream import stream_key

    name = stream_key(settings.queue_name)
    redis_conn.delete(name)
    yield name
    redis_conn.delete(name)


@pytest.fixture
def shared_event_stream(event_stream):
    """The stream other processes of this test (gunicorn, the CLI) use: the same one,
    since they get this test's NURTURE_QUEUE."""
    return event_stream


class Web:
    """The Flask app of this test's settings and its test client; ``at`` moves its clock."""

    def __init__(self, n: Nurture) -> None:
        from nurture.app import create_app

        self.n = n
        self.app = create_app(n.settings)
        self.app.testing = True
        self.client = self.app.test_client()

    def at(self, moment: datetime) -> "Web":
        self.app.config["NURTURE"] = self.app.config["NURTURE"].with_now(iso(moment))
        return self

    def __getattr__(self, name):  # get, post, head, ... of the test client
        return getattr(self.client, name)


@pytest.fixture
def web(nurture) -> Callable[[], Web]:
    """Builds the app from the test's current settings (call it after setting the clock)."""
    apps: list[Web] = []

    def make() -> Web:
        apps.append(Web(nurture))
        return apps[-1]

    yield make
    for app in apps:
        app.app.extensions["nurture_redis"].close()


@pytest.fixture(scope="session")
def imap_server():
    """One private Dovecot for the whole session (tests/imap_server.py)."""
    from imap_server import dovecot

    with dovecot() as server:
        yield server


@pytest.fixture
def mailbox(imap_server, nurture):
    """A fresh IMAP folder for this test, set as NURTURE_IMAP_URL (env and the harness's settings)."""
    from dataclasses import replace

    folder = f"test-{uuid.uuid4().hex[:12]}"
    with imap_server.client() as client:
        client.create_folder(folder)
    url = imap_server.url(folder)
    nurture.monkeypatch.setenv("NURTURE_IMAP_URL", url)
    nurture.settings = replace(nurture.settings, imap_url=url)
    yield folder
    with imap_server.client() as client:
        client.delete_folder(folder)


TRACKED_LEADS_CSV = """\
email,first_name,last_name,company,timezone,language
olga@example.com,Ольга,Иванова,Ромашка,Europe/Moscow,ru
john@example.net,John,Smith,Acme,Europe/Moscow,en
"""


def start_links(n: Nurture, csv: str = TRACKED_LEADS_CSV, sequences: tuple[str, ...] = (),
                enroll: tuple[str, ...] = ("links",)) -> dict[str, Message]:
    """Users, the ``links`` templates and ``sequences`` loaded, ``csv`` imported, everyone enrolled
    in each of ``enroll``, and the first step sent: lead email -> its first sent message."""
    n.create_users()
    load_link_campaigns(n, *(sequences or (links_sequence(),)))
    report = n.import_csv(csv)
    assert not report.rejected, report.rejected
    for key in enroll:
        n.enroll(key)
    send_due(n)
    sent = n.messages(Message.status == "sent")
    assert len(sent) == report.created * len(enroll), [(m.lead_id, m.status, m.error) for m in n.messages()]
    with n.session() as s:
        emails = dict(s.exec(select(Lead.id, Lead.email)).all())
    first: dict[str, Message] = {}
    for message in sent:
        first.setdefault(emails[message.lead_id], message)
    return first
