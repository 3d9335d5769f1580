"""Process one inbound email (from IMAP, the webhook or the CLI): classify, match, react.

Matching, in order: our Message-IDs in In-Reply-To / References (also the
original's Message-ID inside a bounce or complaint); a signed per-message
address in To/Cc (``reply+TOKEN@``, ``unsubscribe+TOKEN@``); the failed
recipient of a bounce; the sender's address. Each inbound message is processed
once: its Message-ID (or a hash of its bytes) is recorded in ``inbound_mail``
with the verdict, what it matched and why, and a second delivery is a no-op.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from email.parser import BytesHeaderParser
from email.policy import compat32

import sqlalchemy as sa
from sqlmodel import Session, select

from .classification import Verdict, classify
from .addresses import normalise
from .config import Settings
from .models import Event, InboundMail, Lead, Message
from .reactions import on_auto_reply, on_reply
from .signing import verify
from .suppression import suppress



@dataclass
class InboundResult:
    kind: str
    duplicate: bool = False
    lead: str | None = None
    message_id: int | None = None
    matched_by: str = "none"
    actions: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


def dedupe_key(raw: bytes) -> tuple[str, str]:
    """(key, subject): the inbound Message-ID, or a hash of the bytes when it has none."""
    headers = BytesHeaderParser(policy=compat32).parsebytes(raw[:256 * 1024])
    message_id = str(headers.get("Message-ID", "") or "").strip()
    subject = str(headers.get("Subject", "") or "")
    key = f"mid:{message_id[:290]}" if message_id else "sha256:" + hashlib.sha256(raw).hexdigest()
    return key, subject


def _token_message(settings: Settings, addresses: tuple[str, ...], purpose: str) -> int | None:
    """The message signed into a ``prefix+TOKEN@domain`` address: ``unsubscribe+`` for unsubscribes, any other prefix for replies."""
    for address in addresses:
        prefix, plus, token = address.partition("@")[0].partition("+")
        if plus and (prefix == "unsubscribe") == (purpose == "unsubscribe"):
            found = verify(settings.secret_key, purpose, token)
            if found is not None:
                return found
    return None


def _match(session: Session, settings: Settings, verdict: Verdict) -> tuple[Message | None, Lead | None, str]:
    references = [r.strip().lower() for r in verdict.references if r.strip()]
    if references:
        message = session.exec(select(Message).where(sa.func.lower(Message.message_id).in_(references))
                               .order_by(Message.id.desc())).first()
        if message is not None:
            return message, session.get(Lead, message.lead_id), "references"
    token_id = _token_message(settings, verdict.to_addresses, "reply")
    if token_id is not None and (message := session.get(Message, token_id)) is not None:
        return message, session.get(Lead, message.lead_id), "reply_token"
    candidates = [("recipient", r.address) for r in verdict.recipients] + [("sender", verdict.from_address)]
    for how, address in candidates:
        if not address:
            continue
        lead = session.exec(select(Lead).where(Lead.email == normalise(address))).first()
        if lead is not None:
            message = session.exec(select(Message).where(Message.lead_id == lead.id, Message.status.in_(("sent", "bounced")))
                                   .order_by(Message.id.desc())).first()
            return message, lead, how
    return None, None, "none"


def process_raw(session: Session, settings: Settings, raw: bytes, source: str, now: datetime) -> InboundResult:
    key, subject = dedupe_key(raw)
    if session.exec(select(InboundMail.id).where(InboundMail.dedupe_key == key)).first() is not None:
        return InboundResult(kind="duplicate", duplicate=True)
    verdict = classify(raw, now.date())
    result = InboundResult(kind=verdict.kind, reasons=list(verdict.reasons))
    unsubscribe_id = _token_message(settings, verdict.to_addresses, "unsubscribe")
    if unsubscribe_id is not None and (message := session.get(Message, unsubscribe_id)) is not None:
        lead = session.get(Lead, message.lead_id)
        session.add(Event(lead_id=lead.id, message_id=message.id, kind="unsubscribe", occurred_at=now, data={"via": "mailto"}))
        suppress(session, lead.email, "unsubscribed", now, note=f"mailto unsubscribe for message {message.id}")
        result.kind, result.matched_by = "unsubscribe", "unsubscribe_token"
        result.lead, result.message_id = lead.email, message.id
        result.actions.append(f"{lead.email} unsubscribed by mail")
    else:
        message, lead, result.matched_by = _match(session, settings, verdict)
        result.lead = lead.email if lead else None
        result.message_id = message.id if message else None
        if lead is not None:
            result.actions += _react(session, settings, verdict, lead, message, now)
    if result.lead is not None:  # a reply always warms the lead; a bounce or an unsubscribe lowers it
        from .warmup import after_inbound

        result.actions += after_inbound(session, settings, result.lead, result.kind, now)
    session.add(InboundMail(dedupe_key=key, received_at=now, source=source, kind=result.kind,
                            from_address=verdict.from_address[:320], subject=subject[:2000],
                            lead_id=session.exec(select(Lead.id).where(Lead.email == result.lead)).first() if result.lead else None,
                            message_id=result.message_id, matched_by=result.matched_by, reasons=list(verdict.reasons)))
    session.commit()
    return result


def _react(session: Session, settings: Settings, verdict: Verdict, lead: Lead, message: Message | None, now: datetime) -> list[str]:
    message_id = message.id if message else None
    kind = verdict.kind
    if kind == "reply":
        session.add(Event(lead_id=lead.id, message_id=message_id, kind="reply", occurred_at=now,
                          data={"text": verdict.reply_text[:10000], "from": verdict.from_address}))
        return on_reply(session, lead, verdict.from_address, now)
    if kind == "auto_reply":
        session.add(Event(lead_id=lead.id, message_id=message_id, kind="auto_reply", occurred_at=now,
                          data={"return_date": verdict.return_date.isoformat() if verdict.return_date else None}))
        return on_auto_reply(session, settings, lead, verdict.return_date, now)
    if kind in ("bounce_hard", "bounce_soft"):
        return _bounce(session, settings, verdict, lead, message_id, now)
    if kind == "complaint":
        session.add(Event(lead_id=lead.id, message_id=message_id, kind="complaint", occurred_at=now, data={}))
        suppress(session, lead.email, "complaint", now, note="spam complaint (ARF)")
        return [f"{lead.email} complained: suppressed"]
    return []


def _bounce(session: Session, settings: Settings, verdict: Verdict, lead: Lead, message_id: int | None, now: datetime) -> list[str]:
    actions = []
    failed = {normalise(r.address): r for r in verdict.recipients}
    targets = [lead] + [l for l in session.exec(select(Lead).where(Lead.email.in_(list(failed)), Lead.id != lead.id))]
    for target in targets:
        recipient = failed.get(target.email)
        hard = recipient.hard if recipient else verdict.kind == "bounce_hard"
        kind = "bounce_hard" if hard else "bounce_soft"
        data = {"status": recipient.status if recipient else "", "diagnostic": recipient.diagnostic if recipient else ""}
        target_message = message_id if target.id == lead.id else None
        session.add(Event(lead_id=target.id, message_id=target_message, kind=kind, occurred_at=now, data=data))
        if hard:
            if target_message:
                session.execute(sa.update(Message).where(Message.id == target_message).values(status="bounced", error=f"bounced: {data['status']}"))
            suppress(session, target.email, "bounce_hard", now, note=f"bounce {data['status']}".strip())
            actions.append(f"{target.email} hard-bounced ({data['status'] or 'permanent'}): suppressed")
            continue
        session.flush()
        soft = session.exec(select(sa.func.count()).select_from(Event).where(Event.lead_id == target.id, Event.kind == "bounce_soft")).one()
        if soft >= settings.soft_bounce_limit:
            suppress(session, target.email, "bounce_hard", now, note=f"{soft} soft bounces")
            actions.append(f"{target.email}: {soft} soft bounces, suppressed")
        else:
            actions.append(f"{target.email} soft-bounced ({soft} of {settings.soft_bounce_limit})")
    return actions
