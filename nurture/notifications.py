"""Tell reps about their leads: warm-up notices, and the delivery of every notification.

``notify_warm_lead`` is what warm-up detection calls. It keeps to at most one
warm-up notice per lead per ``warm_notice_days`` (a reply always notifies),
gives a lead without an owner to the next rep (``assignment``), and records one
``Notification`` per channel: an email to the rep, a Slack-compatible message
(the rep's ``webhook_url`` or ``NURTURE_SLACK_WEBHOOK_URL``) and the signed
generic webhook (``NURTURE_WEBHOOK_URL``). The payload is a snapshot of what the
rep needs to act (lead, probability and why, last events, a link to the lead
page), so a delivery retried an hour later says what was true when it fired.
It is worded in the rep's ``User.language`` (English without a rep) and says
so in ``language``: the email, the Slack message and the generic webhook carry
the same words.

Rows are written in the caller's transaction and their delivery jobs are
enqueued only once it commits (nothing is sent about a lead whose change was
rolled back). A job that cannot reach Redis leaves the row ``pending``;
``requeue_pending`` (run by the scheduler and ``nurture notifications retry``)
enqueues it again. ``deliver`` claims a pending row by bumping ``attempts``
(conditional UPDATE), sends it, and records the outcome on the row: ``sent``,
or the error appended to ``error`` and ``failed`` after the last try.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import sqlalchemy as sa
from redis.exceptions import RedisError
from rq import Retry
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus
from sqlmodel import Session, select

from .assignment import assign_round_robin, transaction_lock
from .config import Settings
from .errors import NurtureError, PermanentSendError, TransientSendError
from .lead_view import lead_document
from .models import Lead, Notification, User
from .probability import describe
from .queues import send_queue
from .rep_mail import mail_language, send_rep_mail
from .transports import UnknownOutcomeError
from .webhooks import WebhookError, encode, post, post_signed, slack_message

log = logging.getLogger(__name__)

DELIVER_JOB = "nurture.tasks.deliver_notification"
TIMELINE_EVENTS = 10  # the last events shown in a notice
STALE_PENDING = timedelta(minutes=1)  # a pending row older than this with no job is enqueued again
_PENDING_KEY = "nurture_notifications_to_enqueue"


class DeliveryRetry(NurtureError):
    """Raised by a delivery job that should be tried again later (RQ's Retry schedules it)."""


# --- creating notices --------------------------------------------------------------------------

def notify_warm_lead(session: Session, settings: Settings, lead: Lead, reason: str | dict[str, str], now: datetime, *,
                     replied: bool = False) -> list[Notification]:
    """Record a warm-up notice for ``lead`` on every configured channel; [] when one was sent recently.

    ``reason`` is one text, or its words per language (``{"en": ..., "ru": ...}``): the
    notice takes the rep's, the row's ``reason`` the English. Does not commit; the
    deliveries are enqueued after the caller's commit.
    """
    transaction_lock(session, f"warm-up:{lead.id}")  # two events of one lead at once: one notice
    if not replied and warm_notice_since(session, lead.id, now - timedelta(days=settings.warm_notice_days)):
        return []
    rep = assign_round_robin(session, lead, now)
    language = mail_language(rep.language if rep else None)
    reasons = reason if isinstance(reason, dict) else {"en": reason}
    payload = warm_up_payload(session, settings, lead, rep, reasons.get(language, reasons["en"]), replied, now, language)
    rows = [Notification(user_id=rep.id if rep else None, lead_id=lead.id, kind="warm_up", reason=reasons["en"][:300],
                         channel=channel, status="pending", payload=payload, created_at=now)
            for channel in channels_for(settings, rep)]
    if not rows:
        log.warning("lead %s is warm but no rep receives leads and no webhook is set: nobody to tell", lead.id)
        return []
    session.add_all(rows)
    session.flush()
    enqueue_after_commit(session, settings, [row.id for row in rows])
    return rows


def warm_notice_since(session: Session, lead_id: int, since: datetime) -> bool:
    return session.exec(select(Notification.id).where(
        Notification.lead_id == lead_id, Notification.kind == "warm_up", Notification.created_at > since)).first() is not None


def channels_for(settings: Settings, rep: User | None) -> list[str]:
    channels = []
    if rep is not None:
        channels.append("email")
    if (rep is not None and rep.webhook_url) or settings.slack_webhook_url:
        channels.append("slack")
    if settings.webhook_url:
        channels.append("webhook")
    return channels


def lead_page_url(settings: Settings, lead_id: int) -> str:
    return f"{settings.base_url.rstrip('/')}/leads/{lead_id}"


def lead_name(lead: Lead) -> str:
    return " ".join(part for part in (lead.first_name, lead.last_name) if part) or lead.email


def why_lines(why: list, now: datetime, language: str = "en") -> list[str]:
    """``Lead.probability_why`` as words of ``language`` as of ``now`` ("stage engaged 22%", "replied 2 days ago +9")."""
    return [describe(item, now, language) if isinstance(item, dict) and "factor" in item else str(item)
            for item in why or []]


def timeline(session: Session, lead: Lead) -> list[dict]:
    """The lead's last events, newest last, each with the subject of the message it concerns."""
    document = lead_document(session, lead.email)
    subjects = {m["id"]: m["subject"] for m in document["messages"]}
    return [{"at": e["occurred_at"].isoformat(), "kind": e["kind"], "machine": e["machine"],
             "subject": subjects.get(e["message_id"], "")}
            for e in document["events"][-TIMELINE_EVENTS:]]


def lead_summary(settings: Settings, lead: Lead, now: datetime | None = None, language: str = "en") -> dict:
    """What a notice or digest shows of a lead; ``why`` in ``language`` as of ``now`` (default: the settings' clock)."""
    now = now or settings.clock.now()
    return {"id": lead.id, "name": lead_name(lead), "email": lead.email, "company": lead.company,
            "stage": lead.stage, "probability": round(lead.probability or 0.0, 4),
            "why": why_lines(lead.probability_why, now, language), "url": lead_page_url(settings, lead.id)}


def warm_up_payload(session: Session, settings: Settings, lead: Lead, rep: User | None, reason: str,
                    replied: bool, now: datetime, language: str = "en") -> dict:
    return {
        "event": "lead.warm_up", "reason": reason, "replied": replied, "at": now.isoformat(), "language": language,
        "lead": lead_summary(settings, lead, now, language),
        "rep": {"id": rep.id, "name": rep.name, "email": rep.email} if rep else None,
        "timeline": timeline(session, lead),
    }


# --- enqueueing ---------------------------------------------------------------------------------

def enqueue_after_commit(session: Session, settings: Settings, notification_ids: list[int]) -> None:
    """Enqueue the deliveries of these rows when ``session`` commits; forget them if it rolls back."""
    pending = session.info.get(_PENDING_KEY)
    if pending is None:
        pending = session.info[_PENDING_KEY] = []

        def after_commit(committed: Session) -> None:
            ids = list(pending)
            pending.clear()
            if ids:
                enqueue_deliveries(settings, ids)

        sa.event.listen(session, "after_commit", after_commit)
        sa.event.listen(session, "after_rollback", lambda _session: pending.clear())
    pending.extend(notification_ids)


def enqueue_deliveries(settings: Settings, notification_ids: list[int]) -> int:
    """Enqueue one delivery job per notification (deduplicated by job id); return how many were enqueued."""
    try:
        queue = send_queue(settings)
        enqueued = 0
        for notification_id in notification_ids:
            enqueued += _enqueue(queue, settings, notification_id)
        return enqueued
    except RedisError as exc:  # the rows stay pending: requeue_pending picks them up
        log.warning("cannot enqueue notification deliveries %s: %s", notification_ids, exc)
        return 0


def delivery_job_id(settings: Settings, notification_id: int) -> str:
    """RQ job ids are global to a Redis: the queue name keeps two installations' row ids apart."""
    return f"deliver-notification-{settings.queue_name}-{notification_id}"


def _enqueue(queue, settings: Settings, notification_id: int) -> int:
    job_id = delivery_job_id(settings, notification_id)
    intervals = list(settings.webhook_retry_intervals)
    retry = Retry(max=len(intervals), interval=intervals) if intervals else None
    for _ in (1, 2):
        try:
            queue.enqueue(DELIVER_JOB, notification_id, job_id=job_id, unique=True, retry=retry,
                          result_ttl=0, failure_ttl=7 * 86400, job_timeout=120)
            return 1
        except DuplicateJobError:
            try:
                job = Job.fetch(job_id, connection=queue.connection)
            except NoSuchJobError:
                continue  # it ended in between: enqueue again
            if job.get_status() not in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED):
                return 0  # queued, running or scheduled for a retry already
            job.delete()
    return 0


