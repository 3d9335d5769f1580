"""Funnel analytics at scale: funnel, plan and forecast over a million leads' stage history.

What it measures
    A PostgreSQL database with ``--leads`` leads (default 1,000,000) and about five
    stage changes each (about 5,000,000 ``stage_change`` rows), bulk-loaded with
    COPY. Each lead enters at a moment within the year before NOW (Monday
    2026-03-02 12:00 UTC) and moves along the shipped pipeline (new -> contacted ->
    engaged -> qualified -> proposal -> negotiation -> won) with fixed conversions
    and exponential days between moves; one that stops is lost or cooled (or stays
    open) unless its next move would be after NOW. Leads have one of five sources,
    one of twenty owners, a close probability and a deal value.

    funnel: ``nurture.analytics.funnel.funnel(session, chain, by="month")``:
    conversion per monthly entry cohort, drop-off, and time in stage (median, p90).
    plan: what ``nurture plan --deals <leads / 10> --by 2026-12-31`` computes: the learned
    stage probabilities (``nurture.conversion``), the cycle times, deals won this
    quarter, the average deal value, and the plan itself (20,000 draws).
    forecast: ``nurture.analytics.forecast.forecast``: every open lead's probability
    and value, grouped by expected close month, exact deal percentiles.
    bare: ``SELECT to_stage, count(*) FROM stage_change GROUP BY to_stage``, the
    least any report over the same table does.

    The reports read per-lead summaries of the stage history
    (``nurture.analytics.journeys``), not the raw changes. They are built once
    after setup (timed and printed: what the first scheduler tick after an
    upgrade does), and before every timed run ``--fresh`` leads (default 1,000)
    move a stage, so each run also folds those new changes in, as a report
    does when the scheduler's last tick missed them.

    Each runs ``--repeat`` times (default 3), in turn; medians are compared. Printed:
    each time, its ratio to bare, peak memory, and last ``ratio: X``, the slowest of
    the three over bare.

Run (needs PostgreSQL at 127.0.0.1:5432):
    .venv/bin/python bench/funnel_scale.py
    .venv/bin/python bench/funnel_scale.py --leads 200000 --repeat 5
    .venv/bin/python bench/funnel_scale.py --breakdown      # + time per SQL statement of each part

It creates the scratch database ``nurture_bench_funnel_<pid>`` and drops it at the
end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)
PATH = ("new", "contacted", "engaged", "qualified", "proposal", "negotiation", "won")
CONVERSIONS = (0.95, 0.85, 0.8, 0.75, 0.7, 0.65)  # about five stage changes per lead
PROBABILITY = {"new": 0.02, "contacted": 0.04, "engaged": 0.12, "qualified": 0.25, "proposal": 0.45,
               "negotiation": 0.7, "won": 1.0, "lost": 0.0, "cold": 0.03}
SOURCES = ("webinar", "выставка", "ads", "referral", "")
CHUNK = 200_000
PLAN_BY = date(2026, 12, 31)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--leads", type=int, default=1_000_000, help="leads (default 1000000; about 5 stage changes each)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each part; the median is used (default 3)")
    p.add_argument("--breakdown", action="store_true", help="one more run of each part with every SQL statement timed")
    p.add_argument("--fresh", type=int, default=1000, help="stage changes made before each timed run (default 1000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep", action="store_true", help="leave the scratch database for --reuse (setup takes minutes)")
    p.add_argument("--reuse", metavar="DATABASE", help="measure a database left by --keep instead of building one")
    p.add_argument("--pg-admin-url", default=c.DEFAULT_PG_ADMIN_URL, help="a database to run CREATE/DROP DATABASE from")
    args = p.parse_args()
    if args.leads < 1000:
        p.error("--leads must be at least 1000")
    return args


# --- setup ---------------------------------------------------------------------------------------------

def histories(n: int, seed: int):
    """Every lead's moves as arrays: (lead index, stage, days before NOW) and each lead's last state."""
    import numpy as np

    rng = np.random.default_rng(seed)
    entered = rng.uniform(0, 365, n)  # days before NOW
    depth = np.zeros(n, dtype=np.int64)
    alive = np.ones(n, dtype=bool)
    for rate in CONVERSIONS:
        alive &= rng.random(n) < rate
        depth += alive
    gaps = rng.exponential(6.0, (n, len(PATH)))  # days between moves
    times = entered[:, None] - np.cumsum(np.concatenate([np.zeros((n, 1)), gaps[:, :-1]], axis=1), axis=1)
    reached = np.minimum(depth, (times >= 0).sum(axis=1) - 1)  # moves after NOW have not happened yet
    closing = np.where(rng.random(n) < 0.55, PATH.index("won") + 1, PATH.index("won") + 2)  # lost or cold code
    close_at = times[np.arange(n), reached] - rng.exponential(10.0, n)
    closes = (reached < len(PATH) - 1) & (reached == depth) & (close_at >= 0)  # stopped short, closed before NOW
    leads, stages, days = [], [], []
    for k in range(len(PATH)):
        has = reached >= k
        leads.append(np.nonzero(has)[0])
        stages.append(np.full(has.sum(), k))
        days.append(times[has, k])
    idx = np.nonzero(closes)[0]
    leads.append(idx)
    stages.append(closing[idx])
    days.append(close_at[idx])
    lead_of, stage_of, day_of = (np.concatenate(x) for x in (leads, stages, days))
    order = np.lexsort((-day_of, lead_of))
    final = np.where(closes, closing, reached)
    last_day = np.where(closes, close_at, times[np.arange(n), reached])
    return lead_of[order], stage_of[order], day_of[order], final, last_day, entered


def copy_rows(conn, sql: str, lines, bar, task) -> None:
    with conn.cursor().copy(sql) as copy:
        for chunk in lines:
            copy.write(chunk)
            bar.advance(task, chunk.count("\n"))


def setup(args, url: str) -> int:
    """Schema and pipeline through nurture; users, leads and stage changes with COPY. Returns the change count."""
    import numpy as np
    import psycopg
    from sqlmodel import Session

    from nurture import db
    from nurture.pipeline import default_pipeline, sync_pipeline

    started = time.perf_counter()
    db.upgrade(url)
    with Session(db.engine_for(url)) as session:
        sync_pipeline(session, default_pipeline(), NOW - timedelta(days=400))
        session.commit()
    n = args.leads
    lead_of, stage_of, day_of, final, last_day, entered = histories(n, args.seed)
    names = PATH + ("lost", "cold")
    rng = np.random.default_rng(args.seed + 1)

    def stamp(days):  # days before NOW -> timestamptz text
        seconds = np.round(days * 86400).astype(np.int64)
        base = np.datetime64(NOW.replace(tzinfo=None), "s")
        return np.datetime_as_string(base - seconds.astype("timedelta64[s]"), unit="s")

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO \"user\" (email, name, role, title, phone, active, receives_leads, webhook_url, "
                     "created_at) SELECT 'rep' || i || '@bench.example.com', 'Rep ' || i, 'rep', '', '', true, true, "
                     "'', %s FROM generate_series(1, 20) AS i", (NOW,))
        owners = [r[0] for r in conn.execute("SELECT id FROM \"user\" ORDER BY id")]
        with c.progress() as bar:
            task = bar.add_task(f"COPY {n} leads", total=n)

            def lead_lines():
                for start in range(0, n, CHUNK):
                    end = min(start + CHUNK, n)
                    ids = np.arange(start + 1, end + 1)
                    stage = [names[k] for k in final[start:end]]
                    probability = [PROBABILITY[s] for s in stage] * rng.uniform(0.7, 1.3, end - start)
                    value = np.round(rng.lognormal(8.5, 0.6, end - start), 2)
                    created, moved = stamp(entered[start:end]), stamp(last_day[start:end])
                    rows = (f"{i}\tlead{i}@bench{i % 100}.example.com\t{SOURCES[i % 5]}\t{owners[i % 20]}\t{s}\t{m}+00\t"
                            f"{min(p, 1.0):.4f}\t{v}\t{cr}+00\t{cr}+00\t\t\t\ten\t0\tactive\t\t{{}}\t[]\timport\t\n"
                            for i, s, m, p, v, cr in zip(ids, stage, moved, probability, value, created))
                    yield "".join(rows)
            copy_rows(conn, "COPY lead (id, email, source, owner_id, stage, stage_changed_at, probability, deal_value, "
                      "created_at, updated_at, first_name, last_name, company, language, score, status, consent, custom, "
                      "probability_why, stage_source, lost_reason) FROM STDIN", lead_lines(), bar, task)
            total = len(lead_of)
            task = bar.add_task(f"COPY {total} stage changes", total=total)

            def change_lines():
                for start in range(0, total, CHUNK):
                    end = min(start + CHUNK, total)
                    leads, stages = lead_of[start:end] + 1, stage_of[start:end]
                    previous = np.where(np.r_[False, leads[1:] == leads[:-1]], np.r_[0, stages[:-1]], -1)
                    at = stamp(day_of[start:end])
                    rows = (f"{lead}\t{names[p] if p >= 0 else chr(92) + 'N'}\t{names[s]}\t{t}+00\timport\t\t\n"
                            for lead, p, s, t in zip(leads, previous, stages, at))
                    yield "".join(rows)
            copy_rows(conn, "COPY stage_change (lead_id, from_stage, to_stage, changed_at, reason, note, lost_reason) FROM STDIN",
                      change_lines(), bar, task)
            bar.add_task("VACUUM ANALYZE", total=None)
            conn.execute("SELECT setval(pg_get_serial_sequence('lead', 'id'), %s)", (n,))
            conn.execute("VACUUM ANALYZE")
        size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('stage_change')), "
                            "pg_size_pretty(pg_total_relation_size('lead'))").fetchone()
        counted = conn.execute("SELECT count(*) FROM stage_change").fetchone()[0]
    c.out(f"setup: {n} leads and {counted} stage changes in {time.perf_counter() - started:.1f} s; "
          f"stage_change table {size[0]}, lead table {size[1]} with indexes")
    return counted


# --- the parts ---------------------------------------------------------------------------------------------

def run_funnel(session) -> str:
    from nurture.analytics.chain import load_chain
    from nurture.analytics.funnel import funnel

    result = funnel(session, load_chain(session), by="month")
    leads = sum(row.leads for row in result.rows)
    return f"{len(result.rows)} cohorts, {leads} leads, {len(result.time_in_stage)} stage times"


def run_plan(session, deals: int) -> str:
    from nurture.analytics.backwards_plan import (
        average_deal_value, cycle_times, plan, step_conversions, won_between,
    )
    from nurture.analytics.chain import Chain
    from nurture.conversion import stage_probabilities
    from nurture.analytics.report_sql import tune_for_reports
    from nurture.pipeline import stored_pipeline

    tune_for_reports(session)  # as nurture plan does, before nurture.conversion's queries
    config = stored_pipeline(session)
    chain = Chain.from_config(config)
    conversions = step_conversions(stage_probabilities(session, config), chain, config.prior_weight)
    won = won_between(session, chain, datetime(2026, 1, 1, tzinfo=timezone.utc), NOW)
    result = plan(conversions, deals, PLAN_BY, NOW.date(), 0.8, {}, None, average_deal_value(session, chain),
                  cycle_times(session, chain), won_so_far=won)
    return (f"{result.won_so_far} won this quarter, {result.leads_mean} leads (mean) / {result.leads_at_confidence} "
            f"(80%), {result.per_week_at_confidence}/week from {result.cycle_deals_measured} cycle times")


def run_forecast(session) -> str:
    from nurture.analytics.backwards_plan import average_deal_value
    from nurture.analytics.chain import load_chain
    from nurture.analytics.forecast import forecast

    chain = load_chain(session)
    rows = forecast(session, chain, NOW, average_deal_value(session, chain))
    total = rows[-1]
    return (f"{total.leads} open leads in {len(rows) - 1} months, deals p10/p50/p90 "
            f"{total.deals_p10}/{total.deals_p50}/{total.deals_p90}")


def run_bare(session) -> str:
    import sqlalchemy as sa

    rows = session.execute(sa.text("SELECT to_stage, count(*) FROM stage_change GROUP BY to_stage")).all()
    return f"{len(rows)} groups"


def parts(args) -> dict:
    return {"funnel": run_funnel, "plan": lambda session: run_plan(session, args.leads // 10), "forecast": run_forecast,
            "bare": run_bare}


def build_summaries(url: str) -> None:
    from sqlmodel import Session

    from nurture import db
    from nurture.analytics.journeys import refresh

    with Session(db.engine_for(url)) as session:
        started = time.perf_counter()
        refresh(session)
        session.commit()
    c.out(f"summaries: per-lead stage summaries brought up to date in {time.perf_counter() - started:.1f} s "
          "(once after setup, as the first scheduler tick after the upgrade does)")


def move_fresh_leads(url: str, count: int) -> None:
    """``count`` contacted leads move to engaged now: new stage changes for the next report to fold in."""
    import psycopg

    with psycopg.connect(url) as conn:
        conn.execute("WITH moved AS (UPDATE lead SET stage = 'engaged', stage_changed_at = %(at)s WHERE id IN "
                     "(SELECT id FROM lead WHERE stage = 'contacted' LIMIT %(count)s) RETURNING id) "
                     "INSERT INTO stage_change (lead_id, from_stage, to_stage, changed_at, reason, note, lost_reason) "
                     "SELECT id, 'contacted', 'engaged', %(at)s, 'rule', '', '' FROM moved", {"at": NOW, "count": count})


def timed(url: str, fn, fresh: int) -> tuple[float, str]:
    from sqlmodel import Session

    from nurture import db

    move_fresh_leads(url, fresh)
    with Session(db.engine_for(url), expire_on_commit=False) as session:
        session.connection().exec_driver_sql("SELECT 1")  # a pooled connection, as a running process has
        started = time.perf_counter()
        what = fn(session)
        session.commit()  # as the CLI does: what the report folded in stays folded
        return time.perf_counter() - started, what


def breakdown(url: str, measured: dict, fresh: int) -> None:
    from nurture import db

    for name, fn in measured.items():
        parts = c.Breakdown()
        with parts.sql(db.engine_for(url)):
            w0, c0 = time.perf_counter(), time.thread_time()
            timed(url, fn, fresh)
            wall, cpu = time.perf_counter() - w0, time.thread_time() - c0
        c.out(f"breakdown of {name} ({wall:.3f} s wall, {cpu:.3f} s CPU in this process):")
        rows = parts.rows()
        for label, calls, w, cp in rows:
            c.out(f"  {label:<34} {calls:>6} {w:>8.3f} {cp:>13.3f}")
        c.out(f"  {'Python outside SQL':<34} {'':>6} {wall - sum(r[2] for r in rows):>8.3f} "
              f"{cpu - sum(r[3] for r in rows):>13.3f}")


def main() -> None:
    args = parse_args()
    c.install_signal_handlers()
    c.warn_if_busy()
    from nurture import db

    scratch = None
    try:
        if args.reuse:
            url = c._with_dbname(args.pg_admin_url, args.reuse)
            c.out(f"funnel_scale: the database {args.reuse} as left by --keep, {args.repeat} runs of each part")
            db.upgrade(url)  # kept by an older nurture: brought to this schema
        else:
            scratch = c.PgScratch(args.pg_admin_url, f"nurture_bench_funnel_{os.getpid()}")
            url = scratch.url
            c.out(f"funnel_scale: {args.leads} leads, {args.repeat} runs of each part, PostgreSQL")
            setup(args, url)
        build_summaries(url)
        rss_setup = c.max_rss_mb()
        measured = parts(args)
        import nurture.analytics.forecast  # noqa: F401  loaded as in a running process: imports are not timed
        import nurture.analytics.funnel  # noqa: F401
        import nurture.conversion  # noqa: F401
        times: dict[str, list[float]] = {name: [] for name in measured}
        answers: dict[str, str] = {}
        with c.progress() as bar:
            task = bar.add_task("measuring (funnel, plan, forecast, bare GROUP BY, in turn)", total=len(measured) * args.repeat)
            for _ in range(args.repeat):
                for name, fn in measured.items():
                    elapsed, answers[name] = timed(url, fn, args.fresh)
                    times[name].append(elapsed)
                    bar.advance(task)
        if args.breakdown:
            breakdown(url, measured, args.fresh)
        bare = c.median(times["bare"])
        for name in measured:
            median = c.median(times[name])
            runs = ", ".join(f"{t:.3f}" for t in times[name])
            ratio = "" if name == "bare" else f"; {median / bare:.1f} x bare"
            c.out(f"{name}: median {median:.3f} s (runs: {runs}){ratio} -- {answers[name]}")
        c.out(f"each run first folded {args.fresh} new stage changes into the summaries")
        c.out(f"peak memory of this process (ru_maxrss): {c.max_rss_mb():.0f} MiB (after setup: {rss_setup:.0f} MiB)")
        slowest = max((n for n in measured if n != "bare"), key=lambda n: c.median(times[n]))
        c.out(f"slowest part: {slowest}")
        c.out(f"ratio: {c.median(times[slowest]) / bare:.2f}")
    finally:
        with c.no_interrupts():
            for key in list(db._engines):
                db._engines.pop(key).dispose()
            if scratch and args.keep:
                c.console.print(f"kept the database {scratch.name}: --reuse {scratch.name}; drop it when done")
            elif scratch:
                scratch.close()
                c.console.print("[dim]cleaned up: scratch database[/dim]")


if __name__ == "__main__":
    c.run(main)
