"""The suppression list, and stopping everything queued for a lead.

``suppress`` is the one way an address becomes unsendable (unsubscribe, hard
bounce, complaint, or by hand): it records the address, sets the lead's status,
exits every active enrollment of the lead and cancels its queued messages, in
the caller's transaction. The worker checks the list again right before each
SMTP transaction (see ``sending``), so a message already handed to a worker is
stopped too.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, select

from .addresses import normalise
from .models import SUPPRESSION_REASONS, Enrollment, Lead, Message, Suppression
from .stages import on_unsubscribe

LEAD_STATUS_FOR_REASON = {"unsubscribed": "unsubscribed", "bounce_hard": "bounced", "complaint": "complained"}


def exit_enrollments(session: Session, enrollment_ids: list[int], reason: str, now: datetime) -> int:
    """Exit these enrollments (if still running) and cancel their queued messages; return how many exited."""
    if not enrollment_ids:
        return 0
    session.execute(sa.update(Message).where(Message.enrollment_id.in_(enrollment_ids), Message.status == "queued")
                    .values(status="cancelled", error=reason))
    return session.execute(
        sa.update(Enrollment).where(Enrollment.id.in_(enrollment_ids), Enrollment.status.in_(("active", "paused")))
        .values(status="exited", exit_reason=reason, finished_at=now, next_run_at=None)
    ).rowcount or 0


def stop_lead(session: Session, lead_id: int, reason: str, now: datetime) -> int:
    """Exit every running enrollment of a lead and cancel its queued messages."""
    running = session.exec(select(Enrollment.id).where(
        Enrollment.lead_id == lead_id, Enrollment.status.in_(("active", "paused")))).all()
    return exit_enrollments(session, list(running), reason, now)


def suppress(session: Session, email: str, reason: str, now: datetime, note: str = "") -> bool:
    """Add ``email`` to the list (no-op if present) and stop its lead; True if it was new."""
    if reason not in SUPPRESSION_REASONS:
        raise ValueError(f"unknown suppression reason {reason!r}; use one of {', '.join(SUPPRESSION_REASONS)}")
    email = normalise(email)
    existing = session.exec(select(Suppression).where(Suppression.email == email)).first()
    if existing is None:
        session.add(Suppression(email=email, reason=reason, note=note[:500], created_at=now))
    lead = session.exec(select(Lead).where(Lead.email == email)).first()
    if lead is not None:
        if reason in LEAD_STATUS_FOR_REASON:
            lead.status = LEAD_STATUS_FOR_REASON[reason]
            lead.updated_at = now
            session.add(lead)
        stop_lead(session, lead.id, f"suppressed: {reason}", now)
        if reason == "unsubscribed":
            on_unsubscribe(session, lead, now)  # the stage rule: unsubscribed leads are archived
    session.flush()
    return existing is None


def unsuppress(session: Session, email: str, now: datetime) -> bool:
    """Remove ``email`` from the list and make its lead sendable again.

    The sequences it was stopped in stay stopped: enroll it again to resume.
    """
    email = normalise(email)
    removed = bool(session.execute(sa.delete(Suppression).where(Suppression.email == email)).rowcount)
    if removed:
        session.execute(sa.update(Lead).where(Lead.email == email, Lead.status.in_(tuple(LEAD_STATUS_FOR_REASON.values())))
                        .values(status="active", updated_at=now))
    return removed
