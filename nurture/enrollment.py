"""Put leads into a sequence.

``enroll`` selects leads by a filter (stage, owner, tag, ids or emails; all of
them must match), refuses those that cannot be sent to with a reason
(suppressed, stopped, already enrolled), and creates one active enrollment per
lead with its first step scheduled in the lead's business hours. A partial
unique index keeps one active enrollment per lead and sequence even when two
enrollments race.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, select

from .addresses import normalise
from .config import Settings
from .errors import EnrollmentError
from .models import SENDABLE_LEAD_STATUSES, Enrollment, Lead, LeadTag, Sequence, Suppression, User
from .scheduling import first_step, lead_zone, live_steps, schedule_step

CHUNK = 1000


@dataclass
class LeadFilter:
    stage: str | None = None
    owner: str | None = None  # the owner's email
    tag: str | None = None
    lead_ids: list[int] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)
    everyone: bool = False

    def is_empty(self) -> bool:
        return not (self.stage or self.owner or self.tag or self.lead_ids or self.emails or self.everyone)


@dataclass
class EnrollReport:
    enrolled: int = 0
    refused: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    @property
    def refused_count(self) -> int:
        return sum(len(v) for v in self.refused.values())


def select_leads(session: Session, lead_filter: LeadFilter):
    if lead_filter.is_empty():
        raise EnrollmentError("say which leads: --stage, --owner, --tag, --lead-id, --email or --all")
    query = select(Lead.id, Lead.email, Lead.status, Lead.timezone)
    if lead_filter.stage:
        query = query.where(Lead.stage == lead_filter.stage)
    if lead_filter.owner:
        owner_id = session.exec(select(User.id).where(User.email == normalise(lead_filter.owner))).first()
        if owner_id is None:
            raise EnrollmentError(f"--owner: no user {lead_filter.owner!r}")
        query = query.where(Lead.owner_id == owner_id)
    if lead_filter.tag:
        query = query.where(Lead.id.in_(select(LeadTag.lead_id).where(LeadTag.tag == lead_filter.tag)))
    if lead_filter.lead_ids:
        query = query.where(Lead.id.in_(lead_filter.lead_ids))
    if lead_filter.emails:
        query = query.where(Lead.email.in_([normalise(e) for e in lead_filter.emails]))
    return session.exec(query.order_by(Lead.id)).all()


def enroll(session: Session, settings: Settings, sequence_key: str, lead_filter: LeadFilter, now: datetime) -> EnrollReport:
    sequence = session.exec(select(Sequence).where(Sequence.key == sequence_key)).first()
    if sequence is None:
        known = ", ".join(session.exec(select(Sequence.key)).all()) or "none: run `nurture campaigns load`"
        raise EnrollmentError(f"no sequence {sequence_key!r} (known: {known})")
    if sequence.status == "archived":
        raise EnrollmentError(f"sequence {sequence_key!r} is archived")
    step = first_step(live_steps(session, sequence.id))
    if step is None:
        raise EnrollmentError(f"sequence {sequence_key!r} has no steps")
    leads = select_leads(session, lead_filter)
    report = EnrollReport()
    for start in range(0, len(leads), CHUNK):
        part = leads[start:start + CHUNK]
        emails = [lead.email for lead in part]
        suppressed = dict(session.exec(select(Suppression.email, Suppression.reason).where(Suppression.email.in_(emails))).all())
        enrolled = set(session.exec(select(Enrollment.lead_id).where(
            Enrollment.sequence_id == sequence.id, Enrollment.status == "active",
            Enrollment.lead_id.in_([lead.id for lead in part]))).all())
        rows = []
        for lead in part:
            if lead.email in suppressed:
                report.refused[f"suppressed ({suppressed[lead.email]})"].append(lead.email)
            elif lead.status not in SENDABLE_LEAD_STATUSES:
                report.refused[f"lead is {lead.status}"].append(lead.email)
            elif lead.id in enrolled:
                report.refused["already enrolled"].append(lead.email)
            else:
                tz = lead_zone(lead.timezone, sequence, settings)
                rows.append({"lead_id": lead.id, "sequence_id": sequence.id, "status": "active",
                             "next_step_id": step.id, "started_at": now, "exit_reason": "",
                             "next_run_at": schedule_step(step, sequence, tz, lead.id, now, now)})
        if rows:
            session.execute(sa.insert(Enrollment), rows)
            report.enrolled += len(rows)
    session.commit()
    return report
