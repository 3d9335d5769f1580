"""Funnel: conversion by entry cohort, drop-off, time in stage, by owner / source / sequence."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlmodel import Session

from nurture.analytics.chain import AnalyticsError, load_chain
from nurture.analytics.funnel import funnel, time_in_stage
from nurture.models import Enrollment, Sequence, User
from pipeline_history import PATH, add_lead, simulate

MON = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)  # a Monday


def day(n: float) -> datetime:
    return MON + timedelta(days=n)


def five_leads(s: Session) -> None:
    """A won, B lost at contacted, C still at contacted, D never moved, E skipped to qualified then cooled."""
    add_lead(s, "a@example.com", [("new", day(0)), ("contacted", day(1)), ("engaged", day(3)), ("won", day(10))],
             source="webinar")
    add_lead(s, "b@example.com", [("new", day(0)), ("contacted", day(2)), ("lost", day(5))], source="webinar")
    add_lead(s, "c@example.com", [("new", day(1)), ("contacted", day(4))], source="ads")
    add_lead(s, "d@example.com", [], created_at=day(2), source="")
    add_lead(s, "e@example.com", [("new", day(8)), ("contacted", day(9)), ("qualified", day(12)), ("cold", day(30))],
             source="ads")


def test_hand_computed_conversion_drop_off_and_stalls(session):
    five_leads(session)
    result = funnel(session, load_chain(session))
    assert result.stages == list(PATH)
    [row] = result.rows
    got = {f.stage: (f.reached, f.advanced, f.dropped, f.stalled) for f in row.stages}
    assert got == {"new": (5, 4, 0, 1), "contacted": (4, 2, 1, 1), "engaged": (2, 2, 0, 0),
                   "qualified": (2, 1, 1, 0), "proposal": (1, 1, 0, 0), "negotiation": (1, 1, 0, 0),
                   "won": (1, None, 0, 0)}
    assert row.figures("contacted").conversion == 0.5
    assert row.figures("won").conversion is None
    assert result.time_in_stage and funnel(session, load_chain(session), stage_times=False).time_in_stage == []


def test_cohorts_by_week_and_month_start_on_monday_and_the_first(session):
    five_leads(session)
    weekly = funnel(session, load_chain(session), by="week")
    assert [(r.cohort, r.leads) for r in weekly.rows] == [("2026-03-02", 4), ("2026-03-09", 1)]
    assert weekly.rows[1].figures("qualified").reached == 1
    monthly = funnel(session, load_chain(session), by="month")
    assert [(r.cohort, r.leads) for r in monthly.rows] == [("2026-03-01", 5)]


def test_grouped_by_source_owner_and_sequence(session):
    anna = User(email="anna@example.com", name="Анна", created_at=MON)
    session.add(anna)
    session.commit()
    five_leads(session)
    add_lead(session, "f@example.com", [("new", day(0)), ("contacted", day(1))], source="webinar", owner_id=anna.id)
    by_source = {r.group["source"]: r.leads for r in funnel(session, load_chain(session), group_by=("source",)).rows}
    assert by_source == {"(none)": 1, "ads": 2, "webinar": 3}
    by_owner = {r.group["owner"]: r.leads for r in funnel(session, load_chain(session), group_by=("owner",)).rows}
    assert by_owner == {"(none)": 5, "anna@example.com": 1}
    seq = Sequence(key="webinar-follow-up", name="Вебинар", created_at=MON, updated_at=MON)
    session.add(seq)
    session.flush()
    for lead_id in (1, 2, 2):  # lead 2 enrolled twice in the same sequence counts once
        session.add(Enrollment(lead_id=lead_id, sequence_id=seq.id, status="completed", started_at=MON))
    session.commit()
    by_sequence = funnel(session, load_chain(session), group_by=("sequence",))
    counts = {r.group["sequence"]: r.leads for r in by_sequence.rows}
    assert counts == {"(none)": 4, "webinar-follow-up": 2}
    assert by_sequence.rows[1].figures("won").reached == 1


def test_time_in_stage_counts_completed_stays_only(session):
    five_leads(session)
    times = {t.stage: t for t in time_in_stage(session, load_chain(session))}
    # contacted stays: A 2 days, B 3 days, E 3 days; C's stay is still open
    assert times["contacted"].stays == 3
    assert times["contacted"].median_days == pytest.approx(3.0)
    assert times["contacted"].p90_days == pytest.approx(3.0)
    # new stays: 1, 2, 3, 1 -> median 1.5, p90 (linear) 2.7
    assert times["new"].median_days == pytest.approx(1.5)
    assert times["new"].p90_days == pytest.approx(2.7)
    assert "won" not in times


def test_simulated_conversions_are_recovered(session):
    truth = {"new": 0.6, "contacted": 0.5, "engaged": 0.6, "qualified": 0.7, "proposal": 0.6, "negotiation": 0.8}
    reached = simulate(session, truth, 400, MON - timedelta(days=200))
    [row] = funnel(session, load_chain(session)).rows
    assert {f.stage: f.reached for f in row.stages} == reached
    assert row.figures("new").conversion == pytest.approx(0.6, abs=0.06)


def test_bad_options_are_named(session):
    chain = load_chain(session)
    with pytest.raises(AnalyticsError, match="cohort 'day': use one of week, month"):
        funnel(session, chain, by="day")
    with pytest.raises(AnalyticsError, match="cannot group by colour"):
        funnel(session, chain, group_by=("colour",))
