"""The backwards plan: hand-computed cases, coverage on simulated quarters, edge cases."""

from __future__ import annotations

import math
from datetime import date

import numpy as np
import pytest
from scipy import stats

from nurture.analytics.backwards_plan import StepConversion, apply_what_if, parse_what_if, plan
from nurture.analytics.chain import AnalyticsError

TODAY = date(2026, 1, 5)  # a Monday
BY = date(2026, 3, 31)
STEPS = ("new", "contacted", "engaged", "qualified", "won")


def steps(rates, weight=None):
    return [StepConversion(a, b, r, weight) for (a, b), r in zip(zip(STEPS, STEPS[1:]), rates)]


def test_mean_answer_is_deals_over_the_product_of_conversions():
    result = plan(steps([0.5, 0.4, 0.5, 0.25]), deals=10, by_date=BY, today=TODAY)
    assert result.path_conversion == pytest.approx(0.025)
    assert result.leads_mean == 400  # 10 / 0.025
    vol = {v.stage: v.mean_plan for v in result.stage_volumes}
    assert vol == {"new": 400, "contacted": 200, "engaged": 80, "qualified": 40, "won": 10}
    # no cycle time measured: spread over the 12.1 weeks to the date itself
    assert result.latest_start == BY and result.weeks == pytest.approx(85 / 7, abs=0.01)
    assert result.per_week_mean == math.ceil(400 / (85 / 7))
    assert any("no won deal has a measured cycle time" in n for n in result.notes)


def test_known_rates_at_confidence_match_the_negative_binomial_quantile():
    # exact rates (no uncertainty): leads needed = 10 + NegBin(10, 0.025); its 80% quantile
    result = plan(steps([0.5, 0.4, 0.5, 0.25]), deals=10, by_date=BY, today=TODAY, confidence=0.8)
    exact = 10 + stats.nbinom.ppf(0.8, 10, 0.025)
    assert result.leads_at_confidence == pytest.approx(exact, rel=0.02)
    assert result.leads_at_confidence > result.leads_mean


def test_latest_start_from_the_cycle_time_quantile():
    cycles = list(range(1, 101))  # days: the 80% quantile is 80.2
    result = plan(steps([0.5, 0.5, 0.5, 0.5]), deals=2, by_date=date(2026, 6, 30), today=TODAY, cycle_times=cycles)
    assert result.cycle_days == pytest.approx(80.2)
    assert result.latest_start == date(2026, 6, 30) - __import__("datetime").timedelta(days=81)
    assert result.weeks == pytest.approx((result.latest_start - TODAY).days / 7, abs=0.01)


def test_uncertain_conversions_need_more_leads_than_known_ones():
    known = plan(steps([0.5, 0.4, 0.5, 0.25]), deals=10, by_date=BY, today=TODAY)
    few = plan(steps([0.5, 0.4, 0.5, 0.25], weight=20), deals=10, by_date=BY, today=TODAY)
    many = plan(steps([0.5, 0.4, 0.5, 0.25], weight=5000), deals=10, by_date=BY, today=TODAY)
    assert few.leads_mean == known.leads_mean == many.leads_mean == 400
    assert few.leads_at_confidence > many.leads_at_confidence * 1.3
    assert many.leads_at_confidence == pytest.approx(known.leads_at_confidence, rel=0.05)


def test_what_if_raises_one_step_and_lowers_the_leads():
    base = steps([0.5, 0.4, 0.5, 0.25])
    result = plan(base, deals=10, by_date=BY, today=TODAY, what_if={"contacted": 0.1})
    assert result.leads_mean == 320  # 10 / (0.5 * 0.5 * 0.5 * 0.25)
    assert result.conversions[1]["rate"] == pytest.approx(0.5)
    assert apply_what_if(base, {"new": 0.9})[0].rate == 1.0  # kept within 0..1
    assert parse_what_if(("contacted=+0.05", "engaged=-5%", " qualified = +2% ")) == {
        "contacted": 0.05, "engaged": -0.05, "qualified": 0.02}


@pytest.mark.parametrize("text, message", [
    ("contacted=0.3", "a signed change"), ("contacted", "a signed change"), ("=+0.1", "a signed change"),
    ("contacted=+abc", "'\\+abc' is not a number"), ("contacted=+150%", "outside -1..\\+1"),
])
def test_bad_what_if_texts_are_named(text, message):
    with pytest.raises(AnalyticsError, match=message):
        parse_what_if((text,))


