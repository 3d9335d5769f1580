"""The stage history summarised per lead, kept current incrementally, so reports read one row per lead.

Reports over the stage history (the funnel, time in stage, cycle times, the
learned stage probabilities) would otherwise group every ``stage_change`` row by
lead on each call: seconds at five million changes. Three tables hold what they
need instead:

- ``lead_journey``: per lead with history, its first change, the furthest stage
  of the path it moved to, and when it was first won;
- ``stage_stay``: per lead and open stage of the path, its completed first stay
  (from its first move in to its first move out) in 1/100 days;
- ``transition_tally``: over every change, the count per (previous stage by time,
  recorded ``from_stage``, ``to_stage``, lead won in the end): what
  ``nurture.conversion`` learns from.

``refresh(session)`` folds in the changes recorded since the last refresh
(``journey_state.through_id``): it recomputes the rows of the leads those changes
touch, and corrects the tally by those leads' contribution now minus their
contribution before. Stage changes are only ever inserted, so an id above the
mark is all that is new. When the pipeline's path or won stages change,
everything is rebuilt (once: about 18 s at five million changes on PostgreSQL).

Out-of-order commits: on PostgreSQL a change can become visible after one with a
larger id (two transactions committing out of order). A refresh therefore moves
the mark only while no other transaction is inserting stage changes: it waits a
quarter of a second for them, and otherwise leaves the tables as they are for
this report (they lag by what the last scheduler tick did not fold). With nothing
visible above the mark it returns at once, whatever is in flight. One refresh
runs at a time: a transaction-level advisory lock, which a refresh waits for, so
it then sees what the one before it committed. SQLite has one writer at a time
(nurture begins every transaction IMMEDIATE), so its mark is exact there.

Every report refreshes first, inside its own transaction. The scheduler
refreshes and commits every tick, and the CLI's reports and the dashboard
refresh and commit before they read, so the lock is held briefly and a report
folds in a few changes at most.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlmodel import Session

from ..db import is_postgresql
from ..models import JourneyState, Lead, LeadJourney, StageChange, StageStay, TransitionTally
from ..pipeline import PipelineConfig, stored_pipeline
from .chain import Chain
from .report_sql import tune_for_reports

STATE_KEY = "stage_history"
ADVISORY_LOCK = 0x6E75727475726501  # 'nurture' + 1: one refresh at a time per database
WRITERS_WAIT_SECONDS = 0.25
LISTED_LEADS = 5000  # a fold touching up to this many leads names them; more, and it selects them in SQL
BULK_KEYS = {"lead_journey": "lead_id", "stage_stay": "lead_id, stage"}  # primary keys, rebuilt after a bulk load
Transition = tuple[str, str, str, bool]  # previous ("" for none), from_stage ("" for none), to_stage, won


def fingerprint(config: PipelineConfig) -> str:
    """What the summaries depend on: the path's stages in order and the won stages."""
    return json.dumps({"path": list(config.chain), "won": sorted(s.key for s in config.stages if s.won)})


def refresh(session: Session, config: PipelineConfig | None = None, wait: bool = True) -> bool:
    """Fold the stage changes recorded since the last refresh into the summaries (in the session's transaction).

    Returns False when they were left as they are: other transactions kept inserting
    stage changes for ``WRITERS_WAIT_SECONDS``, or, with ``wait=False``, another
    refresh was running or any transaction was inserting. Work that holds lead rows
    (the event drainer) and the scheduler's tick, which comes back soon, do not wait:
    a refresh they waited for might itself be waiting for their rows.
    """
    config = config or stored_pipeline(session)
    tune_for_reports(session)
    postgresql = is_postgresql(session)
    if postgresql and not _lock(session, wait):
        return False
    state = session.get(JourneyState, STATE_KEY, populate_existing=True)  # not a copy from earlier in the session
    wanted = fingerprint(config)
    top = _top(session)
    if state is not None and state.fingerprint == wanted and top <= state.through_id:
        return True  # every id up to the mark was committed when the mark was set: nothing can be missing
    if postgresql:
        deadline = time.monotonic() + (WRITERS_WAIT_SECONDS if wait else 0.0)
        while _others_inserting(session):  # checked after reading the top: see the module docstring
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
            top = _top(session)
    if state is None or state.fingerprint != wanted:
        _rebuild(session, config, top)
        state = state or JourneyState(key=STATE_KEY)
        state.fingerprint = wanted
    else:
        _fold(session, config, state.through_id, top)
    state.through_id, state.refreshed_at = top, datetime.now(timezone.utc)
    session.add(state)
    session.flush()
    return True


