"""The forecast: deals and revenue expected from the open pipeline, with an interval.

Each open lead (on the path, not yet won) closes with its own ``Lead.probability``
and brings its ``deal_value`` (or the average won deal's). The number of deals is
then a Poisson-binomial variable: its distribution is computed exactly, by
multiplying the leads' generating polynomials (1 - p + p z) pairwise with FFTs,
level by level (O(n log n), so a million leads take about a second), cut where
the remaining mass is below 1e-20. Revenue (a sum of unequal values) is
simulated for up to ``SIMULATED_LEADS`` leads and taken as normal beyond, where
the central limit theorem holds well.

A lead's expected close date is when it entered its current stage plus the
median stay in this and every later stage (``funnel.time_in_stage``); one that
is overdue is expected this month. Leads are grouped by that month.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import numpy as np
import sqlalchemy as sa
from scipy import stats
from sqlmodel import Session

from ..models import Lead
from .chain import Chain
from .funnel import time_in_stage
from .report_sql import tune_for_reports

PERCENTILES = (0.1, 0.5, 0.9)
SIMULATIONS = 4000
SIMULATED_LEADS = 20_000  # revenue by simulation up to this many leads in a group, normal beyond
SEED = 20260302
UNDATED = "undated"


@dataclass
class ForecastRow:
    month: str  # YYYY-MM, "undated" (no cycle time measured) or "total"
    leads: int
    expected_deals: float
    deals_p10: int
    deals_p50: int
    deals_p90: int
    expected_revenue: float | None
    revenue_p10: float | None
    revenue_p50: float | None
    revenue_p90: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def deal_distribution(probabilities: np.ndarray) -> np.ndarray:
    """The exact distribution of the number of successes among independent Bernoulli trials."""
    p = np.clip(np.asarray(probabilities, dtype=float), 0.0, 1.0)
    if p.size == 0:
        return np.array([1.0])
    mean, sd = p.sum(), math.sqrt(float((p * (1 - p)).sum()))
    support = min(p.size, math.ceil(mean + 10 * sd + 20)) + 1  # P(more) < 1e-20: cut, at every level too
    polys = np.stack([1 - p, p], axis=1)
    while len(polys) > 1:
        if len(polys) % 2:
            one = np.zeros((1, polys.shape[1]))
            one[0, 0] = 1.0
            polys = np.vstack([polys, one])
        size = 2 * polys.shape[1] - 1
        n_fft = 1 << (size - 1).bit_length()
        spectra = np.fft.rfft(polys[0::2], n_fft) * np.fft.rfft(polys[1::2], n_fft)
        polys = np.clip(np.fft.irfft(spectra, n_fft)[:, :min(size, support)], 0.0, None)
    pmf = polys[0]
    return pmf / pmf.sum()


def pmf_percentiles(pmf: np.ndarray, qs=PERCENTILES) -> list[int]:
    """The smallest k with P(X <= k) >= q, for each q."""
    cdf = np.cumsum(pmf)
    return [int(min(np.searchsorted(cdf, q - 1e-12), len(pmf) - 1)) for q in qs]


def revenue_percentiles(probabilities: np.ndarray, values: np.ndarray, qs=PERCENTILES,
                        simulations: int = SIMULATIONS, seed: int = SEED) -> list[float]:
    p, v = np.asarray(probabilities, dtype=float), np.asarray(values, dtype=float)
    if p.size > SIMULATED_LEADS:
        mean, var = float(v @ p), float((v * v) @ (p * (1 - p)))
        return [max(float(stats.norm.ppf(q, mean, math.sqrt(var))), 0.0) if var > 0 else mean for q in qs]
    rng = np.random.default_rng(seed)
    totals = np.zeros(simulations)
    for start in range(0, p.size, 2000):
        chunk = slice(start, start + 2000)
        totals += v[chunk] @ (rng.random((p[chunk].size, simulations)) < p[chunk, None])
    return [float(x) for x in np.quantile(totals, qs)]


def forecast_rows(probabilities, values, months) -> list[ForecastRow]:
    """Per month (and a total row): expected deals and revenue with their 10/50/90 percentiles.

    ``values`` may hold NaN for leads without a value: revenue is then left out (None)
    for the groups that have any such lead.
    """
    p = np.asarray(probabilities, dtype=float)
    v = np.asarray(values, dtype=float)
    groups = defaultdict(list)
    for i, month in enumerate(months):
        groups[month].append(i)
    ordered = sorted((m for m in groups if m != UNDATED)) + ([UNDATED] if UNDATED in groups else [])
    rows = [_row(month, p[groups[month]], v[groups[month]]) for month in ordered]
    rows.append(_row("total", p, v))
    return rows


def _row(month: str, p: np.ndarray, v: np.ndarray) -> ForecastRow:
    deals = pmf_percentiles(deal_distribution(p))
    priced = p.size > 0 and not np.isnan(v).any()
    revenue = revenue_percentiles(p, v) if priced else [None] * 3
    return ForecastRow(month=month, leads=int(p.size), expected_deals=round(float(p.sum()), 2),
                       deals_p10=deals[0], deals_p50=deals[1], deals_p90=deals[2],
                       expected_revenue=round(float(v @ p), 2) if priced else None,
                       revenue_p10=_money(revenue[0]), revenue_p50=_money(revenue[1]), revenue_p90=_money(revenue[2]))


def _money(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


# --- from the database ----------------------------------------------------------------------------

def remaining_days(session: Session, chain: Chain) -> dict[str, float]:
    """Median days from entering each open stage to won: the median stays of it and every later stage.

    A stage with no measured stay (and every stage before it) gets no figure.
    """
    medians = {t.stage: t.median_days for t in time_in_stage(session, chain)}
    remaining, total = {}, 0.0
    for stage in reversed(chain.keys[:-1]):
        if stage not in medians:
            break
        total += medians[stage]
        remaining[stage] = total
    return remaining


def forecast(session: Session, chain: Chain, now: datetime, default_value: float | None = None) -> list[ForecastRow]:
    """The open leads' forecast per expected close month, and in total."""
    tune_for_reports(session)
    remaining = remaining_days(session, chain)
    query = sa.select(Lead.stage, Lead.stage_changed_at, Lead.created_at, Lead.probability, Lead.deal_value).where(
        Lead.stage.in_(chain.keys[:-1]))
    probabilities, values, months = [], [], []
    this_month = now.strftime("%Y-%m")
    for stage, changed_at, created_at, probability, value in session.execute(query):
        probabilities.append(probability or 0.0)
        value = value if value is not None else default_value
        values.append(math.nan if value is None else value)
        days = remaining.get(stage)
        if days is None:
            months.append(UNDATED)
        else:
            close = (changed_at or created_at) + timedelta(days=days)
            months.append(max(close.strftime("%Y-%m"), this_month))
    return forecast_rows(probabilities, values, months)

