"""Send a batch of queued messages: re-check, render, record, hand over.

``send_batch`` is what an RQ job runs. For each message, in order:

1. render subject, HTML and text for the lead (the A/B subject variant is fixed
   per lead and step, and recorded);
2. claim it with one conditional UPDATE, ``queued`` -> ``sending``, that also
   checks right then that the address is not suppressed, the lead is still
   sendable and the enrollment has not exited; the claim is committed before
   the SMTP transaction starts, so a crash can never cause a second copy;
3. send it over the batch's single SMTP connection;
4. record the answer in the same transaction as the next message's claim (one
   commit per message).

A 4xx answer puts the message back in the queue with a growing delay (bounded
by ``max_attempts``); a 5xx on the recipient is a hard bounce (suppression,
every sequence of the lead stops); a 5xx on the content fails the message and
exits that enrollment. Running the same batch twice sends nothing twice:
only ``queued`` messages are claimed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable

import sqlalchemy as sa
from sqlmodel import Session, select

from .config import Settings
from .errors import PermanentSendError, TransientSendError
from .mime import ascii_address, build_message
from .models import SENDABLE_LEAD_STATUSES, EmailTemplate, Enrollment, Event, Lead, Message, Sequence, Step, Suppression, User
from .rendering import Renderer
from .send_window import seed_fraction
from .signing import sign
from .suppression import suppress
from .tracking import rewrite
from .transports import Transport, UnknownOutcomeError

log = logging.getLogger(__name__)
RETRY_DELAYS = (60, 300, 900, 3600, 7200, 14400)  # seconds, by attempt


@dataclass
class SendReport:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    bounced: int = 0
    cancelled: int = 0
    ignored: int = 0
    errors: list[str] = field(default_factory=list)


def unsubscribe_links(settings: Settings, message_id: int) -> tuple[str, str]:
    token = sign(settings.secret_key, "unsubscribe", message_id)
    return (f"{settings.base_url.rstrip('/')}/u/{token}",
            f"mailto:unsubscribe+{token}@{settings.mail_domain}?subject=unsubscribe")


def reply_address(settings: Settings, message_id: int) -> str | None:
    """``replies+TOKEN@domain`` when NURTURE_REPLY_ADDRESS is set: a reply that lost its headers still matches."""
    if not settings.reply_address:
        return None
    local, _, domain = settings.reply_address.partition("@")
    return f"{local}+{sign(settings.secret_key, 'reply', message_id)}@{domain}"


def render_context(settings: Settings, lead: Lead, owner: User | None, unsubscribe_url: str) -> dict:
    rep = owner or User(email=settings.from_address, name=settings.from_name)
    return {
        "lead": {"first_name": lead.first_name, "last_name": lead.last_name,
                 "full_name": " ".join(p for p in (lead.first_name, lead.last_name) if p),
                 "company": lead.company, "email": lead.email, "custom": dict(lead.custom or {})},
        "rep": {"name": rep.name, "email": rep.email, "title": rep.title, "phone": rep.phone},
        "sender": {"name": settings.from_name, "email": settings.from_address},
        "postal_address": settings.postal_address,
        "unsubscribe_url": unsubscribe_url,
        "subject": "",
        "base_url": settings.base_url.rstrip("/"),
    }


def pick_variant(lead_id: int, step_key: str, count: int) -> int:
    """The A/B subject variant of a lead for a step: the same every time."""
    return min(int(seed_fraction(lead_id, step_key, "subject") * count), count - 1)


class _Batch:
    """The loaded rows a batch needs, fetched in a handful of queries."""

    def __init__(self, session: Session, message_ids: list[int]) -> None:
        self.messages = list(session.exec(
            select(Message).where(Message.id.in_(message_ids), Message.status == "queued").order_by(Message.id)))
        lead_ids = {m.lead_id for m in self.messages}
        self.leads = {lead.id: lead for lead in session.exec(select(Lead).where(Lead.id.in_(lead_ids)))}
        owner_ids = {lead.owner_id for lead in self.leads.values() if lead.owner_id}
        self.owners = {user.id: user for user in session.exec(select(User).where(User.id.in_(owner_ids)))}
        self.steps = {step.id: step for step in session.exec(
            select(Step).where(Step.id.in_({m.step_id for m in self.messages})))}
        self.sequences = {seq.id: seq for seq in session.exec(
            select(Sequence).where(Sequence.id.in_({m.sequence_id for m in self.messages})))}
        names = {step.template for step in self.steps.values()}
        self.templates = {(t.name, t.language): t for t in session.exec(
            select(EmailTemplate).where(EmailTemplate.name.in_(names)))}
        session.expunge_all()


def send_batch(session: Session, settings: Settings, message_ids: list[int], transport: Transport,
               renderer: Renderer, now: Callable[[], datetime]) -> SendReport:
    report = SendReport()
    batch = _Batch(session, message_ids)
    report.ignored = len(set(message_ids)) - len(batch.messages)
    pending: list[Callable[[], None]] = []  # the previous message's outcome, written with the next claim

    def flush() -> None:
        for write in pending:
            write()
        pending.clear()

    for index, message in enumerate(batch.messages):
        lead = batch.leads[message.lead_id]
        step = batch.steps[message.step_id]
        try:
            variant, subject, data = _compose(settings, batch, renderer, message, lead, step, now())
        except Exception as exc:  # a template that passed load-time checks but fails for this lead
            log.exception("rendering message %s failed", message.id)
            pending.append(lambda m=message, e=exc: _fail(session, m.id, f"render error: {type(e).__name__}: {e}"))
            report.failed += 1
            continue
        flush()
        claimed = _claim(session, settings, message, lead, variant, subject, now())
        session.commit()
        if not claimed:
            _explain_unclaimed(session, message, lead, now(), report)
            session.commit()
            continue
        try:
            answer = transport.send(settings.from_address, ascii_address(lead.email), data)
        except TransientSendError as exc:
            pending.append(lambda m=message, e=exc: _retry_or_fail(session, settings, m, e, now(), report))
            if exc.code is None:  # the server cannot be reached: leave the rest for a later attempt
                flush()
                _postpone(session, [m.id for m in batch.messages[index + 1:]], now() + timedelta(seconds=RETRY_DELAYS[0]))
                report.errors.append(str(exc))
                break
            continue
        except PermanentSendError as exc:
            pending.append(lambda m=message, l=lead, e=exc: _permanent(session, m, l, e, now(), report))
            continue
        except UnknownOutcomeError as exc:
            pending.append(lambda m=message, e=exc: _fail(session, m.id, f"{e}; may have been delivered, not sent again"))
            report.failed += 1
            continue
        pending.append(lambda m=message, a=answer: _sent(session, m.id, a, now()))
        report.sent += 1
    flush()
    session.commit()
    return report


def _compose(settings, batch: _Batch, renderer: Renderer, message: Message, lead: Lead, step: Step, at: datetime):
    template = batch.templates.get((step.template, lead.language)) or batch.templates.get((step.template, settings.default_language))
    if template is None:
        raise LookupError(f"template {step.template!r} is not loaded (run `nurture campaigns load`)")
    language = template.language
    subjects = step.subjects.get(language) or template.subjects
    variant = pick_variant(lead.id, step.key, len(subjects))
    unsubscribe_url, unsubscribe_mailto = unsubscribe_links(settings, message.id)
    context = render_context(settings, lead, batch.owners.get(lead.owner_id), unsubscribe_url)
    rendered = renderer.render(template, subjects[variant], context)
    html, text = rewrite(rendered.html, rendered.text, base=settings.base_url, secret=settings.secret_key,
                         message_id=message.id, keep=(unsubscribe_url,))
    data = build_message(
        from_name=settings.from_name, from_address=settings.from_address,
        to_name=context["lead"]["full_name"], to_address=lead.email,
        subject=rendered.subject, text=text, html=html,
        message_id=message.message_id, date=at,
        unsubscribe_url=unsubscribe_url, unsubscribe_mailto=unsubscribe_mailto,
        reply_to=reply_address(settings, message.id),
    )
    return variant, rendered.subject, data


def _claim(session: Session, settings: Settings, message: Message, lead: Lead, variant: int, subject: str, at: datetime) -> bool:
    """queued -> sending, only if nothing forbids sending right now."""
    sendable = sa.and_(
        Message.id == message.id,
        Message.status == "queued",
        ~sa.exists().where(Suppression.email == lead.email),
        sa.exists().where(Lead.id == message.lead_id, Lead.status.in_(SENDABLE_LEAD_STATUSES),
                          sa.or_(Lead.paused_until.is_(None), Lead.paused_until <= at)),
        sa.exists().where(Enrollment.id == message.enrollment_id, Enrollment.status.in_(("active", "completed"))),
    )
    result = session.execute(sa.update(Message).where(sendable).values(
        status="sending", attempts=Message.attempts + 1, variant=variant, subject=subject,
        available_at=at + timedelta(seconds=settings.lease_seconds)))
    return result.rowcount == 1


def _explain_unclaimed(session: Session, message: Message, lead: Lead, at: datetime, report: SendReport) -> None:
    current = session.get(Message, message.id)
    if current is None or current.status != "queued":
        report.ignored += 1  # another worker took it, or it was cancelled meanwhile
        return
    fresh = session.get(Lead, lead.id)
    if fresh.status == "paused" and fresh.paused_until and fresh.paused_until > at:
        current.available_at = fresh.paused_until  # out of office: send when they are back
        report.retried += 1
    else:
        reason = session.exec(select(Suppression.reason).where(Suppression.email == lead.email)).first()
        current.status = "cancelled"
        current.error = f"suppressed: {reason}" if reason else f"lead {fresh.status} or enrollment stopped"
        report.cancelled += 1
    session.add(current)


def _sent(session: Session, message_id: int, answer: str, at: datetime) -> None:
    session.execute(sa.update(Message).where(Message.id == message_id).values(
        status="sent", sent_at=at, smtp_code=int(answer[:3]) if answer[:3].isdigit() else None,
        smtp_response=answer[:1000], error="", available_at=None))


def _fail(session: Session, message_id: int, error: str) -> None:
    session.execute(sa.update(Message).where(Message.id == message_id).values(status="failed", error=error[:2000], available_at=None))


def _retry_or_fail(session: Session, settings: Settings, message: Message, exc: TransientSendError, at: datetime, report: SendReport) -> None:
    attempts = message.attempts + 1
    if attempts >= settings.max_attempts:
        session.execute(sa.update(Message).where(Message.id == message.id).values(
            status="failed", smtp_code=exc.code, error=f"gave up after {attempts} attempts: {exc}"[:2000], available_at=None))
        report.failed += 1
        return
    delay = RETRY_DELAYS[min(attempts - 1, len(RETRY_DELAYS) - 1)]
    session.execute(sa.update(Message).where(Message.id == message.id).values(
        status="queued", smtp_code=exc.code, error=str(exc)[:2000], available_at=at + timedelta(seconds=delay)))
    report.retried += 1


def _permanent(session: Session, message: Message, lead: Lead, exc: PermanentSendError, at: datetime, report: SendReport) -> None:
    if exc.stage == "rcpt":
        session.execute(sa.update(Message).where(Message.id == message.id).values(
            status="bounced", smtp_code=exc.code, error=str(exc)[:2000], available_at=None))
        session.add(Event(lead_id=lead.id, message_id=message.id, kind="bounce_hard", occurred_at=at,
                          data={"code": exc.code, "response": str(exc)[:500], "source": "smtp"}))
        suppress(session, lead.email, "bounce_hard", at, note=str(exc))
        report.bounced += 1
    else:
        _fail(session, message.id, f"refused by the server: {exc}")
        session.execute(sa.update(Enrollment).where(Enrollment.id == message.enrollment_id).values(
            status="exited", exit_reason=f"message refused: {exc}"[:200], finished_at=at, next_run_at=None))
        report.failed += 1


def _postpone(session: Session, message_ids: list[int], until: datetime) -> None:
    if message_ids:
        session.execute(sa.update(Message).where(Message.id.in_(message_ids), Message.status == "queued")
                        .values(available_at=until))
