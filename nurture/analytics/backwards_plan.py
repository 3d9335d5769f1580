"""The backwards plan: from "N deals by a date" to new leads per week, starting now.

``plan`` is a pure function. Its input is one ``StepConversion`` per step of the
path (stage -> next stage): the rate used (the learned conversion blended with
the manager's, see ``nurture.conversion``) and how much evidence stands behind it
(the Beta posterior's weight: prior weight plus leads seen leaving the stage).

- The mean answer is ``deals / product of the rates``: enough leads on average,
  so the target is reached in only about half of the outcomes.
- The answer at a confidence c is the c-quantile of the leads needed, by Monte
  Carlo: each draw takes every step's rate from its Beta posterior, multiplies
  them into the path's conversion p, then draws the leads it takes to reach the
  deals (deals + a negative binomial count of failures at p). So both the
  uncertainty of the conversions and the luck of the outcome are priced in.
- The latest start date is ``by_date`` minus the c-quantile of the measured
  cycle time (days from entering the funnel to won); leads per week spread the
  leads over the weeks from today to that date.

A plan is kept as a ``Plan`` row so later reviews can compare actuals to it
(``progress``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta

import numpy as np
import sqlalchemy as sa
from sqlmodel import Session, select

from ..conversion import StageProbability
from ..models import Lead, LeadJourney, Plan, StageChange
from .chain import AnalyticsError, Chain
from .journeys import refresh

SAMPLES = 20_000
SEED = 20260302  # fixed: the same question gets the same answer


@dataclass(frozen=True)
class StepConversion:
    """The conversion from ``stage`` to ``next_stage``: its rate and the weight of the evidence behind it.

    The uncertainty is Beta(rate * weight, (1 - rate) * weight); ``weight=None``
    means the rate is taken as exact (a manager's number with no history).
    """

    stage: str
    next_stage: str
    rate: float
    weight: float | None = None

    def draws(self, rng: np.random.Generator, size: int) -> np.ndarray:
        if not self.weight or self.rate in (0.0, 1.0):
            return np.full(size, self.rate)
        return rng.beta(self.rate * self.weight, (1 - self.rate) * self.weight, size)


@dataclass
class StageVolume:
    stage: str
    mean_plan: float  # leads that must reach this stage under the mean plan
    confident_plan: float  # ... under the plan at the requested confidence


@dataclass
class PlanResult:
    deals: int  # asked for
    deals_needed: int  # asked for, or more when the revenue target needs more
    won_so_far: int
    remaining: int
    by_date: date
    today: date
    confidence: float
    conversions: list[dict]
    path_conversion: float
    leads_mean: int
    leads_at_confidence: int
    latest_start: date
    weeks: float
    per_week_mean: int
    per_week_at_confidence: int
    cycle_days: float | None
    cycle_deals_measured: int
    stage_volumes: list[StageVolume]
    revenue: float | None = None
    avg_deal_value: float | None = None
    reached: bool = False
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        data = asdict(self)
        for key in ("by_date", "today", "latest_start"):
            data[key] = data[key].isoformat()
        return data


def plan(conversions: list[StepConversion], deals: int, by_date: date, today: date, confidence: float = 0.8,
         what_if: dict[str, float] | None = None, revenue: float | None = None, avg_deal_value: float | None = None,
         cycle_times: list[float] = (), won_so_far: int = 0, samples: int = SAMPLES, seed: int = SEED) -> PlanResult:
    """Leads needed at the input, per week, per stage and by when, to win ``deals`` by ``by_date``."""
    _check(conversions, deals, by_date, today, confidence, revenue, avg_deal_value)
    conversions = apply_what_if(conversions, what_if or {})
    deals_needed = deals
    notes = []
    if revenue is not None:
        deals_needed = max(deals, math.ceil(revenue / avg_deal_value - 1e-9))
        if deals_needed > deals:
            notes.append(f"the revenue target needs {deals_needed} deals at an average of {avg_deal_value:,.0f}")
    remaining = max(deals_needed - won_so_far, 0)
    rates = [c.rate for c in conversions]
    path = float(np.prod(rates))
    cycle_days = float(np.quantile(cycle_times, confidence)) if len(cycle_times) else None
    latest_start = by_date - timedelta(days=math.ceil(cycle_days)) if cycle_days is not None else by_date
    if cycle_days is None:
        notes.append("no won deal has a measured cycle time yet: leads are spread up to the target date itself")
    common = dict(deals=deals, deals_needed=deals_needed, won_so_far=won_so_far, remaining=remaining, by_date=by_date,
                  today=today, confidence=confidence, path_conversion=path, cycle_days=cycle_days,
                  cycle_deals_measured=len(cycle_times), revenue=revenue, avg_deal_value=avg_deal_value,
                  conversions=[asdict(c) for c in conversions], notes=notes)
    if remaining == 0:
        notes.append(f"target already reached: {won_so_far} deal(s) won, {deals_needed} needed")
        return PlanResult(**common, leads_mean=0, leads_at_confidence=0, latest_start=latest_start, weeks=0.0,
                          per_week_mean=0, per_week_at_confidence=0, reached=True,
                          stage_volumes=[StageVolume(c.stage, 0.0, 0.0) for c in conversions])
    _check_reachable(conversions)
    if latest_start <= today:
        raise AnalyticsError(
            f"too late for {by_date.isoformat()}: {confidence:.0%} of won deals took up to {math.ceil(cycle_days)} days "
            f"from entering the funnel (measured on {len(cycle_times)} deals), so leads had to enter by "
            f"{latest_start.isoformat()}; pick a date after {(today + timedelta(days=math.ceil(cycle_days))).isoformat()}")
    leads_mean = math.ceil(remaining / path - 1e-9)
    leads_confident = leads_at_confidence(conversions, remaining, confidence, samples, seed)
    weeks = (latest_start - today).days / 7
    spread = max(weeks, 1.0)  # less than a week left: everything this week
    volumes, reaching_mean, reaching_confident = [], float(leads_mean), float(leads_confident)
    for conversion in conversions:
        volumes.append(StageVolume(conversion.stage, round(reaching_mean, 1), round(reaching_confident, 1)))
        reaching_mean *= conversion.rate
        reaching_confident *= conversion.rate
    volumes.append(StageVolume(conversions[-1].next_stage, round(reaching_mean, 1), round(reaching_confident, 1)))
    return PlanResult(**common, leads_mean=leads_mean, leads_at_confidence=leads_confident, latest_start=latest_start,
                      weeks=round(weeks, 2), per_week_mean=math.ceil(leads_mean / spread),
                      per_week_at_confidence=math.ceil(leads_confident / spread), stage_volumes=volumes)


def leads_at_confidence(conversions: list[StepConversion], deals: int, confidence: float,
                        samples: int = SAMPLES, seed: int = SEED) -> int:
    """The ``confidence`` quantile of the leads it takes to win ``deals`` (Beta rates, negative binomial luck)."""
    rng = np.random.default_rng(seed)
    path = np.ones(samples)
    for conversion in conversions:
        path *= conversion.draws(rng, samples)
    path = np.clip(path, 1e-9, 1.0)  # a draw of exactly 0 would need infinitely many leads
    needed = deals + rng.negative_binomial(deals, path)
    return int(np.quantile(needed, confidence, method="higher"))


def apply_what_if(conversions: list[StepConversion], what_if: dict[str, float]) -> list[StepConversion]:
    """The conversions with ``{stage: +points}`` added to the named steps (kept within 0..1)."""
    stages = [c.stage for c in conversions]
    unknown = [s for s in what_if if s not in stages]
    if unknown:
        raise AnalyticsError(f"what-if: unknown stage {', '.join(map(repr, unknown))}; "
                             f"the steps start at: {', '.join(stages)}")
    return [StepConversion(c.stage, c.next_stage, min(max(c.rate + what_if[c.stage], 0.0), 1.0), c.weight)
            if c.stage in what_if else c for c in conversions]


def parse_what_if(texts: tuple[str, ...]) -> dict[str, float]:
    """``("engaged=+0.05", "proposal=-3%")`` -> ``{"engaged": 0.05, "proposal": -0.03}``."""
    result = {}
    for text in texts:
        stage, sep, value = text.partition("=")
        value = value.strip()
        if not sep or not stage.strip() or value[:1] not in "+-" or len(value) < 2:
            raise AnalyticsError(f"what-if {text!r}: write stage=+0.05 or stage=-5% (a signed change in points)")
        try:
            points = float(value.rstrip("%")) / (100 if value.endswith("%") else 1)
        except ValueError:
            raise AnalyticsError(f"what-if {text!r}: {value!r} is not a number") from None
        if not -1 <= points <= 1:
            raise AnalyticsError(f"what-if {text!r}: a change of {points:+.2f} is outside -1..+1")
        result[stage.strip()] = points
    return result


def _check(conversions, deals, by_date, today, confidence, revenue, avg_deal_value) -> None:
    if not conversions:
        raise AnalyticsError("the pipeline has no steps to plan through")
    if not isinstance(deals, int) or deals < 1:
        raise AnalyticsError(f"deals: {deals!r} must be a whole number of at least 1")
    if not 0 < confidence < 1:
        raise AnalyticsError(f"confidence: {confidence} must be between 0 and 1, e.g. 0.8")
    if by_date <= today:
        raise AnalyticsError(f"the date {by_date.isoformat()} is not in the future (today is {today.isoformat()})")
    if revenue is not None:
        if revenue <= 0:
            raise AnalyticsError(f"revenue: {revenue} must be more than 0")
        if not avg_deal_value or avg_deal_value <= 0:
            raise AnalyticsError("a revenue target needs the average deal value, and no won deal has a value yet: "
                                 "record deal values or plan by --deals only")


def _check_reachable(conversions: list[StepConversion]) -> None:
    for c in conversions:
        if c.rate <= 0:
            raise AnalyticsError(
                f"no lead has gone from {c.stage} to {c.next_stage} yet and no manual probability makes it possible: "
                f"the target cannot be planned; set a probability for {c.stage} in the pipeline, "
                f"or ask what if: --what-if {c.stage}=+0.05")


# --- from the database ----------------------------------------------------------------------------

def step_conversions(probabilities: dict[str, StageProbability], chain: Chain, prior_weight: float) -> list[StepConversion]:
    """Each step's rate as the ratio of the blended P(won | stage) of its two ends.

    The product of these rates telescopes to the blended P(won | first stage), so the
    plan agrees with ``nurture pipeline stats``. The weight of a step is the prior's
    plus the leads seen leaving the stage.
    """
    steps = []
    for stage, following in chain.transitions():
        here, there = probabilities[stage], probabilities[following]
        rate = min(here.blended / there.blended, 1.0) if there.blended > 0 else 0.0
        steps.append(StepConversion(stage, following, rate, prior_weight + here.exits))
    return steps


def cycle_times(session: Session, chain: Chain) -> list[float]:
    """Days from entering the funnel to won, for every lead now in the won stage.

    Entering is the lead's creation, or its first stage change when that is earlier
    (imported history), as in the funnel; won is the first move to won (``journeys``).
    """
    refresh(session)
    query = (sa.select(Lead.created_at, LeadJourney.first_at, LeadJourney.won_at)
             .join(Lead, Lead.id == LeadJourney.lead_id).where(Lead.stage == chain.won, LeadJourney.won_at.is_not(None)))
    return [(won - min(created, first)).total_seconds() / 86400 for created, first, won in session.execute(query)]


def won_between(session: Session, chain: Chain, start: datetime, end: datetime) -> int:
    """Leads that reached the won stage in [start, end)."""
    return session.execute(sa.select(sa.func.count(sa.distinct(StageChange.lead_id))).where(
        StageChange.to_stage == chain.won, StageChange.changed_at >= start, StageChange.changed_at < end)).scalar_one()


def average_deal_value(session: Session, chain: Chain) -> float | None:
    """The mean value of won deals: the value on the change to won, else the lead's."""
    value = sa.func.coalesce(StageChange.deal_value, Lead.deal_value)
    query = (sa.select(sa.func.avg(value)).select_from(StageChange).join(Lead, Lead.id == StageChange.lead_id)
             .where(StageChange.to_stage == chain.won, value.is_not(None)))
    result = session.execute(query).scalar_one()
    return float(result) if result is not None else None


def save_plan(session: Session, result: PlanResult, what_if: dict[str, float], now: datetime,
              by_user_id: int | None = None) -> Plan:
    row = Plan(created_at=now, by_user_id=by_user_id, deals=result.deals, revenue=result.revenue,
               by_date=result.by_date, confidence=result.confidence, what_if=what_if, result=result.as_dict())
    session.add(row)
    session.commit()
    return row


def latest_plan(session: Session, now: datetime) -> Plan | None:
    """The newest plan whose target date has not passed."""
    return session.exec(select(Plan).where(Plan.by_date >= now.date()).order_by(Plan.created_at.desc(), Plan.id.desc())
                        ).first()


@dataclass
class Progress:
    plan_id: int
    since: date
    by_date: date
    weeks_elapsed: float
    leads_planned: int  # by now, at the plan's confident weekly rate
    leads_entered: int
    deals_needed: int
    deals_won: int
    on_track: bool

    def as_dict(self) -> dict:
        data = asdict(self)
        data["since"], data["by_date"] = self.since.isoformat(), self.by_date.isoformat()
        return data


def progress(session: Session, chain: Chain, stored: Plan, now: datetime) -> Progress:
    """Plan versus actual: new leads entered and deals won since the plan was made."""
    since = stored.created_at
    refresh(session)
    entered_at = sa.func.coalesce(LeadJourney.first_at, Lead.created_at)
    entered = session.execute(
        sa.select(sa.func.count()).select_from(Lead).outerjoin(LeadJourney, LeadJourney.lead_id == Lead.id)
        .where(entered_at >= since, entered_at < now)).scalar_one()
    result = stored.result
    latest_start = date.fromisoformat(result["latest_start"])
    weeks_elapsed = max((min(now.date(), latest_start) - since.date()).days, 0) / 7
    planned = min(math.ceil(result["per_week_at_confidence"] * weeks_elapsed), result["leads_at_confidence"])
    won = won_between(session, chain, since, now)
    needed = result["remaining"]
    return Progress(plan_id=stored.id, since=since.date(), by_date=stored.by_date, weeks_elapsed=round(weeks_elapsed, 1),
                    leads_planned=planned, leads_entered=entered, deals_needed=needed, deals_won=won,
                    on_track=entered >= planned or won >= needed)
