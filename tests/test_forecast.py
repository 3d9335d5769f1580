"""The forecast: exact Poisson-binomial deals, revenue intervals, months by expected close."""

from __future__ import annotations

import itertools
import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from scipy import stats

from nurture.analytics.chain import load_chain
from nurture.analytics.forecast import (
    UNDATED, deal_distribution, forecast, forecast_rows, pmf_percentiles, revenue_percentiles,
)
from pipeline_history import add_lead

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def test_deal_distribution_matches_brute_force_enumeration():
    p = [0.1, 0.5, 0.9, 0.3, 0.05]
    brute = np.zeros(6)
    for outcome in itertools.product((0, 1), repeat=5):
        brute[sum(outcome)] += math.prod(q if hit else 1 - q for q, hit in zip(p, outcome))
    assert deal_distribution(p) == pytest.approx(brute, abs=1e-12)


def test_equal_probabilities_give_the_binomial():
    pmf = deal_distribution(np.full(1001, 0.3))  # odd count: the padding path
    ks = np.arange(len(pmf))
    assert pmf == pytest.approx(stats.binom.pmf(ks, 1001, 0.3), abs=1e-12)
    assert pmf_percentiles(pmf) == [int(stats.binom.ppf(q, 1001, 0.3)) for q in (0.1, 0.5, 0.9)]


def test_hand_computed_two_leads():
    rows = forecast_rows([0.5, 0.5], [1000.0, 3000.0], ["2026-03", "2026-04"])
    march, april, total = rows
    assert (march.month, march.expected_deals, march.expected_revenue) == ("2026-03", 0.5, 500.0)
    assert (total.deals_p10, total.deals_p50, total.deals_p90) == (0, 1, 2)  # pmf 1/4, 1/2, 1/4
    assert total.expected_revenue == 2000.0
    assert total.revenue_p10 == 0.0 and total.revenue_p90 == 4000.0


def test_no_open_leads_forecasts_nothing():
    [total] = forecast_rows([], [], [])
    assert (total.leads, total.expected_deals, total.deals_p90, total.expected_revenue) == (0, 0.0, 0, None)


def test_leads_without_a_value_leave_revenue_out_of_their_group():
    rows = forecast_rows([0.4, 0.6], [math.nan, 500.0], ["2026-03", "2026-04"])
    assert rows[0].expected_revenue is None and rows[1].expected_revenue == 300.0 and rows[2].revenue_p50 is None


def test_large_groups_use_the_normal_revenue_interval():
    p = np.full(30_000, 0.2)
    low, mid, high = revenue_percentiles(p, np.full(p.size, 100.0))
    sd = 100 * math.sqrt(30_000 * 0.2 * 0.8)
    assert mid == pytest.approx(600_000) and high - mid == pytest.approx(1.2816 * sd, rel=1e-3)


def test_simulated_outcomes_fall_inside_the_10_90_interval_about_80_percent_of_the_time():
    rng = np.random.default_rng(11)
    p = rng.beta(2, 5, 80)
    v = rng.choice([500.0, 2000.0, 10_000.0], 80)
    [total] = forecast_rows(p, v, ["2026-03"] * 80)[-1:]
    inside_deals = inside_revenue = 0
    for _ in range(1000):
        won = rng.random(80) < p
        inside_deals += total.deals_p10 <= won.sum() <= total.deals_p90
        inside_revenue += total.revenue_p10 <= v @ won <= total.revenue_p90
    assert 0.75 <= inside_deals / 1000 <= 0.9
    assert 0.75 <= inside_revenue / 1000 <= 0.85


def test_open_leads_grouped_by_expected_close_month(session):
    day = lambda n: NOW + timedelta(days=n)  # noqa: E731
    # history: stays in contacted 10 days, engaged 20 days, qualified..negotiation 5 days each
    add_lead(session, "won@example.com", [("new", day(-90)), ("contacted", day(-89)), ("engaged", day(-79)),
                                          ("qualified", day(-59)), ("proposal", day(-54)), ("negotiation", day(-49)),
                                          ("won", day(-44))], deal_value=4000)
    add_lead(session, "a@example.com", [("new", day(-3)), ("contacted", day(-2))], probability=0.2, deal_value=1000)
    add_lead(session, "b@example.com", [("new", day(-60)), ("contacted", day(-50)), ("engaged", day(-45)),
                                        ("qualified", day(-40)), ("proposal", day(-39))], probability=0.6)
    add_lead(session, "c@example.com", [("new", day(-2)), ("lost", day(-1))], probability=0.0)
    rows = forecast(session, load_chain(session), NOW, default_value=4000)
    by_month = {r.month: r for r in rows}
    # a: contacted on Feb 28 + 10 + 20 + 5 + 5 + 5 = 45 days -> mid April; b: overdue -> this month
    assert set(by_month) == {"2026-03", "2026-04", "total"}
    assert by_month["2026-04"].expected_deals == 0.2 and by_month["2026-04"].expected_revenue == 200.0
    assert by_month["2026-03"].expected_revenue == 2400.0  # no value of its own: the average won deal's
    assert by_month["total"].leads == 2 and by_month["total"].expected_deals == 0.8


def test_without_history_the_leads_are_undated(session):
    add_lead(session, "a@example.com", [("new", NOW)], probability=0.25)
    rows = forecast(session, load_chain(session), NOW)
    assert [r.month for r in rows] == [UNDATED, "total"]
    assert rows[0].expected_revenue is None
