"""The bottleneck: the step of the funnel furthest below plan, and what that costs.

A step's recent conversion is measured on the leads that *left* the stage in the
last ``window_days`` (moved on, or to lost / cold / archived): unlike a cohort's
conversion it is not biased down by leads that have not had time to move yet.
It is compared with the latest plan's rate for that step (``Plan.result``) or,
with no plan, with the same measure over the ``trailing_days`` before the
window. The bottleneck is the step with the largest shortfall in points among
those with at least ``MIN_EXITS`` leads leaving in the window; its cost in deals
per month is the shortfall x leads leaving the stage per month x P(won) from the
next stage (the blended figure of ``nurture.conversion``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session

from ..models import Plan, StageChange
from .chain import Chain
from .report_sql import tune_for_reports

MIN_EXITS = 10
WINDOW_DAYS = 28
TRAILING_DAYS = 84
DAYS_PER_MONTH = 365.25 / 12


@dataclass
class StepHealth:
    stage: str
    next_stage: str
    exits: int  # leads that left the stage in the window
    advanced: int  # ... to a later stage of the path
    recent: float | None
    reference: float | None  # the plan's rate or the trailing average
    gap: float | None  # reference - recent, in points (positive: below the reference)
    deals_per_month: float | None  # what the gap costs


@dataclass
class Bottleneck:
    reference: str  # "plan" or "trailing average"
    plan_id: int | None
    window_days: int
    steps: list[StepHealth]
    worst: StepHealth | None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"reference": self.reference, "plan_id": self.plan_id, "window_days": self.window_days,
                "steps": [asdict(s) for s in self.steps], "worst": asdict(self.worst) if self.worst else None,
                "notes": self.notes}

    @property
    def judged(self) -> list[StepHealth]:
        """The steps with a reference and enough movement (``MIN_EXITS`` leads leaving) to be judged."""
        return [s for s in self.steps if s.gap is not None and s.exits >= MIN_EXITS]

    def sentence(self) -> str:
        """One line for a digest or a dashboard."""
        if self.worst is None:
            return "No bottleneck: " + (self.notes[-1] if self.notes else "every step is at or above its reference")
        w = self.worst
        return (f"Bottleneck: {w.stage} -> {w.next_stage} converts {w.recent:.0%} against {w.reference:.0%} "
                f"({self.reference}), about {w.deals_per_month:.1f} deal(s) a month lost")


def exits(rows: list[tuple[str | None, str, int]], chain: Chain) -> dict[str, tuple[int, int]]:
    """(previous stage, new stage, count) moves -> {stage: (advanced, left)} for each open stage of the path."""
    result: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    position = {key: i for i, key in enumerate(chain.keys)}
    for previous, to, count in rows:
        if previous not in position or previous == chain.won or previous == to:
            continue
        result[previous][1] += count
        if position.get(to, -1) > position[previous]:
            result[previous][0] += count
    return {stage: (advanced, left) for stage, (advanced, left) in result.items()}


def assess(chain: Chain, recent: dict[str, tuple[int, int]], reference: dict[str, float], reference_kind: str,
           won_from: dict[str, float], window_days: int, plan_id: int | None = None) -> Bottleneck:
    """Compare each step's recent conversion with its reference and pick the worst shortfall."""
    steps, notes = [], []
    for stage, following in chain.transitions():
        advanced, left = recent.get(stage, (0, 0))
        rate = advanced / left if left else None
        ref = reference.get(stage)
        gap = ref - rate if rate is not None and ref is not None else None
        cost = None
        if gap is not None:
            cost = round(max(gap, 0.0) * left * DAYS_PER_MONTH / window_days * won_from.get(following, 0.0), 2)
        steps.append(StepHealth(stage, following, left, advanced, _r(rate), _r(ref), _r(gap), cost))
    found = Bottleneck(reference=reference_kind, plan_id=plan_id, window_days=window_days, steps=steps, worst=None,
                       notes=notes)
    below = [s for s in found.judged if s.gap > 0]
    if not found.judged:
        notes.append(f"too little movement to judge: no step had {MIN_EXITS} leads leaving it in the last {window_days} days")
    elif not below:
        notes.append(f"every step is at or above its {reference_kind}")
    found.worst = max(below, key=lambda s: (s.gap, s.deals_per_month or 0.0)) if below else None
    return found


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def moves(session: Session, start: datetime, end: datetime) -> list[tuple[str | None, str, int]]:
    """(previous stage by time, new stage, count) of the stage changes in [start, end)."""
    tune_for_reports(session)
    previous = sa.func.lag(StageChange.to_stage).over(partition_by=StageChange.lead_id,
                                                      order_by=(StageChange.changed_at, StageChange.id))
    ordered = sa.select(sa.func.coalesce(previous, StageChange.from_stage).label("previous"), StageChange.to_stage,
                        StageChange.changed_at).subquery()
    query = (sa.select(ordered.c.previous, ordered.c.to_stage, sa.func.count())
             .where(ordered.c.changed_at >= start, ordered.c.changed_at < end)
             .group_by(ordered.c.previous, ordered.c.to_stage))
    return [tuple(row) for row in session.execute(query)]


def bottleneck(session: Session, chain: Chain, won_from: dict[str, float], now: datetime, plan: Plan | None = None,
               window_days: int = WINDOW_DAYS, trailing_days: int = TRAILING_DAYS) -> Bottleneck:
    """The bottleneck as of ``now``, against ``plan`` (``backwards_plan.latest_plan``) or the trailing average."""
    window_start = now - timedelta(days=window_days)
    recent = exits(moves(session, window_start, now), chain)
    if plan is not None:
        reference = {c["stage"]: c["rate"] for c in plan.result.get("conversions", [])}
        return assess(chain, recent, reference, "plan", won_from, window_days, plan.id)
    trailing = exits(moves(session, window_start - timedelta(days=trailing_days), window_start), chain)
    reference = {stage: advanced / left for stage, (advanced, left) in trailing.items() if left}
    return assess(chain, recent, reference, "trailing average", won_from, window_days)