def _lock(session: Session, wait: bool) -> bool:
    """PostgreSQL: the one-refresh-at-a-time lock, to the end of the transaction; waiting for it sees what the
    refresh before committed."""
    if wait:
        session.execute(sa.select(sa.func.pg_advisory_xact_lock(ADVISORY_LOCK)))
        return True
    return session.execute(sa.select(sa.func.pg_try_advisory_xact_lock(ADVISORY_LOCK))).scalar_one()


def _top(session: Session) -> int:
    return session.execute(sa.select(sa.func.max(StageChange.id))).scalar_one() or 0


def backlog(session: Session) -> tuple[int, datetime | None]:
    """How many stage changes the summaries have not folded in yet, and when they were last brought up to date."""
    state = session.get(JourneyState, STATE_KEY, populate_existing=True)
    mark = state.through_id if state else 0
    pending = session.execute(sa.select(sa.func.count()).select_from(StageChange).where(StageChange.id > mark)).scalar_one()
    return pending, state.refreshed_at if state else None


def _others_inserting(session: Session) -> bool:
    """PostgreSQL: another transaction holds the lock that inserting into ``stage_change`` takes."""
    return bool(session.execute(sa.text(
        "SELECT 1 FROM pg_locks WHERE locktype = 'relation' AND relation = 'stage_change'::regclass "
        "AND mode = 'RowExclusiveLock' AND pid <> pg_backend_pid() LIMIT 1")).first())


