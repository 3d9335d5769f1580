"""Scheduler at scale: claim and enqueue the due steps among a million enrollments.

What it measures
    A PostgreSQL table of ``--enrollments`` enrollments (default 1,000,000, one lead
    each, all active) of which ``--due`` (default 10,000, spread evenly over the heap)
    are due for their first-contact email at a fixed instant (Monday 2026-03-02
    12:00 UTC, inside the send window; every lead is in UTC); the others are due
    at some moment within the next 180 days.

    nurture: one ``nurture.scheduling.run_tick`` at that instant, enqueueing into a
    real RQ queue in Redis with ``nurture.queues.enqueue_send_batches`` (the queue
    is deleted after each run). It claims the due enrollments, creates their
    messages, schedules their next steps and enqueues the send jobs.

    bare: the least any scheduler must do, on the same table and the same due rows,
    in one transaction with psycopg: ``SELECT id FROM enrollment WHERE status =
    'active' AND next_run_at <= now ORDER BY next_run_at LIMIT <due> FOR UPDATE SKIP
    LOCKED`` then ``UPDATE enrollment SET next_run_at = ... WHERE id = ANY(...)``.

    Between runs the due rows are put back as they were, the messages removed and
    the table vacuumed, so every run sees the same data. Each side runs ``--repeat``
    times (default 3), alternating; the medians are compared. Printed: both times,
    the process's peak memory (ru_maxrss) and, last, ``ratio: nurture/bare`` (the
    issue aims at <= 2). ``--sweep 1000,2000,5000,10000`` also times nurture with
    each NURTURE_CLAIM_BATCH; ``--profile FILE`` runs one more tick under cProfile.

Run (needs PostgreSQL at 127.0.0.1:5432 and Redis at 127.0.0.1:6379):
    .venv/bin/python bench/scheduler_scale.py
    .venv/bin/python bench/scheduler_scale.py --enrollments 200000 --due 5000
    .venv/bin/python bench/scheduler_scale.py --sweep 1000,2500,5000,10000

It creates the scratch database ``nurture_bench_sched_<pid>`` and the Redis queue
``nurture-bench-sched-<pid>`` and removes both at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)  # a Monday, inside the 09:00-18:00 window
SEQUENCE_KEY = "systematic-follow-up"
CHUNK = 100_000
DEFAULT_CLAIM_BATCH = 10_000


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--enrollments", type=int, default=1_000_000, help="enrollments (and leads) in the table (default 1000000)")
    p.add_argument("--due", type=int, default=10_000, help="how many of them are due (default 10000)")
    p.add_argument("--claim-batch", type=int, default=DEFAULT_CLAIM_BATCH,
                   help=f"NURTURE_CLAIM_BATCH for the comparison (default {DEFAULT_CLAIM_BATCH}: see the README)")
    p.add_argument("--send-batch", type=int, default=200, help="NURTURE_SEND_BATCH: messages per RQ job (default 200)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each side; the median is used (default 3)")
    p.add_argument("--sweep", metavar="N,N,...", help="also time nurture with each of these NURTURE_CLAIM_BATCH values")
    p.add_argument("--no-floor", action="store_true", help="skip the informational 'floor' measurement")
    p.add_argument("--breakdown", action="store_true", help="one more nurture tick, with each SQL statement and the "
                                                           "enqueue timed (wall and client CPU)")
    p.add_argument("--profile", metavar="FILE", help="run one more nurture tick under cProfile, save it to FILE and print the top")
    p.add_argument("--pg-admin-url", default=c.DEFAULT_PG_ADMIN_URL, help="a database to run CREATE/DROP DATABASE from")
    p.add_argument("--redis-url", default=c.DEFAULT_REDIS_URL)
    args = p.parse_args()
    if not 1 <= args.due <= args.enrollments:
        p.error("need 1 <= --due <= --enrollments")
    return args


def settings_for(args, database_url: str, queue_name: str, claim_batch: int):
    from nurture.config import Settings

    return Settings.from_env({
        "NURTURE_ENV": "dev", "NURTURE_DATABASE_URL": database_url, "NURTURE_REDIS_URL": args.redis_url,
        "NURTURE_QUEUE": queue_name, "NURTURE_CLAIM_BATCH": str(claim_batch),
        "NURTURE_SEND_BATCH": str(args.send_batch), "NURTURE_NOW": NOW.isoformat(),
    })


# --- setup ---------------------------------------------------------------------------------------------

def setup(args, url: str) -> None:
    """Schema and campaigns through nurture; leads and enrollments with INSERT ... SELECT generate_series."""
    import psycopg
    from sqlmodel import Session

    from nurture import db
    from nurture.loading import load_campaigns

    started = time.perf_counter()
    db.upgrade(url)
    with Session(db.engine_for(url)) as session:
        load_campaigns(session, c.REPO / "campaigns", c.REPO / "templates" / "email", "en", NOW - timedelta(days=200))
    n, due = args.enrollments, args.due
    stride = n // due  # enrollment i is due when i % stride == 0 and i // stride <= due
    with psycopg.connect(url, autocommit=True) as conn:
        seq_id = conn.execute("SELECT id FROM sequence WHERE key = %s", (SEQUENCE_KEY,)).fetchone()[0]
        steps = [r[0] for r in conn.execute(
            "SELECT id FROM step WHERE sequence_id = %s AND NOT retired ORDER BY position", (seq_id,))]
        owner = conn.execute(
            "INSERT INTO \"user\" (email, name, role, title, phone, active, created_at) "
            "VALUES ('rep@bench.example.com', 'Rep', 'rep', '', '', true, %s) RETURNING id", (NOW,)).fetchone()[0]
        chunks = list(range(1, n + 1, CHUNK))
        with c.progress() as bar:
            task = bar.add_task(f"inserting {n} leads and enrollments", total=2 * n)
            for start in chunks:
                end = min(start + CHUNK - 1, n)
                conn.execute(
                    """
                    INSERT INTO lead (id, email, first_name, last_name, company, timezone, language, source,
                                      owner_id, stage, score, probability, status, consent, custom, created_at, updated_at)
                    SELECT i, 'lead' || i || '@customer' || (i %% 100) || '.example.com', 'First' || (i %% 997),
                           'Last' || (i %% 991), 'Company ' || (i %% 5000), 'UTC', 'en', 'bench', %(owner)s, 'new',
                           0, 0, 'active', '', '{}', %(t)s, %(t)s
                    FROM generate_series(%(a)s::int, %(b)s::int) AS i
                    """, {"owner": owner, "t": NOW - timedelta(days=200), "a": start, "b": end})
                bar.advance(task, end - start + 1)
            for start in chunks:
                end = min(start + CHUNK - 1, n)
                conn.execute(
                    """
                    INSERT INTO enrollment (id, lead_id, sequence_id, status, next_step_id, next_run_at, started_at,
                                            exit_reason)
                    SELECT i, i, %(seq)s, 'active',
                           CASE WHEN i %% %(stride)s = 0 AND i / %(stride)s <= %(due)s THEN %(first)s
                                ELSE (%(later)s::int[])[1 + i %% %(nlater)s] END,
                           CASE WHEN i %% %(stride)s = 0 AND i / %(stride)s <= %(due)s
                                THEN %(now)s - make_interval(secs => 1 + (i::bigint * 7919) %% 10800)
                                ELSE %(now)s + make_interval(secs => 60 + (i::bigint * 104729) %% (180 * 86400)) END,
                           %(now)s - interval '12 hours', ''
                    FROM generate_series(%(a)s::int, %(b)s::int) AS i
                    """, {"seq": seq_id, "stride": stride, "due": due, "first": steps[0], "later": steps[1:],
                          "nlater": len(steps) - 1, "now": NOW, "a": start, "b": end})
                bar.advance(task, end - start + 1)
        conn.execute("SELECT setval(pg_get_serial_sequence('lead', 'id'), %s)", (n,))
        conn.execute("SELECT setval(pg_get_serial_sequence('enrollment', 'id'), %s)", (n,))
        with c.progress() as bar:
            bar.add_task("VACUUM ANALYZE", total=None)
            conn.execute("VACUUM ANALYZE")
        conn.execute("CREATE TABLE bench_due AS SELECT id, next_step_id, next_run_at FROM enrollment "
                     "WHERE status = 'active' AND next_run_at <= %s", (NOW,))
        found = conn.execute("SELECT count(*) FROM bench_due").fetchone()[0]
        size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('enrollment')), "
                            "pg_size_pretty(pg_total_relation_size('lead'))").fetchone()
    if found != due:
        raise SystemExit(f"setup made {found} due enrollments, expected {due}")
    c.out(f"setup: {n} leads + {n} enrollments ({due} due) in {time.perf_counter() - started:.1f} s; "
          f"enrollment table {size[0]}, lead table {size[1]} with indexes")


def reset(url: str) -> None:
    """Every due row back as it was, no messages, dead rows vacuumed, a checkpoint taken."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE message, notification CASCADE")  # and what refers to them: empty here
        conn.execute("UPDATE enrollment AS e SET status = 'active', next_step_id = d.next_step_id, "
                     "next_run_at = d.next_run_at, finished_at = NULL, exit_reason = '' "
                     "FROM bench_due AS d WHERE e.id = d.id")
        conn.execute("VACUUM enrollment, message")
        conn.execute("CHECKPOINT")


