"""A lead's timeline for its page: messages, events, stage changes, notes, enrollments, notifications.

No Flask here. Built on ``lead_view.lead_document`` (what ``nurture leads show``
prints), with the rows that document does not carry, newest first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, select

from ..models import Note, Notification, StageChange, User


@dataclass
class Entry:
    at: datetime
    kind: str  # message | event name | stage | note | enrolled | exited | notification
    title: str
    detail: str = ""
    machine: bool = False
    status: str = ""


def timeline(session: Session, document: dict, lead_id: int) -> list[Entry]:
    entries: list[Entry] = []
    for m in document["messages"]:
        what = "Rep task" if m["kind"] == "rep_task" else "Email"
        detail = m["error"] or m["smtp_response"] or ""
        entries.append(Entry(m["sent_at"] or m["created_at"], "message", f"{what} · {m['step']} ({m['sequence']})",
                             (m["subject"] + (f" — {detail}" if detail else "")).strip(), status=m["status"]))
    subjects = {m["id"]: m["subject"] for m in document["messages"]}
    for e in document["events"]:
        reasons = ", ".join(e["data"].get("reasons", [])) if isinstance(e["data"], dict) else ""
        url = e["data"].get("url", "") if isinstance(e["data"], dict) else ""
        detail = " · ".join(p for p in (subjects.get(e["message_id"], ""), url, reasons) if p)
        entries.append(Entry(e["occurred_at"], e["kind"], e["kind"].replace("_", " ").capitalize(), detail,
                             machine=e["machine"]))
    for en in document["enrollments"]:
        entries.append(Entry(en["started_at"], "enrolled", f"Enrolled in {en['sequence']}",
                             f"next: {en['next_step']}" if en["status"] == "active" and en["next_step"] else "",
                             status=en["status"]))
        if en["finished_at"]:
            entries.append(Entry(en["finished_at"], "exited", f"Left {en['sequence']}", en["exit_reason"],
                                 status=en["status"]))
    users = dict(session.exec(select(User.id, User.name)).all())
    for change in session.exec(select(StageChange).where(StageChange.lead_id == lead_id)):
        who = users.get(change.by_user_id) or change.reason
        detail = " · ".join(p for p in (change.lost_reason and f"reason: {change.lost_reason}", change.note,
                                        change.deal_value is not None and f"deal value {change.deal_value:g}") if p)
        entries.append(Entry(change.changed_at, "stage", f"Stage {change.from_stage or '—'} → {change.to_stage} ({who})",
                             detail))
    for note in session.exec(select(Note).where(Note.lead_id == lead_id)):
        entries.append(Entry(note.created_at, "note", f"Note by {users.get(note.user_id, 'someone')}", note.body))
    for notice in session.exec(select(Notification).where(Notification.lead_id == lead_id)):
        entries.append(Entry(notice.created_at, "notification", f"Notification to {users.get(notice.user_id, '—')}: "
                             f"{notice.kind.replace('_', ' ')} ({notice.channel})", notice.reason, status=notice.status))
    return sorted(entries, key=lambda entry: entry.at, reverse=True)
