"""The analytics section of the managers' weekly digest: the bottleneck, and the plan against actuals.

``manager_section`` returns plain JSON-able data for the digest's payload (the
weekly review stores it in ``Notification.payload``; its templates print it).
A question that cannot be answered yet (no movement, no plan) gives a sentence
saying so, never an error that would stop the review.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session

from ..conversion import stage_probabilities
from .backwards_plan import latest_plan, progress
from .bottleneck import bottleneck
from .chain import load_chain


def manager_section(session: Session, now: datetime) -> dict:
    chain = load_chain(session)
    plan = latest_plan(session, now)
    won_from = {key: p.blended for key, p in stage_probabilities(session).items()}
    found = bottleneck(session, chain, won_from, now, plan)
    return {
        "bottleneck": found.sentence(),
        "bottleneck_step": {"stage": found.worst.stage, "next_stage": found.worst.next_stage,
                            "deals_per_month": found.worst.deals_per_month} if found.worst else None,
        "plan": progress(session, chain, plan, now).as_dict() if plan else None,
    }
