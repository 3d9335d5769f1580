"""One lead as a document: its fields, enrollments, messages and events (CLI ``leads show``, later the API)."""

from __future__ import annotations

from sqlmodel import Session, select

from .addresses import normalise
from .errors import NurtureError
from .models import Enrollment, Event, Lead, LeadTag, Message, Sequence, Step, Suppression


def lead_document(session: Session, email: str) -> dict:
    lead = session.exec(select(Lead).where(Lead.email == normalise(email))).first()
    if lead is None:
        raise NurtureError(f"no lead {email!r}")
    sequences = {s.id: s.key for s in session.exec(select(Sequence))}
    enrollments = session.exec(select(Enrollment).where(Enrollment.lead_id == lead.id).order_by(Enrollment.id)).all()
    messages = session.exec(select(Message).where(Message.lead_id == lead.id).order_by(Message.id)).all()
    step_ids = {m.step_id for m in messages} | {e.next_step_id for e in enrollments if e.next_step_id}
    steps = {s.id: s for s in session.exec(select(Step).where(Step.id.in_(step_ids)))}
    suppression = session.exec(select(Suppression).where(Suppression.email == lead.email)).first()
    events = session.exec(select(Event).where(Event.lead_id == lead.id).order_by(Event.occurred_at, Event.id)).all()
    return {
        "lead": {**lead.model_dump(exclude={"custom"}), "custom": lead.custom,
                 "tags": list(session.exec(select(LeadTag.tag).where(LeadTag.lead_id == lead.id)).all()),
                 "suppressed": suppression.reason if suppression else None},
        "enrollments": [
            {"id": e.id, "sequence": sequences.get(e.sequence_id), "status": e.status,
             "next_step": steps[e.next_step_id].key if e.next_step_id in steps else None,
             "next_run_at": e.next_run_at, "started_at": e.started_at, "finished_at": e.finished_at,
             "exit_reason": e.exit_reason}
            for e in enrollments
        ],
        "messages": [
            {"id": m.id, "sequence": sequences.get(m.sequence_id), "step": steps[m.step_id].key, "kind": steps[m.step_id].kind,
             "status": m.status, "variant": m.variant, "subject": m.subject, "message_id": m.message_id,
             "attempts": m.attempts, "created_at": m.created_at, "sent_at": m.sent_at,
             "smtp_code": m.smtp_code, "smtp_response": m.smtp_response, "error": m.error}
            for m in messages
        ],
        "events": [
            {"id": e.id, "kind": e.kind, "machine": e.is_machine, "occurred_at": e.occurred_at,
             "message_id": e.message_id, "data": e.data}
            for e in events
        ],
    }
