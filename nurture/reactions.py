"""What the engine does when a lead acts: exit rules, status changes, suppression.

Called by the event drainer (opens, clicks) and the inbound pipeline (replies,
auto-replies, bounces, complaints) inside their transaction. Per-sequence exit
rules: on reply (default on), on a reply from anyone at the lead's company
domain (option; never for free-mail domains), on a human click (option);
unsubscribe, hard bounce and complaint always stop everything (``suppress``).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

from sqlmodel import Session, select

from .config import Settings
from .models import Enrollment, Event, Lead, Message, Sequence
from .refusal import on_reply as refusal_on_reply
from .send_window import zone
from .stages import on_engagement
from .suppression import exit_enrollments
from .warmup import on_activity

FREE_MAIL_DOMAINS = frozenset({
    "gmail.com", "googlemail.com", "yahoo.com", "outlook.com", "hotmail.com", "live.com", "icloud.com", "me.com",
    "aol.com", "proton.me", "protonmail.com", "gmx.de", "gmx.net", "web.de", "mail.ru", "bk.ru", "inbox.ru",
    "list.ru", "yandex.ru", "ya.ru", "yandex.com", "rambler.ru",
})


def _active_enrollments(session: Session, lead_ids: list[int], flag) -> list[int]:
    return list(session.exec(
        select(Enrollment.id).join(Sequence, Sequence.id == Enrollment.sequence_id).where(
            Enrollment.lead_id.in_(lead_ids), Enrollment.status.in_(("active", "paused")), flag.is_(True))
    ).all())


def on_reply(session: Session, lead: Lead, from_address: str, now: datetime) -> list[str]:
    """Mark the lead replied and exit its sequences that stop on reply (and domain rules)."""
    actions = []
    if lead.status in ("active", "paused", "replied"):  # an unsubscribed or bounced lead stays so
        lead.status, lead.paused_until, lead.updated_at = "replied", None, now
        session.add(lead)
    actions += refusal_on_reply(session, lead, now)  # a lost lead answering its follow-up: before the exit rules
    on_engagement(session, lead, now, "replied")
    exited = exit_enrollments(session, _active_enrollments(session, [lead.id], Sequence.exit_on_reply), "replied", now)
    actions.append(f"lead {lead.email} replied; {exited} sequence(s) stopped")
    domain = (from_address or lead.email).rpartition("@")[2].lower()
    if domain and domain not in FREE_MAIL_DOMAINS:
        colleagues = list(session.exec(select(Lead.id).where(Lead.email.like(f"%@{domain}"), Lead.id != lead.id)).all())
        if colleagues:
            count = exit_enrollments(session, _active_enrollments(session, colleagues, Sequence.exit_on_domain_reply),
                          f"a colleague at {domain} replied", now)
            if count:
                actions.append(f"{count} sequence(s) of colleagues at {domain} stopped")
    return actions


def on_auto_reply(session: Session, settings: Settings, lead: Lead, return_date: date | None, now: datetime) -> list[str]:
    """Pause the lead until the return date it named (its local morning), or for the default pause."""
    if return_date is not None:
        tz = zone(lead.timezone or settings.default_timezone)
        until = datetime.combine(return_date, time(9), tzinfo=tz)
    else:
        until = now + timedelta(days=settings.auto_reply_pause_days)
    if until <= now:
        return [f"out of office until {until:%Y-%m-%d}, already past: nothing paused"]
    if lead.status in ("active", "paused"):
        lead.status, lead.paused_until, lead.updated_at = "paused", until, now
        session.add(lead)
    return [f"lead {lead.email} paused until {until.isoformat()}"]


def on_tracking_events(session: Session, events: list[Event], now: datetime, settings: Settings) -> None:
    """Exit on click: a human click exits that message's sequence when it asks for it (and engages the lead)."""
    clicked_at: dict[int, datetime] = {}
    for event in events:
        if event.kind == "click" and not event.is_machine:
            clicked_at[event.lead_id] = min(event.occurred_at, clicked_at.get(event.lead_id, event.occurred_at))
    if clicked_at:
        for lead in session.exec(select(Lead).where(Lead.id.in_(clicked_at))).all():
            on_engagement(session, lead, clicked_at[lead.id], "clicked a link")
    if events:  # the batch's leads: new probabilities, warm-up notices
        on_activity(session, settings, [e.lead_id for e in events], now)
    message_ids = {e.message_id for e in events if e.kind == "click" and not e.is_machine and e.message_id}
    if not message_ids:
        return
    enrollment_ids = list(session.exec(
        select(Message.enrollment_id).join(Sequence, Sequence.id == Message.sequence_id).where(
            Message.id.in_(message_ids), Sequence.exit_on_click.is_(True))).all())
    exit_enrollments(session, enrollment_ids, "clicked a link", now)