def _rebuild(session: Session, config: PipelineConfig, top: int) -> None:
    for table in (LeadJourney, StageStay, TransitionTally):
        session.execute(sa.delete(table))
    scope = [StageChange.id <= top]
    if is_postgresql(session):  # a bulk load then a sorted index build: 18 s instead of 43 s at 5M changes
        for table in BULK_KEYS:
            session.execute(sa.text(f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey"))
        _insert_summaries(session, config, scope)
        for table, columns in BULK_KEYS.items():
            session.execute(sa.text(f"ALTER TABLE {table} ADD PRIMARY KEY ({columns})"))
        session.execute(sa.text(f"ANALYZE {', '.join(BULK_KEYS)}"))  # the planner's figures for the new rows
    else:
        _insert_summaries(session, config, scope)
    _write_tally(session, _transitions(session, config, scope))


def _fold(session: Session, config: PipelineConfig, mark: int, top: int) -> None:
    touched = sa.select(StageChange.lead_id).where(StageChange.id > mark, StageChange.id <= top).distinct()
    ids = session.execute(touched.limit(LISTED_LEADS + 1)).scalars().all()
    if len(ids) <= LISTED_LEADS:  # a list lets the database use the lead_id indexes; a subquery made it scan
        touched = ids
    before = _transitions(session, config, [StageChange.lead_id.in_(touched), StageChange.id <= mark])
    after = _transitions(session, config, [StageChange.lead_id.in_(touched), StageChange.id <= top])
    tally = _read_tally(session)
    tally.update(after)
    tally.subtract(before)
    for table in (LeadJourney, StageStay):
        session.execute(sa.delete(table).where(table.lead_id.in_(touched)))
    _insert_summaries(session, config, [StageChange.lead_id.in_(touched), StageChange.id <= top])
    session.execute(sa.delete(TransitionTally))
    _write_tally(session, tally)


def _insert_summaries(session: Session, config: PipelineConfig, scope: list) -> None:
    """``lead_journey`` and ``stage_stay`` rows for the leads of the changes in ``scope``."""
    chain = Chain.from_config(config)
    journeys = (sa.select(StageChange.lead_id, sa.func.min(StageChange.changed_at),
                          sa.func.max(chain.position(StageChange.to_stage)),
                          sa.func.min(sa.case((StageChange.to_stage == chain.won, StageChange.changed_at))))
                .where(*scope).group_by(StageChange.lead_id))
    session.execute(sa.insert(LeadJourney).from_select(["lead_id", "first_at", "reached", "won_at"], journeys))
    open_stages = chain.keys[:-1]
    moves = []
    for i, key in enumerate(open_stages):
        moves.append(sa.func.min(sa.case((StageChange.to_stage == key, StageChange.changed_at))).label(f"in{i}"))
        moves.append(sa.func.min(sa.case((sa.and_(StageChange.from_stage == key, StageChange.to_stage != key),
                                          StageChange.changed_at))).label(f"out{i}"))
    per_lead = sa.select(StageChange.lead_id, *moves).where(*scope).group_by(StageChange.lead_id).cte("per_lead")
    branches = []
    for i, key in enumerate(open_stages):
        entered = per_lead.c[f"in{i}"] if i else sa.func.coalesce(per_lead.c.in0, Lead.created_at)
        left = per_lead.c[f"out{i}"]
        source = sa.join(per_lead, Lead.__table__, Lead.id == per_lead.c.lead_id) if i == 0 else per_lead
        branches.append(sa.select(per_lead.c.lead_id, sa.literal(key), hundredths_of_a_day(session, entered, left))
                        .select_from(source).where(left.is_not(None), entered.is_not(None), left >= entered))
    session.execute(sa.insert(StageStay).from_select(["lead_id", "stage", "hundredths"], sa.union_all(*branches)))


def hundredths_of_a_day(session: Session, start, end) -> sa.ColumnElement:
    """SQL: whole 1/100 days from ``start`` to ``end`` (rounded down)."""
    if is_postgresql(session):
        return sa.cast(sa.func.floor(sa.extract("epoch", end - start) / 864.0), sa.Integer)
    # julianday is a float good to about 50 microseconds: rounded to whole milliseconds first, then
    # integer division (exact, rounding down) as PostgreSQL's floor. A float guard instead missed by 1e-8.
    milliseconds = sa.cast(sa.func.round((sa.func.julianday(end) - sa.func.julianday(start)) * 86_400_000), sa.Integer)
    return milliseconds // 864_000


def _transitions(session: Session, config: PipelineConfig, scope: list) -> Counter[Transition]:
    """The tally of the changes in ``scope``: a window (``LAG``) pairs each with the lead's previous one by time."""
    won_stages = [s.key for s in config.stages if s.won]
    change = StageChange.__table__.c
    # One window for both: PostgreSQL then evaluates them in a single pass over the sorted
    # rows (two window definitions cost two passes: twice the time at 5M changes).
    lead_by_time = {"partition_by": change.lead_id, "order_by": (change.changed_at, change.id), "rows": (None, None)}
    ordered = sa.select(
        sa.func.lag(change.to_stage).over(**lead_by_time).label("previous"),
        change.from_stage, change.to_stage,
        sa.func.max(sa.case((change.to_stage.in_(won_stages), 1), else_=0)).over(**lead_by_time).label("won"),
    ).where(*scope).subquery()
    rows = session.execute(
        sa.select(ordered.c.previous, ordered.c.from_stage, ordered.c.to_stage, ordered.c.won, sa.func.count())
        .group_by(ordered.c.previous, ordered.c.from_stage, ordered.c.to_stage, ordered.c.won)).all()
    return Counter({(previous or "", origin or "", to, bool(won)): count for previous, origin, to, won, count in rows})


def _read_tally(session: Session) -> Counter[Transition]:
    rows = session.execute(sa.select(TransitionTally.previous, TransitionTally.from_stage, TransitionTally.to_stage,
                                     TransitionTally.won, TransitionTally.changes)).all()
    return Counter({(previous, origin, to, won): n for previous, origin, to, won, n in rows})


def _write_tally(session: Session, tally: Counter[Transition]) -> None:
    rows = [{"previous": previous, "from_stage": origin, "to_stage": to, "won": won, "changes": n}
            for (previous, origin, to, won), n in tally.items() if n]
    if rows:
        session.execute(sa.insert(TransitionTally), rows)


def transition_counts(session: Session, config: PipelineConfig,
                      wait: bool = True) -> list[tuple[str | None, str | None, str, bool, int]]:
    """(previous stage by time, recorded from_stage, to_stage, lead won in the end, count) over the whole history."""
    refresh(session, config, wait)
    tally = _read_tally(session)
    return [(previous or None, origin or None, to, won, n) for (previous, origin, to, won), n in tally.items()]
