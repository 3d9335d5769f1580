"""``nurture demo``: the whole engine on one machine, on a sped-up clock.

Starts (or reuses) Redis, an SMTP catcher, the web app, a worker and the
scheduler; loads the default sequence, imports the shipped sample leads (with
its deliberately bad rows), enrolls everyone, creates an admin login, and runs
the calendar at ``speed`` simulated seconds per real second while simulated
people (``demo_people``) answer the mail and a live table shows what was sent,
how leads move through the stages and what the reps were told. Every process it starts shares the same simulated clock through
``NURTURE_CLOCK_*``. Ctrl-C (or the end of ``days``) stops everything it started.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import redis
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from sqlalchemy import func
from sqlmodel import Session, select
from werkzeug.serving import make_server

from . import db
from .config import PROJECT_ROOT, Settings
from .demo_people import DemoPeople
from .errors import NurtureError

console = Console()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_url(processes: list[subprocess.Popen], workdir: Path) -> str:
    url = os.environ.get("NURTURE_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        return url
    except redis.RedisError:
        pass
    server = shutil.which("redis-server")
    if server is None:
        raise NurtureError(f"no Redis answers at {url}, and redis-server is not installed: "
                           "install it (apt-get install redis-server, brew install redis) or set NURTURE_REDIS_URL")
    port = _free_port()
    processes.append(subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--dir", str(workdir)], stdout=subprocess.DEVNULL))
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            console.print(f"started a private Redis on port {port}")
            return url
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise NurtureError("the private redis-server did not start") from None
            time.sleep(0.05)


def _start_of_demo() -> datetime:
    """The coming Monday 05:00 UTC: Moscow and Vladivostok business hours come first."""
    today = datetime.now(timezone.utc).replace(hour=5, minute=0, second=0, microsecond=0)
    return today + timedelta(days=(7 - today.weekday()) % 7 or 7)


DEMO_ADMIN = "admin@example.com"


def _prepare(settings: Settings, admin_password: str) -> None:
    from .enrollment import LeadFilter, enroll
    from .lead_import import import_leads
    from .loading import load_campaigns
    from .models import User
    from .web.passwords import hash_password

    db.upgrade(settings.database_url)
    now = settings.clock.now()
    with Session(db.engine_for(settings.database_url), expire_on_commit=False) as session:
        report = load_campaigns(session, Path(settings.campaigns_dir), Path(settings.templates_dir),
                                settings.default_language, now)
        console.print(f"loaded sequences: {', '.join(report.sequences_added)}; templates: {len(report.templates_added)}")
        session.add(User(email="anna.sales@example.com", name="Анна Смирнова", title="Менеджер по работе с клиентами",
                         phone="+7 495 000-00-00", role="rep", created_at=now))
        session.add(User(email="ivan.sales@example.com", name="Ivan Petrov", title="Account executive", role="rep", created_at=now))
        session.add(User(email=DEMO_ADMIN, name="Demo admin", role="admin", password_hash=hash_password(admin_password),
                         receives_leads=False, created_at=now))
        session.commit()
        sample = PROJECT_ROOT / "campaigns" / "sample-leads.csv"
        imported = import_leads(session, sample.read_bytes(), now, settings.default_language, settings=settings)
        console.print(f"imported {sample.name}: created {imported.created}, merged duplicates {imported.merged}, "
                      f"rejected {len(imported.rejected)}")
        for reject in imported.rejected:
            console.print(f"  [yellow]line {reject.line}[/]: {reject.reason}")
        enrolled = enroll(session, settings, "systematic-follow-up", LeadFilter(everyone=True), now)
        console.print(f"enrolled {enrolled.enrolled} leads in systematic-follow-up")


def _snapshot(settings: Settings, catcher_dir: Path, people: DemoPeople) -> Group:
    from .models import Lead, Message, Notification, Step
    from .pipeline import stored_pipeline

    with Session(db.engine_for(settings.database_url)) as session:
        counts = session.exec(select(Step.key, Message.status, func.count()).join(Step, Step.id == Message.step_id)
                              .group_by(Step.key, Message.status)).all()
        recent = session.exec(select(Message.sent_at, Lead.email, Lead.timezone, Step.key, Message.subject)
                              .join(Lead, Lead.id == Message.lead_id).join(Step, Step.id == Message.step_id)
                              .where(Message.status == "sent").order_by(Message.sent_at.desc()).limit(12)).all()
        stages = dict(session.exec(select(Lead.stage, func.count()).group_by(Lead.stage)).all())
        order = stored_pipeline(session).keys
        notices = dict(session.exec(select(Notification.kind, func.count()).where(Notification.channel != "task")
                                    .group_by(Notification.kind)).all())
    now = settings.clock.now()
    per_step: dict[str, dict[str, int]] = {}
    for key, status, count in counts:
        per_step.setdefault(key, {})[status] = count
    summary = Table(title=f"simulated time {now:%a %Y-%m-%d %H:%M} UTC", expand=True)
    for column in ("step", "sent", "queued / sending", "other"):
        summary.add_column(column)
    for key, statuses in per_step.items():
        other = {s: c for s, c in statuses.items() if s not in ("sent", "queued", "sending")}
        summary.add_row(key, str(statuses.get("sent", 0)), str(statuses.get("queued", 0) + statuses.get("sending", 0)),
                        ", ".join(f"{s} {c}" for s, c in other.items()))
    latest = Table(title="latest sends (lead's local time)", expand=True)
    for column, width in (("local time", 22), ("lead", 18), ("step", 13), ("subject", 20)):
        latest.add_column(column, overflow="ellipsis", no_wrap=True, min_width=width)
    from .send_window import zone

    for sent_at, email, tz, key, subject in recent:
        local = sent_at.astimezone(zone(tz or "Europe/Moscow"))
        latest.add_row(f"{local:%a %d %b %H:%M} {tz or ''}", email, key, subject)
    caught = len(list(catcher_dir.glob("*.eml")))
    by_stage = "  ".join(f"{key} {stages[key]}" for key in order if stages.get(key))
    told = "  ".join(f"{kind} {count}" for kind, count in sorted(notices.items())) or "nothing yet"
    return Group(summary, latest, Panel(f"leads by stage: {by_stage}\n"
                                        f"leads did: {people.summary()}\n"
                                        f"reps were told (email and webhooks): {told}\n"
                                        f"caught mail: {caught}  ·  read it at {settings.base_url}/caught  ·  "
                                        f"admin at {settings.base_url}/admin  ·  Ctrl-C stops"))


def run_demo(speed: float, days: int, workdir: Path, port: int, headless: bool) -> None:
    processes: list[subprocess.Popen] = []
    workdir = workdir.resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    catcher_dir = workdir / "caught"
    smtp_port = _free_port()
    start = _start_of_demo()
    env = {
        "NURTURE_DATABASE_URL": f"sqlite:///{workdir / 'nurture.db'}",
        "NURTURE_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}",
        "NURTURE_BASE_URL": f"http://127.0.0.1:{port}",
        "NURTURE_CATCHER_DIR": str(catcher_dir),
        "NURTURE_QUEUE": f"nurture-demo-{os.getpid()}",
        "NURTURE_CLOCK_START": start.isoformat(),
        "NURTURE_CLOCK_SPEED": "0",
        "NURTURE_INBOUND_SECRET": secrets.token_urlsafe(24),  # the simulated people post replies and bounces
    }
    admin_password = secrets.token_urlsafe(9)
    os.environ.update(env)
    os.environ.pop("NURTURE_NOW", None)
    catcher = web = None
    try:
        os.environ["NURTURE_REDIS_URL"] = _redis_url(processes, workdir)
        catcher = __import__("nurture.mail_catcher", fromlist=["start_catcher"]).start_catcher(catcher_dir, smtp_port)
        _prepare(Settings.from_env(), admin_password)
        # Leases are in simulated time: keep them two real minutes long, or every
        # tick would find them expired and enqueue the same messages again.
        os.environ.update(NURTURE_CLOCK_SPEED=str(speed), NURTURE_CLOCK_ANCHOR=repr(time.time()),
                          NURTURE_LEASE_SECONDS=str(max(600, int(speed * 120))))
        settings = Settings.from_env()
        from .app import create_app

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # access lines would tear the live table
        web = make_server("127.0.0.1", port, create_app(settings), threaded=True)
        threading.Thread(target=web.serve_forever, daemon=True).start()
        interval = max(0.01, min(5.0, 1800 / speed))  # a tick every simulated half hour
        nurture = [sys.executable, "-m", "nurture"]
        processes.append(subprocess.Popen([*nurture, "worker", "--simple"], env=os.environ.copy()))
        processes.append(subprocess.Popen([*nurture, "scheduler", "--interval", str(interval)], env=os.environ.copy(),
                                          stdout=subprocess.DEVNULL))
        end = start + timedelta(days=days)
        console.print(f"web: {settings.base_url}/caught   clock: {speed:g}x from {start:%Y-%m-%d %H:%M} UTC for {days} days")
        console.print(f"admin: {settings.base_url}/admin   login [bold]{DEMO_ADMIN}[/] password [bold]{admin_password}[/]")
        people = DemoPeople(settings, catcher_dir)
        if headless:
            while settings.clock.now() < end:
                people.step()
                time.sleep(0.5)
            console.print(_snapshot(settings, catcher_dir, people))
            return
        with Live(_snapshot(settings, catcher_dir, people), console=console, refresh_per_second=2) as live:
            while True:
                time.sleep(0.5)
                if processes:  # people act while the clock runs
                    people.step()
                live.update(_snapshot(settings, catcher_dir, people))
                if settings.clock.now() >= end and processes:
                    _stop(processes)
                    console.print(f"[green]{days} simulated days done[/]; the pages stay up until Ctrl-C")
    except KeyboardInterrupt:
        console.print("stopping")
    finally:
        _stop(processes)
        if web is not None:
            web.shutdown()
        if catcher is not None:
            catcher.stop()


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
    processes.clear()
