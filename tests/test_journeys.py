"""journeys: the per-lead summaries of the stage history, kept current incrementally.

The summaries (``lead_journey``, ``stage_stay``, ``transition_tally``) folded in batch
by batch must equal a full rebuild and a plain-Python reading of the raw
``stage_change`` rows, including changes imported out of time order; a pipeline
change rebuilds them; a refresh with nothing new writes nothing; and on PostgreSQL
the mark never moves past a stage change another transaction has not committed yet,
and one refresh runs at a time.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from nurture import db
from nurture.analytics import journeys
from nurture.analytics.backwards_plan import cycle_times
from nurture.analytics.chain import load_chain
from nurture.analytics.funnel import funnel, time_in_stage
from nurture.conversion import stage_probabilities
from nurture.models import JourneyState, Lead, LeadJourney, StageChange, StageStay, TransitionTally
from nurture.pipeline import PipelineConfig, default_pipeline, parse_pipeline, stored_pipeline, sync_pipeline

from conftest import BACKEND, wait_until
from pipeline_history import PATH, add_lead, simulate

START = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)  # a Monday
CONVERSIONS = {"new": 0.9, "contacted": 0.75, "engaged": 0.7, "qualified": 0.7, "proposal": 0.7, "negotiation": 0.6}
postgresql_only = pytest.mark.skipif(BACKEND != "postgresql", reason="concurrent transactions are PostgreSQL's; "
                                     "SQLite has one writer at a time")


def day(n: float) -> datetime:
    return START + timedelta(days=n)


# --- reading the summaries and what they should be ------------------------------------------------

def summaries(s: Session) -> dict[str, list[tuple]]:
    """The three tables' rows, sorted."""
    return {
        "lead_journey": sorted(tuple(r) for r in s.execute(sa.select(
            LeadJourney.lead_id, LeadJourney.first_at, LeadJourney.reached, LeadJourney.won_at))),
        "stage_stay": sorted(tuple(r) for r in s.execute(sa.select(
            StageStay.lead_id, StageStay.stage, StageStay.hundredths))),
        "transition_tally": sorted((previous, origin, to, bool(won), n) for previous, origin, to, won, n in s.execute(
            sa.select(TransitionTally.previous, TransitionTally.from_stage, TransitionTally.to_stage,
                      TransitionTally.won, TransitionTally.changes))),
    }


