"""Tracking under load: opens and clicks through gunicorn into the Redis stream, then into the database.

What it measures
    ``--messages`` (default 5,000) sent messages, each with its lead and enrollment in
    the repo's ``systematic-follow-up`` sequence, inserted in bulk into a scratch
    database. nurture's app (``gunicorn -w 2 --worker-class sync wsgi:app``, the
    NURTURE_* settings of that database) then takes ``--seconds`` (default 10) of
    load from ``wrk``: a mix of open pixels (``GET /o/<token>.gif``, answered 200) and
    clicks (``GET /c/<token>?u=<url>``, answered 302), with valid tokens of random
    messages built by ``nurture.tracking.open_url`` / ``click_url`` with the app's
    secret (``--click-share`` 0.3 of them clicks, over four links). wrk rotates
    through a file of ``--urls`` such paths (bench/tracking_load.lua) with a
    browser's User-Agent. Each hit is one XADD to the run's stream (nurture's
    ``stream_key`` of ``NURTURE_QUEUE=nurture-bench-track-<pid>``); nothing
    touches the database during the load.
    Printed: requests/s and p50/p90/p99 latency, and the CPU milliseconds per
    request of the gunicorn workers, Redis, the scratch database's PostgreSQL
    backends, wrk, the kernel's irq/softirq (loopback TCP) and the rest.

    Baseline, in the same run under the same gunicorn settings: bench/bare_gif_app.py,
    a bare Flask app answering the same URLs with the same GIF / redirect and headers
    (no token check, no Redis). ``--repeat`` (default 1) runs of each, alternating
    (bare first); medians are compared.

    Then the stream is drained into the database the way the scheduler does it
    (``nurture.event_stream.drain`` in a loop, with ``reactions.on_tracking_events``)
    and timed (events/s). Correctness: every 200 and 302 wrk counted (plus the
    warm-up's) must be an event in the database, opens and clicks separately, and
    nothing more; the stream must be empty and nothing pending afterwards; wrk must
    have received a response to every request it wrote. The last line is
    ``ratio: nurture req/s / bare req/s`` (the issue aims at >= 0.6).

Run (needs PostgreSQL at 127.0.0.1:5432, Redis at 127.0.0.1:6379, ``apt-get install -y wrk``):
    .venv/bin/python bench/tracking_load.py                 # PostgreSQL, 10 s of load per side
    .venv/bin/python bench/tracking_load.py --seconds 30 --repeat 3
    .venv/bin/python bench/tracking_load.py --db sqlite
    .venv/bin/python bench/tracking_load.py --connections 8 # wrk connections (default 4: 2 per worker)

It creates a scratch database (``nurture_bench_track_<pid>``, or a SQLite file in a
temp folder), the stream ``nurture:events:nurture-bench-track-<pid>``, gunicorn
processes and temp files, and removes all of them at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import http.client
import math
import contextlib
import os
import random
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import unquote

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
LUA_SCRIPT = BENCH_DIR / "tracking_load.lua"
SEQUENCE_KEY = "systematic-follow-up"
USER_AGENT = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/124.0.0.0 Safari/537.36")
LINKS = [
    "https://example.com/pricing",
    "https://example.com/case-studies/acme?utm_source=nurture&utm_medium=email&utm_campaign=follow-up",
    "https://www.example.org/блог/как-мы-выросли",
    "https://example.com/demo#book-a-call",
]
WARM_UP = 40  # requests per server before the load (they are counted like the load's)
START_DELAY = 1.0  # seconds between starting wrk and its first request (its threads read the paths meanwhile)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=10, help="seconds of load per run and side (default 10)")
    p.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql")
    p.add_argument("--messages", type=int, default=5000, help="sent messages (and leads) in the database (default 5000)")
    p.add_argument("--urls", type=int, default=20000, help="distinct request paths wrk rotates through (default 20000)")
    p.add_argument("--click-share", type=float, default=0.3, help="share of clicks among the paths (default 0.3)")
    p.add_argument("--workers", type=int, default=2, help="gunicorn sync workers of both apps (default 2)")
    p.add_argument("--connections", type=int, default=4, help="wrk connections (default 4)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument("--repeat", type=int, default=1, help="runs of each side, alternating; medians compared (default 1)")
    p.add_argument("--drain-batch", type=int, default=2000, help="count of each drain() call (default 2000, its default)")
    p.add_argument("--breakdown", action="store_true", help="time each SQL statement, COMMIT and Redis command of "
                                                           "the drain (wall and client CPU)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--pg-admin-url", default=c.DEFAULT_PG_ADMIN_URL, help="a database to run CREATE/DROP DATABASE from")
    p.add_argument("--redis-url", default=c.DEFAULT_REDIS_URL)
    args = p.parse_args()
    if args.seconds < 1 or args.messages < 1 or args.urls < 1 or args.repeat < 1 or args.workers < 1:
        p.error("--seconds, --messages, --urls, --repeat and --workers must be at least 1")
    if args.connections < args.threads or args.threads < 1:
        p.error("need 1 <= --threads <= --connections")
    if not 0 <= args.click_share <= 1:
        p.error("--click-share must be between 0 and 1")
    return args


# --- setup ------------------------------------------------------------------------------------------

def setup_database(args, url: str, sent_at: datetime) -> list[int]:
    """Schema and campaigns through nurture; leads, enrollments and sent messages in bulk. Returns message ids."""
    import sqlalchemy as sa
    from sqlmodel import Session, select

    from nurture import db
    from nurture.loading import load_campaigns
    from nurture.models import Enrollment, Lead, Message, Sequence, Step

    started = time.perf_counter()
    db.upgrade(url)
    n = args.messages
    created = sent_at - timedelta(days=3)
    with Session(db.engine_for(url), expire_on_commit=False) as session:
        load_campaigns(session, c.REPO / "campaigns", c.REPO / "templates" / "email", "en", created)
        sequence = session.exec(select(Sequence).where(Sequence.key == SEQUENCE_KEY)).one()
        steps = session.exec(select(Step).where(Step.sequence_id == sequence.id, Step.retired.is_(False))
                             .order_by(Step.position)).all()
        leads = [{"email": f"lead{i:06d}@customer{i % 50}.example.com", "first_name": f"First{i % 97}",
                  "last_name": f"Last{i % 89}", "company": f"Company {i % 500}", "timezone": "UTC", "language": "en",
                  "source": "bench", "external_id": None, "owner_id": None, "stage": "new", "score": 0.0,
                  "probability": 0.0, "status": "active", "paused_until": None, "consent": "", "custom": {},
                  "created_at": created, "updated_at": created} for i in range(1, n + 1)]
        lead_ids = list(session.scalars(sa.insert(Lead).returning(Lead.id, sort_by_parameter_order=True), leads))
        enrollments = [{"lead_id": lead_id, "sequence_id": sequence.id, "status": "active",
                        "next_step_id": steps[1].id, "next_run_at": sent_at + timedelta(days=3), "started_at": created,
                        "finished_at": None, "exit_reason": ""} for lead_id in lead_ids]
        enrollment_ids = list(session.scalars(
            sa.insert(Enrollment).returning(Enrollment.id, sort_by_parameter_order=True), enrollments))
        messages = [{"enrollment_id": enrollment_id, "step_id": steps[0].id, "lead_id": lead_id,
                     "sequence_id": sequence.id, "status": "sent", "variant": 0, "subject": "Quick question",
                     "message_id": f"<bench-{k}.{secrets.token_hex(4)}@bench.example.com>", "attempts": 1,
                     "available_at": None, "created_at": sent_at, "sent_at": sent_at, "smtp_code": 250,
                     "smtp_response": "2.0.0 Ok", "error": ""}
                    for k, (lead_id, enrollment_id) in enumerate(zip(lead_ids, enrollment_ids))]
        message_ids = list(session.scalars(sa.insert(Message).returning(Message.id, sort_by_parameter_order=True),
                                           messages))
        session.commit()
        if db.is_postgresql(session):
            with db.engine_for(url).connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")
    if len(message_ids) != n:
        raise SystemExit(f"setup inserted {len(message_ids)} messages, expected {n}")
    c.out(f"setup: {n} leads, enrollments and sent messages on {args.db} in {time.perf_counter() - started:.1f} s")
    return message_ids


def make_paths(args, secret: str, message_ids: list[int]) -> tuple[list[str], dict[str, str]]:
    """Request paths with valid tokens for random messages, and each click path's target URL."""
    from nurture.tracking import click_url, open_url

    rnd = random.Random(args.seed)
    paths, targets = [], {}
    for _ in range(args.urls):
        message_id = rnd.choice(message_ids)
        if rnd.random() < args.click_share:
            link = rnd.choice(LINKS)
            path = click_url("", secret, message_id, link)
            targets[path] = link
        else:
            path = open_url("", secret, message_id)
        if not path.startswith("/") or any(ch.isspace() for ch in path):
            raise SystemExit(f"unexpected tracking path {path!r}")
        paths.append(path)
    return paths, targets


