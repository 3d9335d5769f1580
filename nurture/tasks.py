"""RQ entry points: thin functions that take ids, build what they need, and call the domain.

Each job reads settings from the environment (the worker's), opens its own
session (``db.engine_for`` gives a fresh pool after RQ forks the work horse)
and SMTP connection, and is safe to run twice.
"""

from __future__ import annotations

from dataclasses import asdict

from sqlmodel import Session

from .config import Settings
from .db import engine_for
from .rendering import Renderer
from .sending import send_batch
from .transports import SmtpTransport

_renderer = Renderer()  # parsed templates outlive a job in a SimpleWorker


def send_messages(message_ids: list[int]) -> dict:
    settings = Settings.from_env()
    with Session(engine_for(settings.database_url), expire_on_commit=False) as session, \
            SmtpTransport(settings.smtp) as transport:
        report = send_batch(session, settings, message_ids, transport, _renderer, settings.clock.now)
    return asdict(report)
