"""End-to-end send throughput: scheduler tick -> RQ -> ``nurture worker`` processes -> SMTP.

What it measures
    N leads (``--leads``, default 20,000) enrolled in the repo's default sequence
    (campaigns/ + templates/email/), all of them due for their first-contact email
    at one fixed instant. The clock starts when the scheduler tick starts
    (``nurture.scheduling.run_tick`` in this process, enqueueing with
    ``nurture.queues.enqueue_send_batches`` into a real RQ queue in Redis) and
    stops when the database says every message is ``sent``. The sending is done
    by ``--workers`` (default 2) ``nurture worker --burst --simple`` subprocesses
    started when the tick returns, talking to Postfix's ``smtp-sink``.
    Printed: emails/s end to end, with a breakdown (tick, send, worker start-up).

    Baseline, in the same run: raw ``smtplib`` in ``--workers`` processes, one
    reused connection each, pushing the same number of messages built once with
    nurture's own renderer and ``nurture.mime.build_message`` (so of the same
    sizes) to the same kind of sink. The last line is ``ratio: end_to_end/baseline``
    (the issue aims at >= 0.5).

    Correctness: every dumped message's Message-ID is matched against the database
    (each exactly once) and its envelope recipient against its To header; a sample
    (``--sample``) is parsed with the standard library's email parser and its MIME
    structure, headers and decoded content are checked.

Time line
    Leads are in UTC. Enrollment happens on Monday 2026-03-02 00:00 UTC, so the
    day-0 step of each lead is spread over that day's 09:00-18:00 window; the tick
    runs "as of" 17:59:59.999 the same day (NURTURE_NOW for the workers): after
    every first-contact moment, still inside the send window (otherwise
    ``claim_due`` would defer the step instead of sending it).

Run (needs PostgreSQL at 127.0.0.1:5432, Redis at 127.0.0.1:6379, /usr/sbin/smtp-sink):
    .venv/bin/python bench/send_throughput.py                 # PostgreSQL, 20,000 leads
    .venv/bin/python bench/send_throughput.py --db sqlite
    .venv/bin/python bench/send_throughput.py --worker both   # also the forking worker
    .venv/bin/python bench/send_throughput.py --breakdown      # + time per part of send_batch, in process
    .venv/bin/python bench/send_throughput.py --profile /tmp/prof   # cProfile tick and (simple) workers

It creates a scratch database (``nurture_bench_send_<pid>``, or a SQLite file in a
temp folder), a Redis queue ``nurture-bench-send-<pid>`` and smtp-sink processes,
and removes all of them at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import multiprocessing
import os
import random
import re
import shutil
import smtplib
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

ENROLL_AT = datetime(2026, 3, 2, 0, 0, tzinfo=timezone.utc)  # a Monday
TICK_AT = datetime(2026, 3, 2, 17, 59, 59, 999000, tzinfo=timezone.utc)  # end of that day's 09-18 window
SEQUENCE_KEY = "systematic-follow-up"

FIRST_EN = ["Anna", "John", "Maria", "Peter", "Olga", "Sam", "Lena", "", "Chris", "Dana"]
LAST_EN = ["Smith", "Jones", "Brown", "Taylor", "Wilson", "Evans", "", "Walker"]
FIRST_RU = ["Анна", "Иван", "Мария", "Пётр", "Ольга", "", "Сергей"]
LAST_RU = ["Петрова", "Сидоров", "Кузнецова", "Смирнов", "", "Волкова"]
COMPANIES_EN = ["Example Ltd", "Acme Corp", "Globex", "", "Initech", "Umbrella & Sons"]
COMPANIES_RU = ["ООО «Ромашка»", "АО Вектор", "", "ИП Иванов", "Северсталь-Сервис"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--leads", type=int, default=20000, help="leads enrolled and sent to (default 20000)")
    p.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql")
    p.add_argument("--workers", type=int, default=2, help="worker processes, and baseline client processes (default 2)")
    p.add_argument("--worker", choices=["simple", "fork", "both"], default="simple",
                   help="simple: nurture worker --burst --simple; fork: nurture worker --burst (a work horse per job); "
                        "both: simple, then again on a reset database with fork. The ratio uses the first.")
    p.add_argument("--send-batch", type=int, default=200, help="NURTURE_SEND_BATCH: messages per RQ job (default 200, the project default)")
    p.add_argument("--claim-batch", type=int, default=1000, help="NURTURE_CLAIM_BATCH (default 1000, the project default)")
    p.add_argument("--sample", type=int, default=300, help="dumped messages parsed and checked in full (default 300)")
    p.add_argument("--no-dump", action="store_true", help="do not dump messages (skips the message checks)")
    p.add_argument("--breakdown", action="store_true", help="afterwards, reset and run the jobs in this process, "
                                                           "timing each part of send_batch (wall and CPU per message)")
    p.add_argument("--profile", metavar="DIR", help="run the tick and the workers under cProfile, write .prof files "
                                                   "to DIR and print the top functions (figures are then slower; "
                                                   "a forking worker's work horses are not profiled)")
    p.add_argument("--pg-admin-url", default=c.DEFAULT_PG_ADMIN_URL, help="a database to run CREATE/DROP DATABASE from")
    p.add_argument("--redis-url", default=c.DEFAULT_REDIS_URL)
    p.add_argument("--timeout", type=float, default=600, help="give up on sending after this many seconds")
    args = p.parse_args()
    if args.leads < 1 or args.workers < 1:
        p.error("--leads and --workers must be at least 1")
    return args


# --- setup ------------------------------------------------------------------------------------------

def bench_env(args, database_url: str, queue_name: str, smtp_url: str = "smtp://127.0.0.1:1") -> dict[str, str]:
    """The NURTURE_* settings of this run (the caller's own NURTURE_* variables are ignored)."""
    return {
        "NURTURE_ENV": "dev",
        "NURTURE_DATABASE_URL": database_url,
        "NURTURE_REDIS_URL": args.redis_url,
        "NURTURE_QUEUE": queue_name,
        "NURTURE_SMTP_URL": smtp_url,
        "NURTURE_NOW": TICK_AT.isoformat(),
        "NURTURE_SEND_BATCH": str(args.send_batch),
        "NURTURE_CLAIM_BATCH": str(args.claim_batch),
        "NURTURE_FROM": "Nurture Bench <sales@bench.example.com>",
        "NURTURE_BASE_URL": "https://bench.example.com",
    }


def lead_row(i: int, owners: list[int]) -> dict:
    ru = i % 5 == 0
    rnd = random.Random(i)
    first = rnd.choice(FIRST_RU if ru else FIRST_EN)
    last = rnd.choice(LAST_RU if ru else LAST_EN)
    domain = "пример.рф" if i % 97 == 0 else f"customer{i % 50}.example.com"
    return {
        "email": f"lead{i:07d}@{domain}", "first_name": first, "last_name": last,
        "company": rnd.choice(COMPANIES_RU if ru else COMPANIES_EN), "timezone": "UTC",
        "language": "ru" if ru else "en", "source": "bench", "external_id": None,
        "owner_id": owners[i % len(owners)] if i % 7 else None, "stage": "new", "score": 0.0,
        "probability": 0.0, "status": "active", "paused_until": None, "consent": "", "custom": {},
        "created_at": ENROLL_AT, "updated_at": ENROLL_AT,
    }


def setup_database(args, settings) -> None:
    """Schema, campaigns, users, leads, enrollment: everything due at TICK_AT."""
    import sqlalchemy as sa
    from sqlmodel import Session

    from nurture import db
    from nurture.enrollment import LeadFilter, enroll
    from nurture.loading import load_campaigns
    from nurture.models import Lead, User

    url = settings.database_url
    started = time.perf_counter()
    db.upgrade(url)
    with Session(db.engine_for(url), expire_on_commit=False) as session:
        load_campaigns(session, c.REPO / "campaigns", c.REPO / "templates" / "email", "en", ENROLL_AT)
        reps = [{"email": f"rep{k}@bench.example.com", "name": name, "role": "rep", "title": "Account executive",
                 "phone": f"+7 900 000-00-0{k}", "password_hash": None, "active": True, "created_at": ENROLL_AT}
                for k, name in enumerate(["Ivan Sidorov", "Jane Miller", "Ольга Орлова", "Tom Baker", "Nina Park"])]
        owners = [row.id for row in session.execute(sa.insert(User).returning(User.id), reps)]
        session.commit()
        chunk = 5000
        with c.progress() as bar:
            task = bar.add_task("inserting leads", total=args.leads)
            for start in range(1, args.leads + 1, chunk):
                rows = [lead_row(i, owners) for i in range(start, min(start + chunk, args.leads + 1))]
                session.execute(sa.insert(Lead), rows)
                session.commit()
                bar.advance(task, len(rows))
        with c.progress() as bar:
            bar.add_task("enrolling every lead (nurture.enrollment.enroll)", total=None)
            report = enroll(session, settings, SEQUENCE_KEY, LeadFilter(everyone=True), ENROLL_AT)
        if report.enrolled != args.leads:
            raise SystemExit(f"enrolled {report.enrolled} of {args.leads} leads: {dict(report.refused)}")
        due = session.execute(sa.text("SELECT count(*) FROM enrollment WHERE status = 'active' AND next_run_at <= :t"),
                              {"t": TICK_AT if db.is_postgresql(session) else TICK_AT.replace(tzinfo=None)}).scalar()
        if due != args.leads:
            raise SystemExit(f"only {due} of {args.leads} enrollments are due at {TICK_AT}: the time line is wrong")
        # Kept to reset the run for the second worker kind (--worker both).
        session.execute(sa.text("CREATE TABLE bench_enrollment_start AS "
                                "SELECT id, next_step_id, next_run_at FROM enrollment"))
        session.commit()
        if db.is_postgresql(session):
            session.connection().exec_driver_sql("ANALYZE")
            session.commit()
    c.out(f"setup: {args.leads} leads enrolled on {args.db} in {time.perf_counter() - started:.1f} s")


def reset_database(settings) -> None:
    """Back to the state right after enrollment: no messages, every first step due."""
    import sqlalchemy as sa
    from sqlmodel import Session

    from nurture import db

    with Session(db.engine_for(settings.database_url)) as session:
        session.execute(sa.text("DELETE FROM message"))
        session.execute(sa.text(
            "UPDATE enrollment SET status = 'active', finished_at = NULL, exit_reason = '', "
            "next_step_id = s.next_step_id, next_run_at = s.next_run_at "
            "FROM bench_enrollment_start AS s WHERE enrollment.id = s.id"))
        session.commit()
    if db.is_postgresql(db.engine_for(settings.database_url)):
        with db.engine_for(settings.database_url).connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")


# --- baseline -----------------------------------------------------------------------------------------

def build_messages(settings, count: int) -> list[tuple[str, str, bytes]]:
    """(sender, recipient, bytes) of real first-contact messages for the first leads, built once."""
    from sqlmodel import Session, select

    from nurture import db
    from nurture.mime import ascii_address
    from nurture.models import EmailTemplate, Lead, Sequence, Step, User
    from nurture.rendering import Renderer
    from nurture.sending import _compose

    with Session(db.engine_for(settings.database_url), expire_on_commit=False) as session:
        step = session.exec(select(Step).where(Step.key == "first-contact")).one()
        leads = session.exec(select(Lead).order_by(Lead.id).limit(count)).all()
        batch = SimpleNamespace(
            templates={(t.name, t.language): t for t in session.exec(select(EmailTemplate))},
            owners={u.id: u for u in session.exec(select(User))},
            sequences={q.id: q for q in session.exec(select(Sequence))}, contexts={}, promoted={})
    renderer = Renderer()
    built = []
    for k, lead in enumerate(leads):
        message = SimpleNamespace(id=10**6 + k, message_id=f"<baseline-{k}@{settings.mail_domain}>",
                                  enrollment_id=None, sequence_id=step.sequence_id)
        _, _, data = _compose(settings, batch, renderer, message, lead, step, TICK_AT)
        built.append((settings.from_address, ascii_address(lead.email), data))
    return built


def _baseline_client(port: int, messages, indexes: range, barrier, ready_timeout: float) -> None:
    smtp = smtplib.SMTP("127.0.0.1", port, timeout=30)
    smtp.ehlo()
    barrier.wait(ready_timeout)
    for i in indexes:
        sender, recipient, data = messages[i % len(messages)]
        refused = smtp.sendmail(sender, [recipient], data)
        if refused:
            raise SystemExit(f"refused: {refused}")
    smtp.quit()


def run_baseline(args, messages, sink: c.SmtpSink) -> float:
    """Seconds for ``--workers`` raw smtplib processes to push ``--leads`` messages."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(args.workers + 1)
    procs = [ctx.Process(target=_baseline_client,
                         args=(sink.port, messages, range(k, args.leads, args.workers), barrier, 30), daemon=True)
             for k in range(args.workers)]
    try:
        for proc in procs:
            proc.start()
        barrier.wait(30)
        started = time.perf_counter()
        for proc in procs:
            proc.join()
        elapsed = time.perf_counter() - started
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
    if any(proc.exitcode for proc in procs):
        raise SystemExit(f"a baseline client failed: exit codes {[p.exitcode for p in procs]}")
    accepted = sink.wait_for(args.leads)
    if accepted != args.leads:
        raise SystemExit(f"baseline: the sink counted {accepted} messages, expected {args.leads}")
    return elapsed


# --- the real path ------------------------------------------------------------------------------------

class StatusPoller:
    """Counts messages by status with a plain DB-API connection (no SQLAlchemy, no write lock)."""

    def __init__(self, settings, kind: str) -> None:
        self.kind = kind
        if kind == "sqlite":
            path = settings.database_url.removeprefix("sqlite:///")
            self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        else:
            import psycopg

            self.conn = psycopg.connect(settings.database_url, autocommit=True)

    def counts(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT status, count(*) FROM message GROUP BY status").fetchall()
        return {status: n for status, n in rows}

    def close(self) -> None:
        self.conn.close()


def worker_command(kind: str, profile_dir: str | None, index: int) -> list[str]:
    nurture = str(c.VENV_BIN / "nurture")
    cmd = [nurture, "worker", "--burst"] + (["--simple"] if kind == "simple" else [])
    if profile_dir:
        cmd = [sys.executable, "-m", "cProfile", "-o", f"{profile_dir}/worker-{kind}-{index}.prof"] + cmd
    return cmd


def child_env(env: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    return {**base, **env}


def measure_worker_start(args, env: dict[str, str], kind: str, logdir: Path) -> float:
    """Seconds for one ``nurture worker --burst`` to start and exit on an empty queue."""
    started = time.perf_counter()
    with open(logdir / f"empty-{kind}.log", "wb") as log:
        proc = subprocess.Popen(worker_command(kind, None, 0), env=child_env(env), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(60)
        finally:
            c.stop_process(proc)
    return time.perf_counter() - started


def run_pipeline(args, settings, env: dict[str, str], kind: str, sink: c.SmtpSink, logdir: Path) -> dict:
    """Tick, then workers; returns the timings. Raises if not every message ends up sent."""
    from redis import Redis
    from sqlmodel import Session

    from nurture import db
    from nurture.queues import enqueue_send_batches, send_queue
    from nurture.scheduling import run_tick

    redis = Redis.from_url(settings.redis_url)
    queue = send_queue(settings, redis)
    jobs = 0

    def enqueue(ids: list[int]) -> None:
        nonlocal jobs
        jobs += enqueue_send_batches(queue, ids, settings.send_batch_size, settings.lease_seconds)

    poller = StatusPoller(settings, args.db)
    workers: list[subprocess.Popen] = []
    logs = []
    profiler = None
    try:
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
        t0 = time.perf_counter()
        with Session(db.engine_for(settings.database_url), expire_on_commit=False) as session:
            if profiler:
                profiler.enable()
            report = run_tick(session, settings, TICK_AT, enqueue)
            if profiler:
                profiler.disable()
        t_tick = time.perf_counter()
        if report.messages != args.leads:
            raise SystemExit(f"the tick queued {report.messages} messages, expected {args.leads}: {report}")
        redis_pids = c.pids_named("redis-server")
        cpu0 = {"machine": c.system_cpu(), "redis": sum(map(c.cpu_seconds, redis_pids)),
                "sink": c.cpu_seconds(sink.proc.pid), "bench": c.cpu_seconds(os.getpid()),
                "postgres": {pid: c.cpu_seconds(pid) for pid in c.pids_named("postgres")}}
        for k in range(args.workers):
            log = open(logdir / f"worker-{kind}-{k}.log", "wb")
            logs.append(log)
            workers.append(subprocess.Popen(worker_command(kind, args.profile, k), env=child_env(env), stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True))
        # Poll the sink's counter (a file: no load on the database) and the database only
        # once a second; once the sink has every message, poll the database until all are
        # recorded as sent (a worker records a message's outcome with its next claim).
        first_sent = None
        deadline = time.monotonic() + args.timeout
        next_db_poll = 0.0
        counts: dict[str, int] = {}
        with c.progress() as bar:
            task = bar.add_task(f"sending ({kind} workers)", total=args.leads)
            while True:
                accepted = sink.messages()
                now = time.perf_counter()
                if accepted and first_sent is None:
                    first_sent = now
                bar.update(task, completed=accepted)
                if accepted >= args.leads or now >= next_db_poll:
                    counts = poller.counts()
                    next_db_poll = now + 1.0
                    if counts.get("sent", 0) >= args.leads:
                        now = time.perf_counter()
                        break
                if all(w.poll() is not None for w in workers):
                    counts = poller.counts()
                    if counts.get("sent", 0) >= args.leads:
                        now = time.perf_counter()
                        break
                    tails = "\n".join((logdir / f"worker-{kind}-{k}.log").read_text(errors="replace")[-2000:]
                                      for k in range(args.workers))
                    raise SystemExit(f"the workers exited with messages left: {counts}\n{tails}")
                if time.monotonic() > deadline:
                    raise SystemExit(f"timed out after {args.timeout} s: {counts}")
                time.sleep(0.01 if accepted >= args.leads else 0.02)
        t_done = now
        cpu = cpu_usage(settings, args.db, workers, sink, redis_pids, cpu0)
        for w in workers:
            w.wait(60)
        t_exit = time.perf_counter()
    finally:
        for w in workers:
            c.stop_process(w)
        for log in logs:
            log.close()
        poller.close()
        redis.close()
    if profiler:
        profiler.dump_stats(f"{args.profile}/tick.prof")
    return {"tick": t_tick - t0, "send": t_done - t_tick, "total": t_done - t0, "jobs": jobs,
            "first_sent": (first_sent - t_tick) if first_sent else float("nan"), "exit": t_exit - t_done,
            "statuses": counts, "cpu": cpu}


def cpu_usage(settings, kind: str, workers, sink: c.SmtpSink, redis_pids: list[int], cpu0: dict) -> dict:
    """CPU seconds used during the send phase, read while the workers (and their DB sessions) still live."""
    busy1, total1 = c.system_cpu()
    busy0, total0 = cpu0["machine"]
    cpu = {"workers": sum(c.cpu_seconds(w.pid, children=True) for w in workers),
           "sink": c.cpu_seconds(sink.proc.pid) - cpu0["sink"],
           "redis": sum(map(c.cpu_seconds, redis_pids)) - cpu0["redis"],
           "this process (polling)": c.cpu_seconds(os.getpid()) - cpu0["bench"],
           "machine busy": busy1 - busy0, "machine total": total1 - total0}
    if kind == "postgresql":
        # Every process of the server: our sessions' backends (born in this phase, so counted whole)
        # and the WAL writer, checkpointer etc. (counted from the start of the phase). Backends that
        # ended meanwhile (the forking worker's one connection per job) are not seen.
        before = cpu0["postgres"]
        cpu["postgres server"] = sum(c.cpu_seconds(pid) - before.get(pid, 0.0) for pid in c.pids_named("postgres"))
    known = sum(v for k, v in cpu.items() if not k.startswith("machine"))
    cpu["other processes"] = max(0.0, cpu["machine busy"] - known)
    return cpu


def cpu_line(cpu: dict, messages: int) -> str:
    parts = [f"{name} {seconds / messages * 1000:.2f}" for name, seconds in cpu.items()
             if name not in ("machine total", "machine busy")]
    total = cpu["machine total"] or 1
    line = (f"CPU ms per message: {', '.join(parts)} (machine busy {cpu['machine busy'] / messages * 1000:.2f}, "
            f"idle {1 - cpu['machine busy'] / total:.0%} of {os.cpu_count()} cores' time)")
    if cpu["other processes"] / total > 0.05:
        line += (f"\n  WARNING: processes outside this benchmark (or the kernel's I/O work) used "
                 f"{cpu['other processes'] / total:.0%} of the machine meanwhile: these figures are disturbed")
    return line


# --- correctness ----------------------------------------------------------------------------------------

def verify_dump(args, settings, sink: c.SmtpSink) -> list[str]:
    """Check the dumped messages against the database; return the problems found."""
    from sqlmodel import Session, select

    from nurture import db
    from nurture.mime import ascii_address
    from nurture.models import Lead, Message

    problems: list[str] = []
    dumped = sink.dumped_messages()
    if len(dumped) != args.leads:
        problems.append(f"dump holds {len(dumped)} messages, expected {args.leads}")
    with Session(db.engine_for(settings.database_url)) as session:
        rows = session.exec(select(Message.message_id, Message.subject, Message.status, Lead.email, Lead.first_name,
                                   Lead.language).join(Lead, Lead.id == Message.lead_id)).all()
    by_mid = {row.message_id: row for row in rows}
    seen: dict[str, int] = {}
    mid_re = re.compile(rb"(?mi)^Message-ID: (<[^>\r\n]+>)")
    rcpt_re = re.compile(rb"(?m)^X-Rcpt-Args: <([^>]*)>")
    for raw in dumped:
        mid = mid_re.search(raw)
        if not mid:
            problems.append("a dumped message has no Message-ID")
            continue
        mid = mid[1].decode()
        seen[mid] = seen.get(mid, 0) + 1
        row = by_mid.get(mid)
        if row is None:
            problems.append(f"{mid}: not in the database")
            continue
        rcpt = rcpt_re.search(raw)
        if not rcpt or rcpt[1].decode() != ascii_address(row.email):
            problems.append(f"{mid}: envelope recipient {rcpt and rcpt[1]!r} is not {row.email}")
    duplicates = [m for m, n in seen.items() if n > 1]
    if duplicates:
        problems.append(f"{len(duplicates)} Message-IDs were delivered more than once, e.g. {duplicates[:3]}")
    missing = set(by_mid) - set(seen)
    if missing:
        problems.append(f"{len(missing)} messages of the database are not in the dump")
    not_sent = [r.message_id for r in rows if r.status != "sent"]
    if not_sent:
        problems.append(f"{len(not_sent)} messages are not 'sent' in the database")

    sample = random.Random(7).sample(dumped, min(args.sample, len(dumped)))
    checked_ru = checked_idn = 0
    for raw in sample:
        msg = email.message_from_bytes(raw.replace(b"\n", b"\r\n"), policy=email.policy.default)
        mid = msg["Message-ID"]
        row = by_mid.get(str(mid))
        where = f"message {mid}"
        if row is None:
            problems.append(f"{where}: unknown")
            continue
        checked_ru += row.language == "ru"
        checked_idn += not row.email.isascii()
        for name in ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "List-Unsubscribe",
                     "List-Unsubscribe-Post", "Content-Type"):
            if len(msg.get_all(name) or []) != 1:
                problems.append(f"{where}: header {name} appears {len(msg.get_all(name) or [])} times")
        if msg.defects:
            problems.append(f"{where}: defects {msg.defects}")
        if str(msg["Subject"]) != row.subject:
            problems.append(f"{where}: Subject {str(msg['Subject'])!r} != database {row.subject!r}")
        to = msg["To"].addresses
        if len(to) != 1 or to[0].addr_spec.lower() != ascii_address(row.email).lower():
            problems.append(f"{where}: To {msg['To']!r} is not {row.email}")
        if msg["From"].addresses[0].addr_spec != settings.from_address:
            problems.append(f"{where}: From {msg['From']!r}")
        if msg["Date"].datetime != TICK_AT.replace(microsecond=0):
            problems.append(f"{where}: Date {msg['Date']!r} is not the worker's clock {TICK_AT}")
        if msg["MIME-Version"] != "1.0":
            problems.append(f"{where}: MIME-Version {msg['MIME-Version']!r}")
        unsubscribe = str(msg["List-Unsubscribe"])
        if not re.fullmatch(r"<https://bench\.example\.com/u/\S+>, <mailto:unsubscribe\+\S+@bench\.example\.com\?subject=unsubscribe>", unsubscribe):
            problems.append(f"{where}: List-Unsubscribe {unsubscribe!r}")
        if msg["List-Unsubscribe-Post"] != "List-Unsubscribe=One-Click":
            problems.append(f"{where}: List-Unsubscribe-Post {msg['List-Unsubscribe-Post']!r}")
        if msg.get_content_type() != "multipart/alternative":
            problems.append(f"{where}: Content-Type {msg.get_content_type()}")
            continue
        parts = list(msg.iter_parts())
        if [p.get_content_type() for p in parts] != ["text/plain", "text/html"]:
            problems.append(f"{where}: parts {[p.get_content_type() for p in parts]}")
            continue
        for part in parts:
            if part.defects:
                problems.append(f"{where}: {part.get_content_type()} defects {part.defects}")
            if part.get_content_charset() != "utf-8":
                problems.append(f"{where}: {part.get_content_type()} charset {part.get_content_charset()}")
            if part["Content-Transfer-Encoding"] not in ("quoted-printable", "base64"):
                problems.append(f"{where}: {part.get_content_type()} encoding {part['Content-Transfer-Encoding']}")
        text, html = parts[0].get_content(), parts[1].get_content()
        if "<html" not in html.lower() or "</html>" not in html.lower():
            problems.append(f"{where}: the HTML part is not an HTML document")
        if "{{" in html or "{%" in html or "{{" in text:
            problems.append(f"{where}: unrendered Jinja in the body")
        if row.first_name and (row.first_name not in html or row.first_name not in text):
            problems.append(f"{where}: the lead's first name {row.first_name!r} is not in both parts")
        if row.email not in text:
            problems.append(f"{where}: the footer's address {row.email} is not in the text part")
        if "/u/" not in html:
            problems.append(f"{where}: no unsubscribe link in the HTML part")
    c.out(f"verified: {len(seen)} dumped messages matched the database one to one; "
          f"{len(sample)} parsed in full ({checked_ru} in Russian, {checked_idn} to IDN addresses)")
    return problems


# --- where a worker's time goes ----------------------------------------------------------------------------

def breakdown(args, settings, env: dict[str, str], sink: c.SmtpSink) -> None:
    """Run the send jobs in this process, one after another, timing each part of ``send_batch``.

    The parts are wrapped (a few microseconds each), not profiled, so the figures are
    not inflated the way cProfile inflates SQLAlchemy's many small calls. Wall time minus
    CPU time is time spent waiting: on PostgreSQL (query, fsync at commit) or on the sink.
    """
    import sqlmodel

    from nurture import db, sending, tasks, transports
    from nurture.scheduling import run_tick

    batches: list[list[int]] = []
    with sqlmodel.Session(db.engine_for(settings.database_url), expire_on_commit=False) as session:
        run_tick(session, settings, TICK_AT, lambda ids: batches.extend(
            ids[i:i + settings.send_batch_size] for i in range(0, len(ids), settings.send_batch_size)))
    from nurture import attempt_journal

    parts = [(sending, "_compose", "render + build MIME (_compose)"), (sending, "_claim", "claim a chunk (_claim)"),
             (sending, "_still_sendable", "re-check before SMTP (_still_sendable)"),
             (sending, "_Batch", "load batch rows (_Batch)"), (sqlmodel.Session, "commit", "COMMIT (one per chunk)"),
             (transports.SmtpTransport, "send", "SMTP MAIL/RCPT/DATA (transport.send)"),
             (attempt_journal.AttemptJournal, "started", "journal the attempt in Redis (started)"),
             (attempt_journal.AttemptJournal, "forget", "drop journal entries (forget)")]
    breakdown = c.Breakdown()
    old_environ = dict(os.environ)
    os.environ.update({**env, "NURTURE_SMTP_URL": sink.url})
    try:
        with breakdown.patched(parts):
            w0, c0 = time.perf_counter(), time.thread_time()
            for ids in batches:
                tasks.send_messages(ids)
            wall, cpu = time.perf_counter() - w0, time.thread_time() - c0
    finally:
        os.environ.clear()
        os.environ.update(old_environ)
    n = sum(len(b) for b in batches)
    c.out(f"breakdown: one worker in-process, {n} messages in {wall:.2f} s = {n / wall:.0f} emails/s "
          f"({wall / n * 1000:.2f} ms wall, {cpu / n * 1000:.2f} ms CPU per message)")
    c.out(f"  {'part':<40} {'calls':>7} {'wall ms/msg':>12} {'CPU ms/msg':>11}")
    accounted_wall = accounted_cpu = 0.0
    for label, calls, w, cp in breakdown.rows():
        accounted_wall += w
        accounted_cpu += cp
        c.out(f"  {label:<40} {calls:>7} {w / n * 1000:>12.3f} {cp / n * 1000:>11.3f}")
    c.out(f"  {'rest of send_batch (loop, session, job)':<40} {'':>7} {(wall - accounted_wall) / n * 1000:>12.3f} "
          f"{(cpu - accounted_cpu) / n * 1000:>11.3f}")


# --- reports ---------------------------------------------------------------------------------------------

def print_profile(path: str, title: str, limit: int = 18) -> None:
    import io
    import pstats

    buffer = io.StringIO()
    stats = pstats.Stats(path, stream=buffer)
    stats.sort_stats("tottime").print_stats(limit)
    c.out(f"--- {title}: top {limit} by own time ({path}) ---")
    lines = buffer.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    for line in lines[start:]:
        if line.strip():
            c.out("  " + line.strip()[:160])


def main() -> None:
    args = parse_args()
    c.install_signal_handlers()
    c.warn_if_busy()
    from nurture import db
    from nurture.config import Settings

    pid = os.getpid()
    queue_name = f"nurture-bench-send-{pid}"
    tmp = Path(tempfile.mkdtemp(prefix="nurture-bench-send-"))
    scratch = None
    sinks: list[c.SmtpSink] = []
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    try:
        if args.db == "postgresql":
            scratch = c.PgScratch(args.pg_admin_url, f"nurture_bench_send_{pid}")
            database_url = scratch.url
        else:
            database_url = f"sqlite:///{tmp}/bench.db"
        env = bench_env(args, database_url, queue_name)
        settings = Settings.from_env(env)
        c.out(f"send_throughput: {args.leads} leads, {args.db}, {args.workers} worker processes ({args.worker}), "
              f"send batch {args.send_batch}, claim batch {args.claim_batch}, {os.cpu_count()} CPUs")
        setup_database(args, settings)

        # Baseline: raw smtplib, same message sizes, same number of processes and connections.
        messages = build_messages(settings, min(args.leads, 500))
        avg_size = sum(len(m[2]) for m in messages) / len(messages)
        sink = c.SmtpSink(dump=not args.no_dump)
        sinks.append(sink)
        baseline = run_baseline(args, messages, sink)
        sink.close()
        sinks.remove(sink)
        baseline_rate = args.leads / baseline
        c.out(f"baseline (raw smtplib, {args.workers} processes, 1 connection each, {avg_size / 1024:.1f} KiB average): "
              f"{args.leads} messages in {baseline:.2f} s = {baseline_rate:.0f} emails/s")

        kinds = ["simple", "fork"] if args.worker == "both" else [args.worker]
        results = {}
        for n, kind in enumerate(kinds):
            if n:
                reset_database(settings)
                c.rq_cleanup(args.redis_url, queue_name)
            sink = c.SmtpSink(dump=not args.no_dump)
            sinks.append(sink)
            run_env = {**env, "NURTURE_SMTP_URL": sink.url}
            run_settings = Settings.from_env(run_env)
            start_cost = measure_worker_start(args, run_env, kind, tmp)
            r = run_pipeline(args, run_settings, run_env, kind, sink, tmp)
            accepted = sink.wait_for(args.leads)
            r["rate"] = args.leads / r["total"]
            r["start_cost"] = start_cost
            results[kind] = r
            c.out(f"end to end ({kind} workers): {args.leads} emails in {r['total']:.2f} s = {r['rate']:.0f} emails/s")
            c.out(f"  tick (claim {args.leads} + enqueue {r['jobs']} jobs): {r['tick']:.2f} s = {args.leads / r['tick']:.0f} steps/s")
            c.out(f"  send (workers start -> all sent): {r['send']:.2f} s = {args.leads / r['send']:.0f} emails/s; "
                  f"first message sent {r['first_sent']:.2f} s after the workers were started; "
                  f"a worker alone starts and exits on an empty queue in {start_cost:.2f} s; "
                  f"workers exited {r['exit']:.2f} s after the last send")
            c.out(f"  {cpu_line(r['cpu'], args.leads)}")
            c.out(f"  sink accepted {accepted}; database statuses {r['statuses']}")
            if accepted != args.leads:
                raise SystemExit(f"the sink accepted {accepted} messages, expected {args.leads}")
            if not args.no_dump:
                problems = verify_dump(args, run_settings, sink)
                if problems:
                    c.out(f"PROBLEMS ({len(problems)}):")
                    for problem in problems[:30]:
                        c.out(f"  {problem}")
                    raise SystemExit(1)
            sink.close()
            sinks.remove(sink)

        if args.breakdown:
            reset_database(settings)
            sink = c.SmtpSink(dump=False)
            sinks.append(sink)
            breakdown(args, settings, env, sink)
            sink.close()
            sinks.remove(sink)
        if args.profile:
            print_profile(f"{args.profile}/tick.prof", "scheduler tick (last run)")
            for kind in kinds:
                print_profile(f"{args.profile}/worker-{kind}-0.prof", f"worker {kind} 0")
        first = results[kinds[0]]
        if len(kinds) == 2:
            c.out(f"simple vs fork: {results['simple']['rate']:.0f} vs {results['fork']['rate']:.0f} emails/s end to end; "
                  f"send phase {results['simple']['send']:.2f} s vs {results['fork']['send']:.2f} s")
        c.out(f"end to end {first['rate']:.0f} emails/s / baseline {baseline_rate:.0f} emails/s (aim: ratio >= 0.5)")
        c.out(f"ratio: {first['rate'] / baseline_rate:.3f}")
    finally:
        with c.no_interrupts():
            for sink in sinks:
                sink.close()
            removed = c.rq_cleanup(args.redis_url, queue_name)
            left = c.remaining_rq_keys(args.redis_url, queue_name)
            if left:
                c.console.print(f"warning: Redis keys left: {left[:5]}")
            for key in list(db._engines):
                db._engines.pop(key).dispose()
            if scratch:
                scratch.close()
            shutil.rmtree(tmp, ignore_errors=True)
            c.console.print(f"[dim]cleaned up: scratch database, {removed} Redis keys, sinks, temp files[/dim]")


if __name__ == "__main__":
    c.run(main)
