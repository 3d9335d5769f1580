"""RQ entry points: thin functions that take ids, build what they need, and call the domain.

Each job reads settings from the environment (the worker's), opens its own
session (``db.engine_for`` gives a fresh pool after RQ forks the work horse)
and SMTP connection, and is safe to run twice.
"""

from __future__ import annotations

from dataclasses import asdict

from sqlmodel import Session

from .attempt_journal import AttemptJournal
from .config import Settings
from .db import engine_for
from .queues import redis_connection
from .rendering import Renderer
from .sending import send_batch
from .transports import SmtpTransport

_renderer = Renderer()  # parsed templates outlive a job in a SimpleWorker


def attempt_journal(settings: Settings) -> AttemptJournal:
    return AttemptJournal(redis_connection(settings), settings.queue_name)


def send_messages(message_ids: list[int]) -> dict:
    settings = Settings.from_env()
    # One connection for the whole batch: it commits once per message, and a pool
    # checkout (with its pre-ping) per commit cost more than the commit itself.
    with engine_for(settings.database_url).connect() as connection, \
            Session(bind=connection, expire_on_commit=False) as session, \
            SmtpTransport(settings.smtp) as transport:
        report = send_batch(session, settings, message_ids, transport, _renderer, settings.clock.now,
                            attempt_journal(settings))
    return asdict(report)


def deliver_notification(notification_id: int) -> str:
    """Deliver one rep notification (email, Slack, webhook); raising makes RQ retry it with backoff."""
    from rq import get_current_job

    from .notifications import deliver

    settings = Settings.from_env()
    job = get_current_job()
    last_try = job is None or not job.retries_left
    with Session(engine_for(settings.database_url), expire_on_commit=False) as session:
        return deliver(session, settings, notification_id, settings.clock.now(), last_try=last_try)