# --- the two sides ----------------------------------------------------------------------------------------

def run_nurture(args, url: str, queue_name: str, claim_batch: int, profiler=None, enqueue_fn=None) -> float:
    from redis import Redis
    from sqlmodel import Session

    from nurture import db
    from nurture.queues import enqueue_send_batches, send_queue
    from nurture.scheduling import run_tick

    settings = settings_for(args, url, queue_name, claim_batch)
    redis = Redis.from_url(args.redis_url)
    queue = send_queue(settings, redis)
    jobs = 0

    def enqueue(ids: list[int]) -> None:
        nonlocal jobs
        jobs += (enqueue_fn or enqueue_send_batches)(queue, ids, settings.send_batch_size, settings.lease_seconds)

    try:
        with Session(db.engine_for(url), expire_on_commit=False) as session:
            session.connection().exec_driver_sql("SELECT 1")  # a pooled connection, as a running scheduler has
            session.commit()
            if profiler:
                profiler.enable()
            started = time.perf_counter()
            report = run_tick(session, settings, NOW, enqueue)
            elapsed = time.perf_counter() - started
            if profiler:
                profiler.disable()
        queued = queue.count
    finally:
        redis.close()
        c.rq_cleanup(args.redis_url, queue_name)
    expected_jobs = math.ceil(args.due / args.send_batch) if claim_batch % args.send_batch == 0 or claim_batch >= args.due \
        else None
    if report.messages != args.due or queued != jobs or (expected_jobs and jobs != expected_jobs):
        raise SystemExit(f"nurture tick: {report.messages} messages, {jobs} jobs enqueued, {queued} in the queue; "
                         f"expected {args.due} messages")
    return elapsed


