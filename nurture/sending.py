"""Send a batch of queued messages: re-check, render, record, hand over.

``send_batch`` is what an RQ job runs. For each message, in order:

1. render subject, HTML and text for the lead (the A/B subject variant is fixed
   per lead and step, and recorded);
2. claim a chunk of them with one conditional UPDATE, ``queued`` -> ``sending``,
   that also checks right then that the address is not suppressed, the lead is
   still sendable and the enrollment has not exited; the claim is committed
   before any SMTP transaction starts, so a crash can never cause a second copy;
3. send each over the batch's single SMTP connection, journaling the attempt
   and its answer in Redis (``attempt_journal``: recovery after a crash knows
   which claimed messages were never handed over and queues them again);
4. record the answers in the same transaction as the next chunk's claim.

A 4xx answer puts the message back in the queue with a growing delay (bounded
by ``max_attempts``); a 5xx on the recipient is a hard bounce (suppression,
every sequence of the lead stops); a 5xx on the content fails the message and
exits that enrollment. Running the same batch twice sends nothing twice:
only ``queued`` messages are claimed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable

import sqlalchemy as sa
from sqlmodel import Session, select

from .analytics.ab_winners import promoted_variants, variant_for
from .attempt_journal import AttemptJournal
from .config import Settings
from .errors import PermanentSendError, TransientSendError
from .mime import ascii_address, build_message
from .models import SENDABLE_LEAD_STATUSES, EmailTemplate, Enrollment, UtcDateTime, Event, Lead, Message, Sequence, Step, Suppression, User
from .refusal_context import refusal_variables
from .rendering import Renderer
from .scheduling import lead_zone
from .send_window import seed_fraction
from .signing import sign
from .stages import on_first_send
from .suppression import exit_enrollments, suppress
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


def render_context(settings: Settings, lead: Lead, owner: User | None, unsubscribe_url: str,
                   refusal: dict | None = None) -> dict:
    rep = ({"name": owner.name, "email": owner.email, "title": owner.title, "phone": owner.phone} if owner else
           {"name": settings.from_name, "email": settings.from_address, "title": "", "phone": ""})
    return {
        "lead": {"first_name": lead.first_name, "last_name": lead.last_name,
                 "full_name": " ".join(p for p in (lead.first_name, lead.last_name) if p),
                 "company": lead.company, "email": lead.email, "custom": dict(lead.custom or {})},
        "rep": rep,
        "sender": {"name": settings.from_name, "email": settings.from_address},
        "postal_address": settings.postal_address,
        "unsubscribe_url": unsubscribe_url,
        "subject": "",
        "base_url": settings.base_url.rstrip("/"),
        "site_url": settings.site_url.rstrip("/"),
        "refusal": refusal if refusal is not None else refusal_variables(None, lead.language, timezone.utc),
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
        names = {name for step in self.steps.values() for name in (step.template, *step.templates_by_reason.values())}
        self.contexts = dict(session.exec(select(Enrollment.id, Enrollment.context).where(
            Enrollment.id.in_({m.enrollment_id for m in self.messages}))).all())
        self.templates = {(t.name, t.language): t for t in session.exec(
            select(EmailTemplate).where(EmailTemplate.name.in_(names)))}
        session.expunge_all()


def send_batch(session: Session, settings: Settings, message_ids: list[int], transport: Transport,
               renderer: Renderer, now: Callable[[], datetime], journal: AttemptJournal) -> SendReport:
    """Send the queued messages among ``message_ids``, ``settings.send_chunk`` claims per commit.

    Bind ``session`` to one ``Connection`` for the batch (as ``tasks`` does) so
    that commits do not check a connection out of the pool each time.
    """
    report = SendReport()
    batch = _Batch(session, message_ids)
    batch.promoted = promoted_variants(session) if settings.ab_auto_promote else {}
    report.ignored = len(set(message_ids)) - len(batch.messages)
    lead_of = {m.id: m.lead_id for m in batch.messages}  # sent messages move their leads on (stage rules)
    pending: list[Callable[[], None]] = []  # rare outcomes, written in the transaction of the next claim
    sent_rows: list[dict] = []  # the common outcome, written in one statement

    def flush() -> None:
        if sent_rows:
            session.connection().execute(_SENT, sent_rows)
            on_first_send(session, [lead_of[row["b_id"]] for row in sent_rows], now())
            sent_rows.clear()
        for write in pending:
            write()
        pending.clear()

    messages = batch.messages
    journaled: list[int] = []  # attempts whose outcome is not committed yet
    for start in range(0, len(messages), settings.send_chunk):
        composed: dict[int, tuple] = {}
        for message in messages[start:start + settings.send_chunk]:
            lead = batch.leads[message.lead_id]
            try:
                composed[message.id] = (message, lead, *_compose(settings, batch, renderer, message, lead,
                                                                 batch.steps[message.step_id], now()))
            except Exception as exc:  # a template that passed load-time checks but fails for this lead
                log.exception("rendering message %s failed", message.id)
                pending.append(lambda m=message, e=exc: _fail(session, m.id, f"render error: {type(e).__name__}: {e}"))
                report.failed += 1
        flush()
        claimed = _claim(session, settings, composed, now())
        session.commit()  # every claimed message is "sending" before its SMTP transaction starts
        journal.forget(journaled)  # their outcomes were in that commit
        journaled.clear()
        for message_id, (message, lead, *_rest) in composed.items():
            if message_id not in claimed:
                _explain_unclaimed(session, message, lead, now(), report)
                session.commit()
        order = [composed[i] for i in sorted(claimed)]
        for index, (message, lead, _variant, _subject, data) in enumerate(order):
            if index and not _still_sendable(session, message, lead, now()):
                # Suppressed, stopped or paused since the chunk was claimed: undo the claim and
                # settle it as if the claim had failed (cancelled, or deferred while paused).
                pending.append(lambda m=message: _requeue(session, m.id, now()))
                pending.append(lambda m=message, l=lead: _explain_unclaimed(session, m, l, now(), report))
                continue
            journal.started(message.id)
            journaled.append(message.id)
            try:
                answer = transport.send(settings.from_address, ascii_address(lead.email), data)
            except TransientSendError as exc:
                journal.finished(message.id, "retry", str(exc))
                pending.append(lambda m=message, e=exc: _retry_or_fail(session, settings, m, e, now(), report))
                if exc.code is None:  # the server cannot be reached: give the rest back for later
                    until = now() + timedelta(seconds=RETRY_DELAYS[0])
                    for m, *_ in order[index + 1:]:
                        pending.append(lambda m=m: _requeue(session, m.id, until))
                    flush()
                    _postpone(session, [m.id for m in messages[start + settings.send_chunk:]], until)
                    session.commit()
                    journal.flush()
                    journal.forget(journaled)
                    report.errors.append(str(exc))
                    return report
                continue
            except PermanentSendError as exc:
                journal.finished(message.id, "failed", str(exc))
                pending.append(lambda m=message, l=lead, e=exc: _permanent(session, m, l, e, now(), report))
                continue
            except UnknownOutcomeError as exc:
                pending.append(lambda m=message, e=exc: _fail(session, m.id, f"{e}; may have been delivered, not sent again"))
                report.failed += 1
                continue
            journal.finished(message.id, "sent", answer)
            sent_rows.append(_sent_row(message.id, answer, now()))
            report.sent += 1
        journal.flush()
    flush()
    session.commit()
    journal.forget(journaled)
    return report


def _compose(settings, batch: _Batch, renderer: Renderer, message: Message, lead: Lead, step: Step, at: datetime):
    enrollment_context = batch.contexts.get(message.enrollment_id) or {}
    name = step.templates_by_reason.get(enrollment_context.get("lost_reason", "")) or step.template
    template = batch.templates.get((name, lead.language)) or batch.templates.get((name, settings.default_language))
    if template is None:
        raise LookupError(f"template {name!r} is not loaded (run `nurture campaigns load`)")
    language = template.language
    subjects = step.subjects.get(language) or template.subjects
    variant = variant_for(batch.promoted, step.id, len(subjects), pick_variant(lead.id, step.key, len(subjects)))
    unsubscribe_url, unsubscribe_mailto = unsubscribe_links(settings, message.id)
    sequence = batch.sequences[message.sequence_id]
    refusal = refusal_variables(enrollment_context, language, lead_zone(lead.timezone, sequence, settings))
    context = render_context(settings, lead, batch.owners.get(lead.owner_id), unsubscribe_url, refusal)
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


_message = Message.__table__


def _sendable(email: str, lead_id: str, enrollment_id: str, at: str) -> str:
    """SQL true when nothing forbids sending now: not suppressed, lead sendable and not
    paused, enrollment running. One definition for the claim and the re-check."""
    statuses = ", ".join(f"'{status}'" for status in SENDABLE_LEAD_STATUSES)
    return (f"NOT EXISTS (SELECT 1 FROM suppression WHERE suppression.email = {email})"
            f" AND EXISTS (SELECT 1 FROM lead WHERE lead.id = {lead_id} AND lead.status IN ({statuses})"
            f" AND (lead.paused_until IS NULL OR lead.paused_until <= {at}))"
            f" AND EXISTS (SELECT 1 FROM enrollment WHERE enrollment.id = {enrollment_id}"
            f" AND enrollment.status IN ('active', 'completed'))")


_CLAIM = (
    sa.update(_message)
    .where(
        _message.c.id.in_(sa.bindparam("b_ids", expanding=True)),
        _message.c.status == "queued",
        sa.text(_sendable("(SELECT owner.email FROM lead AS owner WHERE owner.id = message.lead_id)",
                          "message.lead_id", "message.enrollment_id", ":b_at"))
        .bindparams(sa.bindparam("b_at", type_=UtcDateTime())),
    )
    .values(status="sending", attempts=_message.c.attempts + 1, available_at=sa.bindparam("b_lease_end"))
    .returning(_message.c.id)
)
# Run on the driver's cursor: it runs before every SMTP transaction, and SQLAlchemy's
# statement handling cost five times the query.
_STILL_SENDABLE_BY_DIALECT = {dialect: "SELECT 1 WHERE " + _sendable(p, p, p, p)
                              for dialect, p in (("postgresql", "%s"), ("sqlite", "?"))}
_CHOICE = sa.update(_message).where(_message.c.id == sa.bindparam("b_id")).values(
    variant=sa.bindparam("b_variant"), subject=sa.bindparam("b_subject"))
_SENT = (
    sa.update(_message).where(_message.c.id == sa.bindparam("b_id"))
    .values(status="sent", sent_at=sa.bindparam("b_at"), smtp_code=sa.bindparam("b_code"),
            smtp_response=sa.bindparam("b_response"), error="", available_at=None)
)


def _claim(session: Session, settings: Settings, composed: dict[int, tuple], at: datetime) -> set[int]:
    """queued -> sending for the messages nothing forbids right now (suppression, lead, enrollment)."""
    if not composed:
        return set()
    connection = session.connection()
    claimed = set(connection.execute(_CLAIM, {"b_ids": list(composed), "b_at": at,
                                              "b_lease_end": at + timedelta(seconds=settings.lease_seconds)}).scalars())
    if claimed:
        connection.execute(_CHOICE, [{"b_id": i, "b_variant": composed[i][2], "b_subject": composed[i][3]} for i in claimed])
    return claimed


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


def _still_sendable(session: Session, message: Message, lead: Lead, at: datetime) -> bool:
    """The claim's checks again, read-only, right before the SMTP transaction."""
    connection = session.connection()
    dialect = connection.dialect.name
    # SQLite stores UtcDateTime as naive UTC text in SQLAlchemy's format; compare like with like.
    when = at if dialect == "postgresql" else at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    cursor = connection.connection.driver_connection.cursor()
    try:
        cursor.execute(_STILL_SENDABLE_BY_DIALECT[dialect], (lead.email, lead.id, when, message.enrollment_id))
        return cursor.fetchone() is not None
    finally:
        cursor.close()


def _sent_row(message_id: int, answer: str, at: datetime) -> dict:
    return {"b_id": message_id, "b_at": at, "b_response": answer[:1000],
            "b_code": int(answer[:3]) if answer[:3].isdigit() else None}


def _requeue(session: Session, message_id: int, until: datetime) -> None:
    """A claimed message that was never handed over goes back to the queue (not an attempt)."""
    session.execute(sa.update(Message).where(Message.id == message_id, Message.status == "sending").values(
        status="queued", attempts=Message.attempts - 1, available_at=until))


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
        exit_enrollments(session, [message.enrollment_id], f"message refused: {exc}"[:200], at)
        report.failed += 1


def _postpone(session: Session, message_ids: list[int], until: datetime) -> None:
    if message_ids:
        session.execute(sa.update(Message).where(Message.id.in_(message_ids), Message.status == "queued")
                        .values(available_at=until))
