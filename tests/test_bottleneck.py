"""The bottleneck: the step furthest below plan (or its trailing average) and its cost per month."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from nurture.analytics.bottleneck import DAYS_PER_MONTH, assess, bottleneck, exits
from nurture.analytics.chain import load_chain
from nurture.models import Plan
from pipeline_history import add_lead

NOW = datetime(2026, 3, 30, 9, 0, tzinfo=timezone.utc)


def test_hand_computed_shortfall_and_cost(session):
    chain = load_chain(session)
    recent = exits([("new", "contacted", 40), ("new", "lost", 10),  # new: 40 of 50 -> 0.8
                    ("contacted", "engaged", 3), ("contacted", "cold", 17),  # contacted: 3 of 20 -> 0.15
                    ("engaged", "proposal", 6), ("engaged", "lost", 4),  # a skip counts as advancing: 0.6
                    (None, "new", 99), ("won", "won", 1)], chain)  # entries and repeats are not exits
    assert recent == {"new": (40, 50), "contacted": (3, 20), "engaged": (6, 10)}
    plan_rates = {"new": 0.7, "contacted": 0.5, "engaged": 0.5}
    result = assess(chain, recent, plan_rates, "plan", {"engaged": 0.2, "contacted": 0.1, "qualified": 0.4}, 28, 7)
    worst = result.worst
    assert (worst.stage, worst.next_stage, worst.recent, worst.reference, worst.gap) == (
        "contacted", "engaged", 0.15, 0.5, 0.35)
    assert worst.deals_per_month == pytest.approx(round(0.35 * 20 * DAYS_PER_MONTH / 28 * 0.2, 2))
    steps = {s.stage: s for s in result.steps}
    assert steps["new"].gap == -0.1 and steps["new"].deals_per_month == 0.0  # above plan costs nothing
    assert steps["qualified"].recent is None  # nobody left it
    assert result.sentence().startswith("Bottleneck: contacted -> engaged converts 15% against 50% (plan), about")


def test_too_few_moves_or_all_above_reference_names_no_bottleneck(session):
    chain = load_chain(session)
    few = assess(chain, {"contacted": (1, 5)}, {"contacted": 0.9}, "plan", {}, 28)
    assert few.worst is None and "too little movement" in few.sentence()
    fine = assess(chain, {"contacted": (15, 20)}, {"contacted": 0.5}, "plan", {}, 28)
    assert fine.worst is None and fine.sentence() == "No bottleneck: every step is at or above its plan"


def history(session, start: datetime, leads: int, advancing: int, prefix: str) -> None:
    for i in range(leads):
        moved = start + timedelta(days=i % 20)
        nxt = "engaged" if i < advancing else "cold"
        add_lead(session, f"{prefix}{i}@example.com", [("new", moved - timedelta(days=2)),
                                                       ("contacted", moved - timedelta(days=1)), (nxt, moved)],
                 commit=False)
    session.commit()


def test_without_a_plan_the_recent_window_is_compared_with_the_trailing_average(session):
    chain = load_chain(session)
    history(session, NOW - timedelta(days=80), 40, 20, "old")  # trailing: contacted -> engaged 50%
    history(session, NOW - timedelta(days=25), 20, 2, "new")  # last 28 days: 10%
    result = bottleneck(session, chain, {"engaged": 0.25}, NOW)
    assert result.reference == "trailing average"
    assert (result.worst.stage, result.worst.recent, result.worst.reference) == ("contacted", 0.1, 0.5)
    assert result.worst.deals_per_month == pytest.approx(round(0.4 * 20 * DAYS_PER_MONTH / 28 * 0.25, 2))


def test_against_the_latest_plan(session):
    chain = load_chain(session)
    history(session, NOW - timedelta(days=25), 20, 12, "new")  # 60% recently
    plan = Plan(created_at=NOW, deals=5, by_date=date(2026, 6, 30), result={"conversions": [
        {"stage": "new", "next_stage": "contacted", "rate": 0.9}, {"stage": "contacted", "next_stage": "engaged",
                                                                    "rate": 0.8}]})
    session.add(plan)
    session.commit()
    result = bottleneck(session, chain, {"engaged": 0.25}, NOW, plan)
    assert (result.reference, result.plan_id, result.worst.stage, result.worst.gap) == ("plan", plan.id, "contacted", 0.2)
    # "new" left 20 leads, all to contacted: at 100% it is above its 90% plan
    assert {s.stage: s.recent for s in result.steps}["new"] == 1.0


def test_the_managers_weekly_digest_names_the_bottleneck_and_the_plan_against_actuals(nurture):
    from nurture.analytics.backwards_plan import StepConversion, plan, save_plan
    from nurture.models import User
    from nurture.weekly_review import run_weekly_review

    from conftest import received_by

    n = nurture.at(NOW)
    with n.session() as s:
        s.add(User(email="boss@example.com", name="Мария Руководитель", role="manager", created_at=NOW))
        history(s, NOW - timedelta(days=80), 40, 20, "old")
        history(s, NOW - timedelta(days=25), 20, 2, "new")
        steps = [StepConversion("new", "contacted", 0.9), StepConversion("contacted", "engaged", 0.5)]
        stored = save_plan(s, plan(steps, 10, date(2026, 6, 30), NOW.date() - timedelta(days=14)), {},
                           NOW - timedelta(days=14))
        run_weekly_review(s, n.settings, NOW)
    n.work()
    [boss] = received_by(n)["boss@example.com"]
    text = boss.get_body(("plain",)).get_content()
    assert "Bottleneck: contacted -> engaged converts 10% against 50% (plan), about" in text
    # the recent leads entered 27..8 days ago: 7 of them since the plan was made two weeks ago
    assert f"Plan #{stored.id} (10 deals by 2026-06-30): 7 new leads entered of the " in text
    assert "behind the plan" in text or "on track" in text
    html = boss.get_body(("html",)).get_content()
    assert "Bottleneck: contacted -&gt; engaged" in html