def run_bare(args, url: str) -> float:
    import psycopg

    with psycopg.connect(url) as conn:
        conn.execute("SELECT 1")
        conn.commit()
        started = time.perf_counter()
        with conn.transaction():
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM enrollment WHERE status = 'active' AND next_run_at <= %s "
                "ORDER BY next_run_at LIMIT %s FOR UPDATE SKIP LOCKED", (NOW, args.due))]
            updated = conn.execute("UPDATE enrollment SET next_run_at = %s WHERE id = ANY(%s)",
                                   (NOW + timedelta(days=2), ids)).rowcount
        elapsed = time.perf_counter() - started
    if len(ids) != args.due or updated != args.due:
        raise SystemExit(f"bare: claimed {len(ids)}, updated {updated}, expected {args.due}")
    return elapsed


def breakdown(args, url: str, queue_name: str) -> None:
    """One more nurture tick with every SQL statement and the enqueue timed (wall and this thread's CPU).

    Statements are labelled by verb and table. "client CPU" inside a statement is
    psycopg and SQLAlchemy work during the cursor call (query conversion, parameter
    adaptation, result rows); wall minus that is the wait for PostgreSQL.
    """
    import sqlmodel

    from nurture import db, queues

    engine = db.engine_for(url)
    breakdown = c.Breakdown()
    reset(url)
    with breakdown.sql(engine), breakdown.patched([(sqlmodel.Session, "commit", "COMMIT")]):
        w0, c0 = time.perf_counter(), time.thread_time()
        run_nurture(args, url, queue_name, args.claim_batch,
                    enqueue_fn=breakdown.timed("enqueue to Redis (RQ)", queues.enqueue_send_batches))
        wall, cpu = time.perf_counter() - w0, time.thread_time() - c0
    c.out(f"breakdown of one nurture tick ({wall:.3f} s wall, {cpu:.3f} s CPU in this process, including the "
          f"session set-up and the check of the queue):")
    c.out(f"  {'part':<34} {'calls':>6} {'wall s':>8} {'client CPU s':>13}")
    rows = breakdown.rows()
    for name, calls, w, cp in rows:
        c.out(f"  {name:<34} {calls:>6} {w:>8.3f} {cp:>13.3f}")
    in_sql = sum(w for _, _, w, _ in rows)
    in_sql_cpu = sum(cp for _, _, _, cp in rows)
    c.out(f"  {'Python outside those calls':<34} {'':>6} {wall - in_sql:>8.3f} {cpu - in_sql_cpu:>13.3f}")