def test_unknown_what_if_stage_lists_the_known_ones():
    with pytest.raises(AnalyticsError, match="unknown stage 'contacte'.*new, contacted, engaged, qualified"):
        plan(steps([0.5, 0.4, 0.5, 0.25]), deals=10, by_date=BY, today=TODAY, what_if={"contacte": 0.05})


def test_revenue_target_raises_the_deals_needed():
    result = plan(steps([0.5, 0.4, 0.5, 0.25]), deals=10, by_date=BY, today=TODAY, revenue=150_000,
                  avg_deal_value=10_000)
    assert result.deals_needed == 15 and result.leads_mean == 600
    assert "15 deals" in result.notes[-1] or any("15 deals" in n for n in result.notes)
    with pytest.raises(AnalyticsError, match="no won deal has a value yet"):
        plan(steps([0.5, 0.4, 0.5, 0.25]), deals=10, by_date=BY, today=TODAY, revenue=150_000)


def test_target_already_reached_needs_no_leads():
    result = plan(steps([0.5, 0.4, 0.5, 0.25]), deals=10, by_date=BY, today=TODAY, won_so_far=12)
    assert result.reached and result.leads_mean == result.leads_at_confidence == result.per_week_mean == 0
    assert "target already reached: 12 deal(s) won, 10 needed" in result.notes


def test_a_date_in_the_past_and_too_late_dates_are_refused():
    with pytest.raises(AnalyticsError, match="2025-12-31 is not in the future \\(today is 2026-01-05\\)"):
        plan(steps([0.5] * 4), deals=1, by_date=date(2025, 12, 31), today=TODAY)
    with pytest.raises(AnalyticsError, match="too late for 2026-01-20: 80% of won deals took up to 60 days"):
        plan(steps([0.5] * 4), deals=1, by_date=date(2026, 1, 20), today=TODAY, cycle_times=[60] * 10)


def test_a_stage_with_no_conversion_and_no_prior_cannot_be_planned():
    with pytest.raises(AnalyticsError, match="no lead has gone from engaged to qualified yet.*--what-if engaged=\\+0.05"):
        plan(steps([0.5, 0.4, 0.0, 0.25], weight=30), deals=10, by_date=BY, today=TODAY)
    # ... and the what-if makes it plannable
    assert plan(steps([0.5, 0.4, 0.0, 0.25]), deals=1, by_date=BY, today=TODAY, what_if={"engaged": 0.05}).leads_mean == 400


@pytest.mark.parametrize("kwargs, message", [
    ({"deals": 0}, "deals: 0 must be a whole number of at least 1"),
    ({"deals": 2.5}, "deals: 2.5 must be"),
    ({"confidence": 1.0}, "confidence: 1.0 must be between 0 and 1"),
    ({"revenue": -5, "avg_deal_value": 10}, "revenue: -5 must be more than 0"),
])
def test_bad_arguments_are_named(kwargs, message):
    args = {"deals": 10, "by_date": BY, "today": TODAY, **kwargs}
    with pytest.raises(AnalyticsError, match=message):
        plan(steps([0.5] * 4), **args)


def test_simulated_quarters_the_confident_plan_reaches_the_target_at_least_78_percent():
    """1,000 quarters: each learns the conversions from a history drawn from the true ones,
    plans at 80% and at the mean, then lives the quarter with the true conversions."""
    rng = np.random.default_rng(7)
    truth = np.array([0.55, 0.45, 0.6, 0.35])
    history_leads, deals = 300, 8
    confident_hits = mean_hits = 0
    for quarter in range(1000):
        entered, learned = history_leads, []
        for rate in truth:  # the history each quarter's manager has seen
            advanced = rng.binomial(entered, rate)
            learned.append((advanced / entered, entered))
            entered = advanced
        conversions = [StepConversion(a, b, r, n) for (a, b), (r, n) in zip(zip(STEPS, STEPS[1:]), learned)]
        result = plan(conversions, deals=deals, by_date=BY, today=TODAY, confidence=0.8, samples=4000, seed=quarter)
        p = float(np.prod(truth))
        confident_hits += rng.binomial(result.leads_at_confidence, p) >= deals
        mean_hits += rng.binomial(result.leads_mean, p) >= deals
    print(f"confident plan reached the target in {confident_hits / 10:.1f}% of quarters, the mean plan in {mean_hits / 10:.1f}%")
    assert confident_hits / 1000 >= 0.78
    assert 0.35 <= mean_hits / 1000 <= 0.65
