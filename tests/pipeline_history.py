"""Test data for the analytics tests: lead histories through the shipped pipeline.

``add_lead`` writes one lead with its stage changes (``[(stage, when), ...]``, the last one is where it
is now); ``simulate`` draws leads through a pipeline with known conversions.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from sqlmodel import Session

from nurture.models import Lead, StageChange

PATH = ("new", "contacted", "engaged", "qualified", "proposal", "negotiation", "won")  # the shipped pipeline


def add_lead(session: Session, email: str, changes: list[tuple[str, datetime]], *, created_at: datetime | None = None,
             source: str = "", owner_id: int | None = None, probability: float = 0.0,
             deal_value: float | None = None, values: dict[str, float] | None = None, commit: bool = True) -> Lead:
    """A lead and its stage history; ``values`` puts a deal value on the change to that stage."""
    created = created_at or changes[0][1]
    stage, moved = changes[-1] if changes else ("new", None)
    lead = Lead(email=email, source=source, owner_id=owner_id, stage=stage, stage_changed_at=moved,
                probability=probability, deal_value=deal_value, created_at=created, updated_at=created)
    session.add(lead)
    session.flush()
    previous = None
    for to_stage, when in changes:
        session.add(StageChange(lead_id=lead.id, from_stage=previous, to_stage=to_stage, changed_at=when,
                                reason="import", deal_value=(values or {}).get(to_stage)))
        previous = to_stage
    if commit:
        session.commit()
    return lead


def simulate(session: Session, conversions: dict[str, float], leads: int, start: datetime, *, seed: int = 1,
             days_per_stage: float = 5.0, spread_days: int = 84, lost_stage: str = "lost",
             deal_value: float = 1000.0, prefix: str = "sim") -> dict[str, int]:
    """``leads`` leads entering over ``spread_days`` from ``start``, each advancing from a stage with
    that stage's conversion (else lost), an exponential ``days_per_stage`` apart. Returns reached counts."""
    rng = random.Random(seed)
    reached = dict.fromkeys(PATH, 0)
    for i in range(leads):
        when = start + timedelta(days=rng.uniform(0, spread_days))
        changes = [("new", when)]
        reached["new"] += 1
        for stage, following in zip(PATH, PATH[1:]):
            when = when + timedelta(days=rng.expovariate(1 / days_per_stage))
            if rng.random() >= conversions[stage]:
                changes.append((lost_stage, when))
                break
            changes.append((following, when))
            reached[following] += 1
        won = changes[-1][0] == "won"
        add_lead(session, f"{prefix}{i}@example.com", changes, deal_value=deal_value if won else None,
                 values={"won": deal_value}, commit=False)
    session.commit()
    return reached