def run_floor(args, url: str) -> float:
    """For context, not the ratio: the bare claim plus the writes nurture must also make, with no
    Python per row: INSERT the due messages and UPDATE next step and time, each one statement over arrays."""
    import uuid

    import psycopg

    with psycopg.connect(url) as conn:
        follow_up = conn.execute("SELECT id FROM step WHERE key = 'follow-up'").fetchone()[0]
        conn.commit()
        started = time.perf_counter()
        with conn.transaction():
            rows = conn.execute(
                "SELECT id, lead_id, sequence_id, next_step_id FROM enrollment WHERE status = 'active' "
                "AND next_run_at <= %s ORDER BY next_run_at LIMIT %s FOR UPDATE SKIP LOCKED", (NOW, args.due)).fetchall()
            ids, leads, seqs, steps = (list(col) for col in zip(*rows))
            lease = NOW + timedelta(seconds=600)
            inserted = conn.execute(
                "INSERT INTO message (enrollment_id, step_id, lead_id, sequence_id, status, variant, subject, attempts, "
                "message_id, available_at, created_at, smtp_response, error) "
                "SELECT e, s, l, q, 'queued', 0, '', 0, m, %s, %s, '', '' "
                "FROM unnest(%s::int[], %s::int[], %s::int[], %s::int[], %s::text[]) AS v(e, s, l, q, m) RETURNING id",
                (lease, NOW, ids, steps, leads, seqs, [f"<{uuid.uuid4().hex}@example.com>" for _ in ids])).fetchall()
            updated = conn.execute(
                "UPDATE enrollment AS e SET next_step_id = %s, next_run_at = v.t FROM unnest(%s::int[], %s::timestamptz[]) "
                "AS v(id, t) WHERE e.id = v.id",
                (follow_up, ids, [NOW + timedelta(days=2)] * len(ids))).rowcount
        elapsed = time.perf_counter() - started
    if len(inserted) != args.due or updated != args.due:
        raise SystemExit(f"floor: inserted {len(inserted)}, updated {updated}, expected {args.due}")
    return elapsed


def print_profile(path: str, limit: int = 25) -> None:
    import io
    import pstats

    for order in ("cumulative", "tottime"):
        buffer = io.StringIO()
        pstats.Stats(path, stream=buffer).sort_stats(order).print_stats(limit)
        lines = buffer.getvalue().splitlines()
        start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
        c.out(f"--- profile of one nurture tick, top {limit} by {order} ({path}) ---")
        for line in lines[start:]:
            if line.strip():
                c.out("  " + line.strip()[:170])


