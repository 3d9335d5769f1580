"""Shared helpers of the benchmarks: scratch databases, smtp-sink, Redis clean-up, signals.

Not a benchmark itself. Everything here cleans up what it creates, including on
Ctrl-C or SIGTERM (both become ``KeyboardInterrupt`` so ``finally`` blocks run).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import psycopg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
DEFAULT_PG_ADMIN_URL = os.environ.get("NURTURE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
DEFAULT_REDIS_URL = os.environ.get("NURTURE_BENCH_REDIS", "redis://127.0.0.1:6379/0")
SMTP_SINK = "/usr/sbin/smtp-sink"

console = Console(stderr=True)


def out(text: str = "") -> None:
    """Figures go to stdout (plain), progress and notes to stderr."""
    print(text, flush=True)


def progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


# --- signals ----------------------------------------------------------------------------------

def _interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP behave like Ctrl-C: the ``finally`` clean-up runs.

    SIGINT is set explicitly too: a shell starts background jobs with it ignored.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)


@contextmanager
def no_interrupts():
    """Clean-up must not be cut short by a second Ctrl-C."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


# --- network helpers ----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not open port {port} (exit code {proc.poll()})")
            time.sleep(0.01)


def stop_process(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    """Stop a child we started in its own session: its whole process group, by its id."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout)


# --- smtp-sink ----------------------------------------------------------------------------------

class SmtpSink:
    """Postfix's smtp-sink on a free port; counts messages (-c) and optionally dumps them (-D)."""

    def __init__(self, dump: bool) -> None:
        if not os.path.exists(SMTP_SINK):
            raise SystemExit(
                "needs Postfix's smtp-sink: echo 'postfix postfix/main_mailer_type select No configuration' | "
                "debconf-set-selections; DEBIAN_FRONTEND=noninteractive apt-get install -y postfix")
        self.dir = Path(tempfile.mkdtemp(prefix="nurture-bench-sink-"))
        os.chmod(self.dir, 0o755)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "nobody")  # the sink writes its dump as the -u user
        self.port = free_port()
        self.dump_path = self.dir / "dump.mbox" if dump else None
        self._counter = open(self.dir / "counter", "wb")
        cmd = [SMTP_SINK, "-c"]
        if dump:
            cmd += ["-D", str(self.dump_path)]
        if os.geteuid() == 0:
            cmd += ["-u", "nobody"]
        self.proc = subprocess.Popen(cmd + [f"127.0.0.1:{self.port}", "256"], stdout=self._counter,
                                     start_new_session=True)
        wait_port(self.port, self.proc)  # this probe counts as one session

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def messages(self) -> int:
        """Messages accepted so far (the last ``sess=N quit=N mesg=N`` record; reads only the tail)."""
        with open(self.dir / "counter", "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256))
            text = f.read().decode("ascii", "replace")
        records = [r for r in text.split("\r") if re.search(r"mesg=\d+$", r.strip())]
        if not records:
            return 0
        return int(re.search(r"mesg=(\d+)", records[-1])[1])

    def wait_for(self, count: int, timeout: float = 5.0) -> int:
        deadline = time.monotonic() + timeout
        while self.messages() < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.messages()

    def dumped_messages(self) -> list[bytes]:
        """The dumped messages, each with the sink's X-Client-* and Received headers in front."""
        data = self.dump_path.read_bytes()
        parts = re.split(rb"(?m)^(?=X-Client-Addr: )", data)
        return [p for p in parts if p.startswith(b"X-Client-Addr: ")]

    def close(self) -> None:
        stop_process(self.proc)
        self._counter.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# --- PostgreSQL scratch database -----------------------------------------------------------------

def _with_dbname(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


class PgScratch:
    """CREATE DATABASE on entry, DROP DATABASE ... WITH (FORCE) on close."""

    def __init__(self, admin_url: str, name: str) -> None:
        self.admin_url = admin_url
        self.name = name
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        self.url = _with_dbname(admin_url, name)

    def close(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


# --- Redis / RQ clean-up ------------------------------------------------------------------------

def rq_cleanup(redis_url: str, queue_name: str) -> int:
    """Delete every key our benchmark queue made: the queue, its registries, jobs, results, workers.

    Never FLUSHALL: other programs may share this Redis. One SCAN of ``rq:*`` finds
    keys naming the queue, job hashes whose origin is the queue (and every key
    naming one of those jobs: results, executions) and worker hashes serving it.
    """
    from redis import Redis
    from rq import Queue

    redis = Redis.from_url(redis_url)
    try:
        queue = Queue(queue_name, connection=redis)
        job_ids = set(queue.get_job_ids())
        origin = queue_name.encode()
        all_keys = [k.decode() for k in redis.scan_iter(match="rq:*", count=1000)]
        doomed = set()
        for key in all_keys:
            if queue_name in key:
                doomed.add(key)
            elif key.startswith("rq:job:") and redis.type(key) == b"hash" and redis.hget(key, "origin") == origin:
                job_ids.add(key.removeprefix("rq:job:").split(":")[0])
            elif key.startswith("rq:worker:") and redis.type(key) == b"hash" and redis.hget(key, "queues") == origin:
                doomed.add(key)
                redis.srem("rq:workers", key)
        if job_ids:
            doomed.update(k for k in all_keys if any(job_id in k for job_id in job_ids))
        if doomed:
            redis.delete(*doomed)
        redis.srem("rq:queues", f"rq:queue:{queue_name}")
        return len(doomed)
    finally:
        redis.close()


def remaining_rq_keys(redis_url: str, queue_name: str) -> list[bytes]:
    from redis import Redis

    redis = Redis.from_url(redis_url)
    try:
        return list(redis.scan_iter(match=f"*{queue_name}*", count=1000))
    finally:
        redis.close()


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU seconds a live process has used (0 if it is gone).

    ``children`` adds its waited-for children (an RQ work horse, once it has finished).
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / CLOCK_TICKS


def child_pids(pid: int) -> list[int]:
    """The direct children of a live process (a gunicorn master's workers); [] if it is gone."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def cpu_snapshot() -> dict[int, tuple[str, float]]:
    """{pid: (command name, user + system CPU seconds)} of every live process."""
    snapshot = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat.rpartition(")")[2].split()
            snapshot[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return snapshot


def top_cpu_users(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                  exclude: set[int] = frozenset(), limit: int = 3) -> list[tuple[str, float]]:
    """The processes (by name, summed) that used the most CPU seconds between two ``cpu_snapshot()``s."""
    used: dict[str, float] = {}
    for pid, (name, seconds) in after.items():
        if pid in exclude:
            continue
        delta = seconds - before.get(pid, (name, 0.0))[1]
        if delta > 0:
            used[name] = used.get(name, 0.0) + delta
    return sorted(used.items(), key=lambda kv: -kv[1])[:limit]


def cpu_times() -> dict[str, float]:
    """The machine's CPU seconds since boot by kind (the first line of /proc/stat)."""
    names = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]
    values = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:1 + len(names)]
    return {name: int(v) / CLOCK_TICKS for name, v in zip(names, values)}


def system_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / CLOCK_TICKS, sum(values) / CLOCK_TICKS


def pids_named(name: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def warn_if_busy(seconds: float = 1.0) -> None:
    """Say so when other processes keep the machine busy before we start: figures would suffer."""
    busy0, total0 = system_cpu()
    time.sleep(seconds)
    busy1, total1 = system_cpu()
    share = (busy1 - busy0) / max(total1 - total0, 1e-9)
    if share > 0.2:
        console.print(f"[yellow]warning: the machine is already {share:.0%} busy before the benchmark starts; "
                      f"other processes will disturb the figures[/yellow]")
        print(f"note: machine {share:.0%} busy before the start (other processes)", flush=True)


def max_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class Breakdown:
    """Calls, wall time and this thread's CPU per part of a run (the ``--breakdown`` options).

    Parts are functions wrapped in place (``patched``) and SQL statements labelled by
    verb and table (``sql``). A wrapper costs microseconds: unlike cProfile it does not
    inflate SQLAlchemy's many small calls. Wall minus CPU is time spent waiting.
    """

    def __init__(self) -> None:
        self.stats: dict[str, list[float]] = {}

    def add(self, name: str, wall0: float, cpu0: float) -> None:
        entry = self.stats.setdefault(name, [0, 0.0, 0.0])
        entry[0] += 1
        entry[1] += time.perf_counter() - wall0
        entry[2] += time.thread_time() - cpu0

    def timed(self, name: str, fn):
        def wrapper(*args, **kwargs):
            wall0, cpu0 = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, wall0, cpu0)
        return wrapper

    @contextmanager
    def patched(self, parts: list[tuple[object, str, str]]):
        """Wrap each ``(owner, attribute, label)`` for the duration of the block."""
        saved = [(owner, attribute, getattr(owner, attribute)) for owner, attribute, _ in parts]
        for (owner, attribute, label), (_, _, fn) in zip(parts, saved):
            setattr(owner, attribute, self.timed(label, fn))
        try:
            yield self
        finally:
            for owner, attribute, fn in saved:
                setattr(owner, attribute, fn)

    @contextmanager
    def sql(self, engine, prefix: str = ""):
        """Time every statement run on ``engine``, labelled ``<prefix><VERB> <table>``."""
        import sqlalchemy as sa

        def before(conn, cursor, statement, parameters, context, executemany):
            conn.info["bench_t"] = (time.perf_counter(), time.thread_time())

        def after(conn, cursor, statement, parameters, context, executemany):
            verb = statement.split(None, 1)[0].upper()
            table = re.search(r"\b(?:FROM|INTO|UPDATE)\s+\"?(\w+)", statement, re.I)
            self.add(f"{prefix}{verb} {table[1] if table else ''}".strip(), *conn.info.pop("bench_t"))

        sa.event.listen(engine, "before_cursor_execute", before)
        sa.event.listen(engine, "after_cursor_execute", after)
        try:
            yield self
        finally:
            sa.event.remove(engine, "before_cursor_execute", before)
            sa.event.remove(engine, "after_cursor_execute", after)

    def rows(self) -> list[tuple[str, int, float, float]]:
        """(label, calls, wall s, CPU s), longest wall time first."""
        return [(name, int(calls), wall, cpu) for name, (calls, wall, cpu)
                in sorted(self.stats.items(), key=lambda kv: -kv[1][1])]


def run(main) -> None:
    """Run a benchmark's ``main``; Ctrl-C ends it with code 130 after its own clean-up ran."""
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted: everything this run made was removed", file=sys.stderr)
        sys.exit(130)
