"""Cooled leads come back: on their return date they are enrolled in the re-offer sequence.

A lead cooled by the weekly review (or handed over after a refusal) sits in a
cold stage with ``returns_at`` 3..6 months ahead. ``return_cooled_leads`` (the
scheduler calls it every few minutes; it is one indexed query when nobody is
due) enrolls every due lead in each active sequence with ``trigger:
cold_return`` through ``enrollment.enroll``, which refuses suppressed and
stopped leads and leads already in that sequence, with the reason. Either way
the lead's ``returns_at`` is cleared in the same transaction, so a lead is
handled once per return date. A lead still running another sequence (the
default one ends with its own re-offer) waits until that one ends: one
re-offer at a time, never two; the re-offer's first step is then sent by the
normal tick within the lead's send window.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, select

from .config import Settings
from .enrollment import LeadFilter, enroll
from .models import Enrollment, Lead, Sequence
from .pipeline import stored_pipeline

TRIGGER = "cold_return"
BATCH = 1000


@dataclass
class ReturnReport:
    due: int = 0
    enrolled: int = 0
    refused: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    waiting: int = 0  # due, but still in another sequence: they return when it ends
    problem: str = ""  # why nobody could be enrolled, e.g. no sequence with trigger cold_return


def return_cooled_leads(session: Session, settings: Settings, now: datetime) -> ReturnReport:
    """Enroll the cold leads whose return date has come; commits per batch."""
    report = ReturnReport()
    cold = [stage.key for stage in stored_pipeline(session).stages if stage.cold]
    busy = (select(Enrollment.lead_id).join(Sequence, Sequence.id == Enrollment.sequence_id)
            .where(Enrollment.status.in_(("active", "paused")), Sequence.trigger != TRIGGER))
    due = sa.and_(Lead.returns_at.is_not(None), Lead.returns_at <= now, Lead.stage.in_(cold))
    report.waiting = session.exec(select(sa.func.count()).select_from(Lead).where(due, Lead.id.in_(busy))).one()
    due_query = select(Lead.id).where(due, Lead.id.not_in(busy)).order_by(Lead.id).limit(BATCH)
    sequences = session.exec(select(Sequence.key).where(Sequence.trigger == TRIGGER, Sequence.status == "active")
                             .order_by(Sequence.id)).all()
    if not sequences:
        count = session.exec(select(sa.func.count()).select_from(due_query.subquery())).one()
        if count:  # leave their dates alone: they return once the sequence is loaded
            report.due = count
            report.problem = f"no active sequence with trigger: {TRIGGER}: run `nurture campaigns load`"
        session.commit()  # end the read: on SQLite every transaction holds the write lock
        return report
    while ids := list(session.exec(due_query).all()):
        report.due += len(ids)
        session.execute(sa.update(Lead).where(Lead.id.in_(ids)).values(returns_at=None, updated_at=now))
        for key in sequences:
            outcome = enroll(session, settings, key, LeadFilter(lead_ids=ids), now)  # commits the batch
            report.enrolled += outcome.enrolled
            for reason, emails in outcome.refused.items():
                report.refused[reason].extend(emails)
    session.commit()  # end the last (empty) read: on SQLite every transaction holds the write lock
    return report