def main() -> None:
    args = parse_args()
    c.install_signal_handlers()
    c.warn_if_busy()
    from nurture import db

    pid = os.getpid()
    queue_name = f"nurture-bench-sched-{pid}"
    scratch = None
    try:
        scratch = c.PgScratch(args.pg_admin_url, f"nurture_bench_sched_{pid}")
        url = scratch.url
        c.out(f"scheduler_scale: {args.enrollments} enrollments, {args.due} due, claim batch {args.claim_batch}, "
              f"send batch {args.send_batch}, {args.repeat} runs each, PostgreSQL")
        setup(args, url)
        rss_setup = c.max_rss_mb()
        if args.sweep:
            sizes = sorted(int(x) for x in args.sweep.split(",") if x.strip())
            results = []
            for size in sizes:
                runs = []
                for _ in range(args.repeat):
                    reset(url)
                    runs.append(run_nurture(args, url, queue_name, size))
                results.append(f"{size}: {c.median(runs):.3f} s (peak RSS so far {c.max_rss_mb():.0f} MiB)")
            c.out(f"claim batch sweep, nurture run_tick median of {args.repeat}: " + "; ".join(results))
        times = {"nurture": [], "bare": [], "floor": []}
        with c.progress() as bar:
            task = bar.add_task("measuring (nurture, bare, floor; each after a reset)", total=3 * args.repeat)
            for _ in range(args.repeat):
                reset(url)
                times["nurture"].append(run_nurture(args, url, queue_name, args.claim_batch))
                bar.advance(task)
                reset(url)
                times["bare"].append(run_bare(args, url))
                bar.advance(task)
                if not args.no_floor:
                    reset(url)
                    times["floor"].append(run_floor(args, url))
                bar.advance(task)
        nurture, bare = c.median(times["nurture"]), c.median(times["bare"])
        rss_end = c.max_rss_mb()
        if args.breakdown:
            breakdown(args, url, queue_name)
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            reset(url)
            run_nurture(args, url, queue_name, args.claim_batch, profiler)
            profiler.dump_stats(args.profile)
            print_profile(args.profile)
        fmt = ", ".join
        c.out(f"nurture run_tick (claim {args.due} + messages + next steps + enqueue {math.ceil(args.due / args.send_batch)} "
              f"jobs): median {nurture:.3f} s = {args.due / nurture:.0f} steps/s "
              f"(runs: {fmt(f'{t:.3f}' for t in times['nurture'])})")
        c.out(f"bare SELECT ... FOR UPDATE SKIP LOCKED + UPDATE: median {bare:.3f} s = {args.due / bare:.0f} steps/s "
              f"(runs: {fmt(f'{t:.3f}' for t in times['bare'])})")
        if times["floor"]:
            floor = c.median(times["floor"])
            c.out(f"(context) floor = bare + INSERT of the messages + UPDATE of next step/time, one statement each over "
                  f"arrays: median {floor:.3f} s (runs: {fmt(f'{t:.3f}' for t in times['floor'])}); nurture/floor "
                  f"{nurture / floor:.2f}")
        c.out(f"peak memory of this process (ru_maxrss): {rss_end:.0f} MiB (after setup: {rss_setup:.0f} MiB)")
        c.out(f"NURTURE_CLAIM_BATCH used: {args.claim_batch}" + (" (the default here: every due step in one claim round, one "
              "transaction like the bare side; the claim batch size made no measurable difference, see --sweep)"
              if args.claim_batch == DEFAULT_CLAIM_BATCH else ""))
        c.out(f"ratio: {nurture / bare:.2f}")
    finally:
        with c.no_interrupts():
            removed = c.rq_cleanup(args.redis_url, queue_name)
            left = c.remaining_rq_keys(args.redis_url, queue_name)
            if left:
                c.console.print(f"warning: Redis keys left: {left[:5]}")
            for key in list(db._engines):
                db._engines.pop(key).dispose()
            if scratch:
                scratch.close()
            c.console.print(f"[dim]cleaned up: scratch database, {removed} Redis keys[/dim]")


if __name__ == "__main__":
    c.run(main)