def expected(s: Session, config: PipelineConfig) -> dict[str, list[tuple]]:
    """The same three tables computed in Python from every ``stage_change`` row, as journeys.py documents them."""
    chain = config.chain
    position = {key: i for i, key in enumerate(chain)}
    won_stages = {stage.key for stage in config.stages if stage.won}
    created = dict(s.execute(sa.select(Lead.id, Lead.created_at)).all())
    history = defaultdict(list)
    for change in s.execute(sa.select(StageChange.id, StageChange.lead_id, StageChange.from_stage,
                                      StageChange.to_stage, StageChange.changed_at)):
        history[change.lead_id].append(change)
    lead_rows, stay_rows, tally = [], [], Counter()
    for lead_id, changes in history.items():
        changes.sort(key=lambda c: (c.changed_at, c.id))
        lead_rows.append((lead_id, changes[0].changed_at,
                          max((position[c.to_stage] for c in changes if c.to_stage in position), default=None),
                          min((c.changed_at for c in changes if c.to_stage == chain[-1]), default=None)))
        for i, key in enumerate(chain[:-1]):
            entered = min((c.changed_at for c in changes if c.to_stage == key),
                          default=created[lead_id] if i == 0 else None)
            left = min((c.changed_at for c in changes if c.from_stage == key and c.to_stage != key), default=None)
            if entered is not None and left is not None and left >= entered:
                stay_rows.append((lead_id, key, (left - entered) // timedelta(seconds=864)))
        won = any(c.to_stage in won_stages for c in changes)
        previous = ""
        for c in changes:
            tally[(previous, c.from_stage or "", c.to_stage, won)] += 1
            previous = c.to_stage
    return {"lead_journey": sorted(lead_rows), "stage_stay": sorted(stay_rows),
            "transition_tally": sorted(key + (n,) for key, n in tally.items())}


def state(s: Session) -> tuple[int, str, datetime] | None:
    """(through_id, fingerprint, refreshed_at) of the mark, as committed or written in this transaction."""
    row = s.execute(sa.select(JourneyState.through_id, JourneyState.fingerprint, JourneyState.refreshed_at)
                    .where(JourneyState.key == journeys.STATE_KEY)).one_or_none()
    return tuple(row) if row else None


def top_id(s: Session) -> int:
    return s.execute(sa.select(sa.func.max(StageChange.id))).scalar_one() or 0


def refreshed(s: Session, config: PipelineConfig | None = None) -> None:
    """Refresh and commit, as the scheduler's tick does."""
    assert journeys.refresh(s, config) is True
    s.commit()


def reports(s: Session) -> dict:
    """Everything the reports read from the summaries (each refreshes first)."""
    chain = load_chain(s)
    return {"funnel": funnel(s, chain).as_dict(), "weekly": funnel(s, chain, by="week").as_dict(),
            "probabilities": {key: p.as_dict() for key, p in stage_probabilities(s).items()},
            "cycle_times": sorted(cycle_times(s, chain))}


# --- growing a history ----------------------------------------------------------------------------

def move(s: Session, lead: Lead, changes: list[tuple[str, datetime]]) -> None:
    """Further stage changes of an existing lead, recorded as a rep or a rule would (from where it is)."""
    previous = lead.stage
    for to_stage, when in changes:
        s.add(StageChange(lead_id=lead.id, from_stage=previous, to_stage=to_stage, changed_at=when, reason="manual"))
        previous = to_stage
    lead.stage, lead.stage_changed_at = previous, changes[-1][1]
    s.add(lead)


def last_changes(s: Session) -> dict[int, datetime]:
    return dict(s.execute(sa.select(StageChange.lead_id, sa.func.max(StageChange.changed_at))
                          .group_by(StageChange.lead_id)).all())


def advance(s: Session, rng: random.Random, count: int) -> int:
    """Move up to ``count`` open or cold leads on: forward one or two stages, lost, cold, or back from cold."""
    last = last_changes(s)
    leads = [lead for lead in s.exec(select(Lead).order_by(Lead.id)) if lead.stage in PATH[:-1] + ("cold",)]
    moved = rng.sample(leads, min(count, len(leads)))
    for lead in moved:
        if lead.stage == "cold":
            target = rng.choice(("engaged", "archived"))
        else:
            i = PATH.index(lead.stage)
            target = rng.choice((PATH[i + 1], PATH[min(i + 2, len(PATH) - 1)], "lost", "cold"))
        when = last.get(lead.id, lead.created_at) + timedelta(days=rng.uniform(0.5, 9))
        move(s, lead, [(target, when)])
    return len(moved)


def open_leads(s: Session, rng: random.Random, count: int, prefix: str, start: datetime) -> None:
    """``count`` leads still open somewhere along the path (``simulate``'s all end won or lost)."""
    for i in range(count):
        when = start + timedelta(days=rng.uniform(0, 30))
        changes = [("new", when)]
        for stage in PATH[1:rng.randrange(1, len(PATH) - 1)]:
            when += timedelta(days=rng.expovariate(1 / 5))
            changes.append((stage, when))
        add_lead(s, f"{prefix}{i}@example.com", changes, commit=False)


def import_out_of_order(s: Session, rng: random.Random, count: int) -> None:
    """Imported history landing among what is recorded: before a lead's first change, between, or tied with its last."""
    last = last_changes(s)
    first = dict(s.execute(sa.select(StageChange.lead_id, sa.func.min(StageChange.changed_at))
                           .group_by(StageChange.lead_id)).all())
    for n, lead_id in enumerate(rng.sample(sorted(last), count)):
        earliest, latest = first[lead_id], last[lead_id]
        when = (earliest - timedelta(days=rng.uniform(1, 20)), earliest + (latest - earliest) / 2, latest)[n % 3]
        s.add(StageChange(lead_id=lead_id, from_stage=rng.choice((None,) + PATH), to_stage=rng.choice(PATH),
                          changed_at=when, reason="import"))


def grow(s: Session, rng: random.Random, batch: int) -> None:
    """Batch ``batch`` of a history: new leads, existing leads moving on, out-of-order imports, in turn."""
    if batch == 0:
        simulate(s, CONVERSIONS, 30, START, seed=11, prefix="a")
        open_leads(s, rng, 25, "open-a", START)
        add_lead(s, "quiet@example.com", [], created_at=day(3))  # never moved
        add_lead(s, "archived@example.com", [("archived", day(4))])  # only ever off the path
    elif batch == 1:
        assert advance(s, rng, 15) == 15
    elif batch == 2:
        simulate(s, CONVERSIONS, 30, START + timedelta(days=30), seed=12, prefix="b")
        open_leads(s, rng, 15, "open-b", START + timedelta(days=30))
        advance(s, rng, 12)
    else:
        import_out_of_order(s, rng, 9)
        advance(s, rng, 10)
    s.commit()


# --- the tests -------------------------------------------------------------------------------------

@pytest.mark.parametrize("listed", [journeys.LISTED_LEADS, 2], ids=["leads-listed", "leads-selected"])
def test_folding_batch_by_batch_equals_a_rebuild_and_the_raw_history(session, monkeypatch, listed):
    monkeypatch.setattr(journeys, "LISTED_LEADS", listed)  # 2: every fold touches more, and selects them in SQL
    config = stored_pipeline(session)
    rng = random.Random(5)
    marks = []
    for batch in range(5):
        grow(session, rng, batch)
        refreshed(session)
        assert summaries(session) == expected(session, config), f"after batch {batch}"
        marks.append(state(session)[0])
    assert marks == sorted(set(marks)) and marks[-1] == top_id(session)  # each batch was a fold of its own
    folded, folded_reports = summaries(session), reports(session)
    assert folded["stage_stay"] and any(won for *_, won, _ in folded["transition_tally"])

    through_id, fingerprint, refreshed_at = state(session)
    session.execute(sa.update(JourneyState).values(fingerprint=""))
    session.commit()
    refreshed(session)
    assert state(session)[:2] == (through_id, fingerprint) and state(session)[2] != refreshed_at  # rebuilt
    assert summaries(session) == folded
    assert reports(session) == folded_reports


def test_the_tally_counts_every_change_once(session):
    grow(session, random.Random(8), 0)
    refreshed(session)
    grow(session, random.Random(9), 1)
    grow(session, random.Random(10), 3)
    refreshed(session)
    tally = summaries(session)["transition_tally"]
    assert all(n > 0 for *_, n in tally)
    changes = session.execute(sa.select(sa.func.count()).select_from(StageChange)).scalar_one()
    assert sum(n for *_, n in tally) == changes
    per_stage = Counter()
    for _, _, to, _, n in tally:
        per_stage[to] += n
    direct = dict(session.execute(sa.select(StageChange.to_stage, sa.func.count())
                                  .group_by(StageChange.to_stage)).all())
    assert dict(per_stage) == direct
    firsts = sum(n for previous, *_, n in tally if previous == "")
    assert firsts == session.execute(sa.select(sa.func.count(sa.distinct(StageChange.lead_id)))).scalar_one()


def test_a_change_imported_before_later_ones_is_folded_in_time_order(session):
    x = add_lead(session, "x@example.com", [("new", day(0)), ("contacted", day(1)), ("engaged", day(5))])
    y = add_lead(session, "y@example.com", [("new", day(2)), ("contacted", day(4))])
    refreshed(session)
    assert ("contacted", "contacted", "engaged", False, 1) in summaries(session)["transition_tally"]

    session.add(StageChange(lead_id=x.id, from_stage="contacted", to_stage="qualified", changed_at=day(3),
                            reason="import"))
    session.add(StageChange(lead_id=y.id, from_stage=None, to_stage="new", changed_at=day(-3), reason="import"))
    session.commit()
    refreshed(session)
    folded = summaries(session)
    assert folded == {
        "lead_journey": [(x.id, day(0), 3, None), (y.id, day(-3), 1, None)],
        "stage_stay": [(x.id, "contacted", 200), (x.id, "new", 100), (y.id, "new", 700)],
        "transition_tally": [("", "", "new", False, 2),
                             ("contacted", "contacted", "qualified", False, 1),
                             ("new", "", "new", False, 1),
                             ("new", "new", "contacted", False, 2),
                             ("qualified", "contacted", "engaged", False, 1)],
    }

    session.add(StageChange(lead_id=x.id, from_stage="qualified", to_stage="won", changed_at=day(4), reason="import"))
    session.commit()
    refreshed(session)  # won between two recorded changes: every one of x's changes now counts as won
    tally = summaries(session)["transition_tally"]
    assert {("", "", "new", True, 1), ("", "", "new", False, 1), ("won", "contacted", "engaged", True, 1)} <= set(tally)
    assert summaries(session) == expected(session, stored_pipeline(session))
    session.execute(sa.update(JourneyState).values(fingerprint=""))
    session.commit()
    folded = summaries(session)
    refreshed(session)
    assert summaries(session) == folded


def dropped_negotiation() -> PipelineConfig:
    """The shipped pipeline with negotiation taken off the path (proposal -> won; negotiation a terminal stage)."""
    document = default_pipeline().model_dump(mode="json")
    for stage in document["stages"]:
        if stage["key"] == "proposal":
            stage["next"] = "won"
        elif stage["key"] == "negotiation":
            stage["next"], stage["terminal"] = None, True
    return parse_pipeline(document, "test pipeline")


def test_a_new_pipeline_path_rebuilds_the_summaries(session):
    simulate(session, CONVERSIONS, 60, START, seed=3)
    refreshed(session)
    shipped = stored_pipeline(session)
    before = summaries(session)
    assert state(session)[1] == journeys.fingerprint(shipped)
    assert any(stage == "negotiation" for _, stage, _ in before["stage_stay"])

    changed = dropped_negotiation()
    sync_pipeline(session, changed, day(100))
    session.commit()
    assert stored_pipeline(session).chain == ["new", "contacted", "engaged", "qualified", "proposal", "won"]
    refreshed(session)
    assert state(session)[:2] == (top_id(session), journeys.fingerprint(changed))
    rebuilt = summaries(session)
    assert rebuilt == expected(session, changed) != before
    assert not any(stage == "negotiation" for _, stage, _ in rebuilt["stage_stay"])
    assert max(reached for _, _, reached, _ in rebuilt["lead_journey"]) == 5  # won is fifth on the shorter path
    assert funnel(session, load_chain(session)).stages == changed.chain

    advance(session, random.Random(4), 10)  # folding goes on under the new path
    session.commit()
    refreshed(session)
    assert summaries(session) == expected(session, changed)

    sync_pipeline(session, shipped, day(101))
    session.commit()
    refreshed(session)
    assert state(session)[1] == journeys.fingerprint(shipped)
    assert summaries(session) == expected(session, shipped)


def test_nothing_new_writes_nothing(session):
    assert journeys.refresh(session) is True  # an empty history: the mark at 0
    session.commit()
    assert state(session)[:2] == (0, journeys.fingerprint(stored_pipeline(session)))
    simulate(session, CONVERSIONS, 10, START)
    refreshed(session)
    mark = state(session)
    assert mark[0] == top_id(session) > 0
    session.commit()

    if BACKEND == "sqlite":
        written = session.execute(sa.text("SELECT total_changes()")).scalar_one()
    assert journeys.refresh(session) is True
    if BACKEND == "sqlite":
        assert session.execute(sa.text("SELECT total_changes()")).scalar_one() == written
    else:  # a transaction gets an id with its first write
        assert session.execute(sa.text("SELECT pg_current_xact_id_if_assigned()")).scalar_one() is None
    session.commit()
    assert state(session) == mark


def test_the_funnel_and_cycle_times_follow_later_moves_of_a_lead(session):
    chain = load_chain(session)
    lead = add_lead(session, "late@example.com", [("new", day(0)), ("contacted", day(1))])
    add_lead(session, "still@example.com", [("new", day(0))])
    refreshed(session)
    [row] = funnel(session, chain).rows
    assert {f.stage: f.reached for f in row.stages} == {"new": 2, "contacted": 1, "engaged": 0, "qualified": 0,
                                                        "proposal": 0, "negotiation": 0, "won": 0}
    assert cycle_times(session, chain) == []
    session.commit()

    move(session, lead, [("engaged", day(3)), ("won", day(10))])  # skips qualified..negotiation
    session.commit()
    [row] = funnel(session, chain).rows
    assert {f.stage: f.reached for f in row.stages} == {"new": 2, "contacted": 1, "engaged": 1, "qualified": 1,
                                                        "proposal": 1, "negotiation": 1, "won": 1}
    assert row.figures("new").conversion == 0.5 and row.figures("contacted").conversion == 1.0
    assert cycle_times(session, chain) == [10.0]
    times = {t.stage: (t.stays, t.median_days) for t in time_in_stage(session, chain)}
    assert times == {"new": (1, 1.0), "contacted": (1, 2.0), "engaged": (1, 7.0)}
    probabilities = stage_probabilities(session)
    assert (probabilities["engaged"].exits, probabilities["engaged"].won) == (1, 1)
    assert state(session)[0] == top_id(session)


def test_a_stay_of_an_exact_number_of_hundredths_counts_them_all(session):
    # 8.59 days (742 176 s) to the second. PostgreSQL computes it exactly. Fails on SQLite (a bug in
    # journeys.hundredths_of_a_day): the julianday difference is 858.99999998 (1.5e-8 below 859),
    # more than the 1e-9 added before the CAST, which truncates it to 858.
    entered = datetime(2026, 10, 22, 20, 32, 26, tzinfo=timezone.utc)
    left = entered + timedelta(seconds=859 * 864)
    lead = add_lead(session, "exact@example.com", [("new", entered), ("contacted", left)])
    refreshed(session)
    assert summaries(session)["stage_stay"] == [(lead.id, "new", 859)]


# --- PostgreSQL: other transactions ----------------------------------------------------------------

@postgresql_only
def test_the_mark_waits_for_a_stage_change_not_yet_committed(database_url, session, monkeypatch):
    monkeypatch.setattr(journeys, "WRITERS_WAIT_SECONDS", 0.2)
    engine = db.engine_for(database_url)
    x = add_lead(session, "x@example.com", [("new", day(0))])
    y = add_lead(session, "y@example.com", [("new", day(0))])
    refreshed(session)
    mark = state(session)
    with Session(engine) as slow, Session(engine) as quick:
        early = StageChange(lead_id=x.id, from_stage="new", to_stage="contacted", changed_at=day(1), reason="manual")
        slow.add(early)
        slow.flush()  # not committed
        started = time.monotonic()
        assert journeys.refresh(session) is True  # nothing visible above the mark: no need to wait for writers
        assert time.monotonic() - started < 0.2
        late = StageChange(lead_id=y.id, from_stage="new", to_stage="contacted", changed_at=day(1), reason="manual")
        quick.add(late)
        quick.flush()
        assert late.id > early.id
        quick.commit()  # the larger id is visible first
        assert top_id(session) == late.id

        started = time.monotonic()
        assert journeys.refresh(session) is False
        assert 0.2 <= time.monotonic() - started < 1.0
        started = time.monotonic()
        assert journeys.refresh(session, wait=False) is False  # the scheduler's tick waits for no one
        assert time.monotonic() - started < 0.2
        assert state(session) == mark
        session.commit()
        slow.commit()
    refreshed(session)
    assert state(session)[0] == late.id
    assert summaries(session) == expected(session, stored_pipeline(session))
    assert sum(n for *_, n in summaries(session)["transition_tally"]) == 4  # the early change too


@postgresql_only
def test_one_refresh_at_a_time(database_url, session):
    engine = db.engine_for(database_url)
    simulate(session, CONVERSIONS, 20, START)
    with Session(engine, expire_on_commit=False) as first:
        assert journeys.refresh(first) is True  # builds the summaries; holds the lock until it commits
        built = state(first)

        session.execute(sa.text("SET LOCAL lock_timeout = '5s'"))  # a refresh that ran anyway fails, not hangs
        started = time.monotonic()
        assert journeys.refresh(session, wait=False) is False
        assert time.monotonic() - started < 0.5
        assert state(session) is None  # the first refresh's work is not committed yet
        session.rollback()

        outcome = {}

        def waiting_refresh() -> None:
            with Session(engine) as s:
                outcome["refreshed"] = journeys.refresh(s)
                outcome["state"] = state(s)
                s.commit()

        waiter = threading.Thread(target=waiting_refresh)
        waiter.start()
        wait_until(lambda: session.execute(sa.text(
            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")).first(),
            what="the second refresh to wait for the lock")
        session.rollback()
        assert waiter.is_alive()
        first.commit()
    waiter.join(10)
    assert not waiter.is_alive()
    assert outcome == {"refreshed": True, "state": built}  # it found the tables built: nothing left to do
    assert summaries(session) == expected(session, stored_pipeline(session))