def requeue_pending(session: Session, settings: Settings, now: datetime, *, include_failed: bool = False) -> int:
    """Enqueue again pending notifications older than a minute (and, on request, failed ones, reset to pending)."""
    if include_failed:
        session.execute(sa.update(Notification).where(Notification.status == "failed",
                                                      Notification.channel != "task").values(status="pending"))
        session.commit()
    ids = session.exec(select(Notification.id).where(
        Notification.status == "pending", Notification.channel != "task",
        Notification.created_at <= now - (timedelta(0) if include_failed else STALE_PENDING),
    ).order_by(Notification.id)).all()
    session.commit()  # end the read: on SQLite every transaction holds the write lock
    return enqueue_deliveries(settings, list(ids)) if ids else 0


# --- delivering ----------------------------------------------------------------------------------

def deliver(session: Session, settings: Settings, notification_id: int, now: datetime, *, last_try: bool) -> str:
    """Send one pending notification and record the outcome; return its status.

    Raises ``DeliveryRetry`` after a transient failure when ``last_try`` is false.
    No transaction is open during the network call (on SQLite it would hold the
    write lock for the whole HTTP or SMTP exchange).
    """
    row = session.get(Notification, notification_id)
    if row is None or row.status != "pending":
        session.rollback()
        return row.status if row else "missing"
    attempt = row.attempts + 1
    claimed = session.execute(sa.update(Notification).where(
        Notification.id == row.id, Notification.status == "pending", Notification.attempts == row.attempts,
    ).values(attempts=attempt)).rowcount
    rep = session.get(User, row.user_id) if row.user_id else None
    session.expunge(row)  # keep the loaded values through the commit, without reloading them
    if rep is not None:
        session.expunge(rep)
    session.commit()
    if not claimed:
        return "pending"  # another worker has it
    try:
        _send(settings, row, rep)
    except (WebhookError, TransientSendError, PermanentSendError, UnknownOutcomeError) as exc:
        # UnknownOutcome: the mail may have arrived; a second copy is worse than a lost notice
        permanent = isinstance(exc, (PermanentSendError, UnknownOutcomeError)) or getattr(exc, "permanent", False)
        status = "failed" if permanent or last_try else "pending"
        _record(session, row.id, status=status, error=(row.error + f"{now.isoformat()} attempt {attempt}: {exc}\n")[-4000:])
        if status == "pending":
            raise DeliveryRetry(f"notification {row.id} ({row.channel}): {exc}") from None
        log.warning("notification %s (%s) failed for good after %s attempt(s): %s", row.id, row.channel, attempt, exc)
        return status
    _record(session, row.id, status="sent", sent_at=now)
    return "sent"


def _record(session: Session, notification_id: int, **values) -> None:
    session.execute(sa.update(Notification).where(Notification.id == notification_id).values(**values))
    session.commit()


def _send(settings: Settings, row: Notification, rep: User | None) -> None:
    if row.channel == "email":
        if rep is None:
            raise WebhookError("the notice has no rep to mail", permanent=True)
        send_rep_mail(settings, rep, row.kind, row.payload)
    elif row.channel == "slack":
        url = (rep.webhook_url if rep is not None else "") or settings.slack_webhook_url
        if not url:
            raise WebhookError("no Slack webhook is configured any more (rep's webhook_url, NURTURE_SLACK_WEBHOOK_URL)",
                               permanent=True)
        post(url, encode(slack_message(row.payload)))
    elif row.channel == "webhook":
        if not (settings.webhook_url and settings.webhook_secret):
            raise WebhookError("NURTURE_WEBHOOK_URL is not set any more", permanent=True)
        post_signed(settings.webhook_url, settings.webhook_secret,
                    {"id": row.id, "kind": row.kind, **row.payload}, str(row.id))
    else:
        raise WebhookError(f"channel {row.channel!r} is not delivered (it is a task in the UI)", permanent=True)