# --- Redis stream -----------------------------------------------------------------------------------

def stream_state(redis, stream: str) -> tuple[int, int]:
    """(entries, pending) of the stream; zeros when it does not exist."""
    if not redis.exists(stream):
        return 0, 0
    return redis.xlen(stream), sum(group["pending"] for group in redis.xinfo_groups(stream))


# --- servers and load -------------------------------------------------------------------------------

class Gunicorn:
    """``gunicorn -w N --worker-class sync -b 127.0.0.1:PORT APP`` from the repository root, in its own session."""

    def __init__(self, app: str, env: dict[str, str], workers: int, log_path: Path, pythonpath: Path | None = None):
        self.port = c.free_port()
        cmd = [str(c.VENV_BIN / "gunicorn"), "-w", str(workers), "--worker-class", "sync",
               "-b", f"127.0.0.1:{self.port}", "--no-control-socket"]
        if pythonpath:
            cmd += ["--pythonpath", str(pythonpath)]
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(cmd + [app], cwd=c.REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        try:
            c.wait_port(self.port, self.proc, timeout=30)
            deadline = time.monotonic() + 30
            while len(self.worker_pids()) < workers:  # the port opens before the workers have booted
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn {app} did not start {workers} workers; see below")
                time.sleep(0.05)
        except Exception:
            self.close()
            raise SystemExit(f"gunicorn {app} failed:\n{log_path.read_text()[-3000:]}")

    def worker_pids(self) -> list[int]:
        return c.child_pids(self.proc.pid)

    def close(self) -> None:
        c.stop_process(self.proc)
        self._log.close()


def warm_up(port: int, paths: list[str], targets: dict[str, str]) -> dict[int, int]:
    """WARM_UP requests over fresh connections (every worker has imported and connected); returns the statuses.

    Also checks the answers: the pixel is the GIF with no-cache headers, a click redirects to its link.
    """
    from nurture.tracking_views import PIXEL

    statuses: dict[int, int] = {}
    for path in paths[:WARM_UP]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("GET", path, headers={"User-Agent": USER_AGENT})
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        statuses[response.status] = statuses.get(response.status, 0) + 1
        if path in targets:
            location = unquote(response.getheader("Location") or "")  # Werkzeug sends IRIs as %-escaped URIs
            if response.status != 302 or location != targets[path]:
                raise SystemExit(f"GET {path}: {response.status} Location {response.getheader('Location')!r}, "
                                 f"expected 302 to {targets[path]}")
        elif (response.status != 200 or body != PIXEL or response.getheader("Content-Type") != "image/gif"
              or "no-store" not in (response.getheader("Cache-Control") or "")):
            raise SystemExit(f"GET {path}: {response.status} {response.getheader('Content-Type')} "
                             f"{response.getheader('Cache-Control')!r} {body[:20]!r}: not the no-cache pixel")
    return statuses


def process_cpu(pids: list[int]) -> float:
    return sum(c.cpu_seconds(pid) for pid in pids)


def database_backends(database_url: str) -> list[int]:
    """PIDs of the PostgreSQL backends connected to our scratch database (none for SQLite)."""
    if not database_url.startswith("postgresql"):
        return []
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        return [row[0] for row in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")]


def run_wrk(args, server: Gunicorn, paths_file: Path, database_url: str) -> dict:
    """wrk for --seconds of load; its counts, latency and the CPU each party used."""
    # Every wrk thread starts at the same instant, START_DELAY from now (enough to read the paths),
    # and stops sending --seconds later; wrk runs one more second for the answers in flight.
    start_at = time.monotonic() + START_DELAY
    cmd = ["wrk", "-t", str(args.threads), "-c", str(args.connections),
           "-d", f"{math.ceil(START_DELAY + args.seconds + 1)}s", "--timeout", "10s",
           "-H", f"User-Agent: {USER_AGENT}", "-s", str(LUA_SCRIPT), f"http://127.0.0.1:{server.port}",
           "--", str(paths_file), f"{start_at:.6f}", str(args.seconds), str(args.threads)]
    workers = server.worker_pids()
    redis_pids, backends = c.pids_named("redis-server"), database_backends(database_url)
    snapshot = c.cpu_snapshot()
    before = (process_cpu(workers), process_cpu(redis_pids), {pid: c.cpu_seconds(pid) for pid in backends},
              resource.getrusage(resource.RUSAGE_CHILDREN), c.system_cpu(), c.cpu_times())
    wrk = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = wrk.communicate()
    except BaseException:
        wrk.kill()
        wrk.wait()
        raise
    backends = set(backends) | set(database_backends(database_url))  # any connection opened meanwhile too
    after = (process_cpu(workers), process_cpu(redis_pids), {pid: c.cpu_seconds(pid) for pid in backends},
             resource.getrusage(resource.RUSAGE_CHILDREN), c.system_cpu(), c.cpu_times())
    ours = {os.getpid(), server.proc.pid, *workers, *redis_pids, *backends}
    others = c.top_cpu_users(snapshot, c.cpu_snapshot(), exclude=ours)
    if wrk.returncode != 0 or "BENCH completed" not in stdout:
        raise SystemExit(f"wrk failed ({wrk.returncode}):\n{stdout}\n{stderr}")
    r: dict = {"statuses": {}}
    for line in stdout.splitlines():
        if not line.startswith("BENCH "):
            continue
        _, key, *rest = line.split()
        if key == "status":
            r["statuses"][int(rest[0])] = int(rest[1])
        elif key == "errors":
            r["errors"] = {k: int(v) for k, v in (item.split("=") for item in rest)}
        else:
            r[key] = float(rest[0])
    if stderr.strip():
        c.console.print(f"[yellow]wrk: {stderr.strip()[:500]}[/yellow]")
    wrk_cpu = (after[3].ru_utime + after[3].ru_stime) - (before[3].ru_utime + before[3].ru_stime)
    busy = after[4][0] - before[4][0]
    r["cpu"] = {"gunicorn workers": after[0] - before[0], "redis": after[1] - before[1],
                "database backends": sum(after[2][pid] - before[2].get(pid, 0.0) for pid in after[2]),
                "wrk": wrk_cpu}
    # Without IRQ time accounting the kernel charges the ticks that hit a softirq (the loopback TCP
    # of every request) to no process: counted apart. Steal is time the hypervisor gave elsewhere.
    kernel = {k: after[5][k] - before[5][k] for k in ("irq", "softirq", "steal")}
    r["cpu"]["kernel irq/softirq"] = kernel["irq"] + kernel["softirq"]
    r["steal"] = kernel["steal"]
    r["cpu"]["rest of the machine"] = max(busy - kernel["steal"] - sum(r["cpu"].values()), 0.0)  # + gunicorn master
    r["cpu_capacity"] = after[4][1] - before[4][1]
    r["others"] = others
    r["answered"] = r["statuses"].get(200, 0) + r["statuses"].get(302, 0)
    r["rate"] = r["answered"] / r["span"]
    # CPU seconds used per second of load (before and after the window the machine is nearly idle)
    r["busy_cpus"] = (busy - kernel["steal"]) / r["span"]
    return r


def describe(name: str, r: dict, args) -> None:
    statuses = ", ".join(f"{n} x {code}" for code, n in sorted(r["statuses"].items()))
    c.out(f"{name}: {r['rate']:.0f} req/s ({r['answered']} answered 200/302 in {r['span']:.2f} s: {statuses}); "
          f"latency p50 {r['latency_p50_us'] / 1000:.2f} ms, p90 {r['latency_p90_us'] / 1000:.2f} ms, "
          f"p99 {r['latency_p99_us'] / 1000:.2f} ms, max {r['latency_max_us'] / 1000:.1f} ms")
    n = max(r["answered"], 1)
    parts = ", ".join(f"{k} {v / n * 1000:.3f}" for k, v in r["cpu"].items())
    capacity = max(r["cpu_capacity"], 1e-9)
    c.out(f"  CPU ms per request: {parts}; {r['busy_cpus']:.2f} of {os.cpu_count()} CPUs busy during the load")
    others = (r["cpu"]["rest of the machine"] + r["steal"]) / capacity
    if others > 0.05:
        names = ", ".join([f"{name} {seconds / capacity:.0%}" for name, seconds in r["others"]]
                          + ([f"steal {r['steal'] / capacity:.0%}"] if r["steal"] else []))
        c.out(f"  WARNING: other processes used {others:.0%} of the machine during this run ({names}): "
              f"figures disturbed")


def problems_of(r: dict) -> list[str]:
    problems = []
    unexpected = {code: n for code, n in r["statuses"].items() if code not in (200, 302)}
    if unexpected:
        problems.append(f"unexpected statuses {unexpected}")
    if any(r["errors"].values()):
        problems.append(f"wrk errors {r['errors']}")
    if r["written"] != r["completed"]:
        problems.append(f"wrk wrote {r['written']:.0f} requests but received {r['completed']:.0f} responses")
    return problems


# --- drain -----------------------------------------------------------------------------------------

def drain_all(args, database_url: str, redis, stream: str) -> tuple[int, float, int, dict | None]:
    """Drain the stream like the scheduler's periodic work; returns (stored, seconds, calls, breakdown).

    With ``--breakdown`` every SQL statement, COMMIT and Redis command of the drain is timed
    (wall, and this thread's CPU: psycopg/SQLAlchemy or redis-py work; wall minus CPU is waiting).
    """
    import sqlmodel

    from nurture import db, event_stream
    from nurture.event_stream import drain
    from nurture.reactions import on_tracking_events

    consumer = f"bench-{os.getpid()}"
    stored = calls = 0
    engine = db.engine_for(database_url)
    timer = c.Breakdown()
    parts = [(sqlmodel.Session, "commit", "COMMIT"), (event_stream, "store_hits", "store_hits (all of it)")]
    parts += [(redis, command, f"Redis {command.upper()}")
              for command in ("xgroup_create", "xautoclaim", "xreadgroup", "xack", "xdel")]
    with contextlib.ExitStack() as stack:
        if args.breakdown:
            stack.enter_context(timer.sql(engine, prefix="SQL "))
            stack.enter_context(timer.patched(parts))
        with sqlmodel.Session(engine) as session:
            session.connection().exec_driver_sql("SELECT 1")  # a pooled connection, as a running scheduler has
            session.commit()
            timer.stats.clear()
            started, cpu0 = time.perf_counter(), time.thread_time()
            while batch := drain(session, redis, stream, consumer, count=args.drain_batch,
                                 on_events=lambda s, events: on_tracking_events(s, events, datetime.now(timezone.utc))):
                stored += batch
                calls += 1
            elapsed, cpu = time.perf_counter() - started, time.thread_time() - cpu0
    breakdown = {"parts": timer, "wall": elapsed, "cpu": cpu} if args.breakdown else None
    return stored, elapsed, calls, breakdown


def print_breakdown(breakdown: dict, stored: int) -> None:
    n = max(stored, 1)
    c.out(f"drain breakdown ({breakdown['wall']:.3f} s wall, {breakdown['cpu']:.3f} s CPU in this process; "
          f"store_hits includes the SQL below except the Redis commands):")
    c.out(f"  {'part':<34} {'calls':>6} {'wall s':>8} {'CPU s':>8} {'wall us/event':>14}")
    rows = breakdown["parts"].rows()
    for name, calls, w, cp in rows:
        c.out(f"  {name:<34} {calls:>6} {w:>8.3f} {cp:>8.3f} {w / n * 1e6:>14.1f}")
    outside = breakdown["wall"] - sum(w for name, _, w, _ in rows
                                      if name.startswith("Redis") or name == "store_hits (all of it)")
    c.out(f"  {'rest of drain()':<34} {'':>6} {outside:>8.3f}")


def count_events(database_url: str) -> tuple[dict[str, int], int, int]:
    """(events per kind, machine events, events whose lead is not their message's lead)."""
    import sqlalchemy as sa

    from nurture import db

    with db.engine_for(database_url).connect() as conn:
        kinds = dict(conn.execute(sa.text("SELECT kind, count(*) FROM event GROUP BY kind")).all())
        machine = conn.execute(sa.text("SELECT count(*) FROM event WHERE is_machine")).scalar()
        wrong = conn.execute(sa.text("SELECT count(*) FROM event e JOIN message m ON m.id = e.message_id "
                                     "WHERE e.lead_id != m.lead_id")).scalar()
    return kinds, machine, wrong


# --- main ------------------------------------------------------------------------------------------

def main() -> None:
    args = parse_args()
    c.install_signal_handlers()
    if not shutil.which("wrk"):
        raise SystemExit("needs wrk: apt-get install -y wrk")
    from redis import Redis

    from nurture import db
    from nurture.config import Settings
    from nurture.event_stream import stream_key

    c.warn_if_busy()
    pid = os.getpid()
    queue_name = f"nurture-bench-track-{pid}"
    stream = stream_key(queue_name)  # what the app publishes to with NURTURE_QUEUE=queue_name
    tmp = Path(tempfile.mkdtemp(prefix="nurture-bench-track-"))
    redis = Redis.from_url(args.redis_url)
    scratch = None
    servers: list[Gunicorn] = []
    try:
        redis.delete(stream)
        if args.db == "postgresql":
            scratch = c.PgScratch(args.pg_admin_url, f"nurture_bench_track_{pid}")
            database_url = scratch.url
        else:
            database_url = f"sqlite:///{tmp}/bench.db"
        secret = secrets.token_urlsafe(48)
        env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
        env.update({"NURTURE_ENV": "production", "NURTURE_DATABASE_URL": database_url,
                    "NURTURE_REDIS_URL": args.redis_url, "NURTURE_QUEUE": queue_name, "NURTURE_SECRET_KEY": secret,
                    "NURTURE_BASE_URL": "https://bench.example.com", "NURTURE_FROM": "Bench <sales@bench.example.com>"})
        Settings.from_env(env)  # the app must accept these
        c.out(f"tracking_load: {args.messages} sent messages, {args.db}, {args.urls} paths "
              f"({args.click_share:.0%} clicks), gunicorn -w {args.workers} sync, wrk -t {args.threads} "
              f"-c {args.connections}, {args.seconds} s per run, {args.repeat} run(s) per side, {os.cpu_count()} CPUs")
        sent_at = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=2)
        message_ids = setup_database(args, database_url, sent_at)
        paths, targets = make_paths(args, secret, message_ids)
        paths_file = tmp / "paths.txt"
        paths_file.write_text("\n".join(paths) + "\n")

        sides = {
            "bare": dict(app="bare_gif_app:app", pythonpath=BENCH_DIR),
            "nurture": dict(app="wsgi:app", pythonpath=None),
        }
        results: dict[str, list[dict]] = {"bare": [], "nurture": []}
        expected = {200: 0, 302: 0}  # what nurture answered: each must become an event
        problems: list[str] = []
        for run in range(args.repeat):
            for side, spec in sides.items():
                server = Gunicorn(spec["app"], env, args.workers, tmp / f"gunicorn-{side}.log", spec["pythonpath"])
                servers.append(server)
                statuses = warm_up(server.port, paths, targets)
                r = run_wrk(args, server, paths_file, database_url)
                server.close()
                servers.remove(server)
                results[side].append(r)
                label = side if args.repeat == 1 else f"{side} (run {run + 1})"
                describe(label, r, args)
                problems += [f"{label}: {p}" for p in problems_of(r)]
                if side == "nurture":
                    for code in expected:
                        expected[code] += statuses.get(code, 0) + r["statuses"].get(code, 0)

        # Every hit nurture answered is in the stream now; drain it like the scheduler does.
        length, _ = stream_state(redis, stream)
        stored, seconds, calls, breakdown = drain_all(args, database_url, redis, stream)
        left, left_pending = stream_state(redis, stream)
        c.out(f"drain: {length} stream entries -> {stored} events in {seconds:.2f} s = {stored / seconds:.0f} events/s "
              f"({calls} drain calls of up to {args.drain_batch}); stream left: {left} entries, {left_pending} pending")
        if breakdown:
            print_breakdown(breakdown, stored)
        kinds, machine, wrong_lead = count_events(database_url)
        answered = expected[200] + expected[302]
        events = sum(kinds.values())
        c.out(f"responses: {answered} answered 200/302 by nurture (wrk + {WARM_UP * args.repeat} warm-up): "
              f"{expected[200]} opens (200), {expected[302]} clicks (302)")
        c.out(f"events in the database: {events}: {kinds.get('open', 0)} opens, {kinds.get('click', 0)} clicks "
              f"({machine} flagged as machine)")
        if kinds.get("open", 0) != expected[200] or kinds.get("click", 0) != expected[302] or events != answered:
            problems.append(f"{answered} answered 200/302 but {events} events in the database ({kinds})")
        if left or left_pending:
            problems.append(f"the stream still holds {left} entries, {left_pending} pending")
        if wrong_lead:
            problems.append(f"{wrong_lead} events name another lead than their message's")
        c.out("every request that got a 200 or 302 is an event in the database: "
              + ("yes" if not any("events in the database" in p for p in problems) else "NO"))

        bare = c.median([r["rate"] for r in results["bare"]])
        nurture = c.median([r["rate"] for r in results["nurture"]])
        if problems:
            c.out(f"PROBLEMS ({len(problems)}):")
            for problem in problems:
                c.out(f"  {problem}")
        c.out(f"nurture {nurture:.0f} req/s / bare {bare:.0f} req/s (aim: ratio >= 0.6)")
        c.out(f"ratio: {nurture / bare:.3f}")
        if problems:
            raise SystemExit(1)
    finally:
        with c.no_interrupts():
            for server in servers:
                server.close()
            redis.delete(stream)
            left = c.remaining_rq_keys(args.redis_url, queue_name)  # any key naming the run's queue
            if left:
                c.console.print(f"warning: Redis keys left: {left[:5]}")
            redis.close()
            for key in list(db._engines):
                db._engines.pop(key).dispose()
            if scratch:
                scratch.close()
            shutil.rmtree(tmp, ignore_errors=True)
            c.console.print(f"[dim]cleaned up: scratch database, {stream}, gunicorn processes, temp files[/dim]")


if __name__ == "__main__":
    c.run(main)
