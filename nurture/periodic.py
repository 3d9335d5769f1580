"""Work the scheduler does besides claiming steps: drain tracking events, poll the mailbox.

Events are drained every tick, so a hit reaches the lead's timeline within
seconds. The mailbox is polled every ``imap_poll_seconds`` (when configured);
a poll that fails is logged and retried next time, it never stops the tick.
"""

from __future__ import annotations

import logging
import os
import time

import redis
from sqlmodel import Session

from .config import Settings
from .event_stream import drain, stream_key
from .reactions import on_tracking_events

log = logging.getLogger(__name__)


class Periodic:
    def __init__(self, settings: Settings, connection: redis.Redis) -> None:
        self.settings = settings
        self.connection = connection
        self.consumer = f"scheduler-{os.uname().nodename}-{os.getpid()}"
        self.last_poll = 0.0

    def run(self, session: Session) -> list[str]:
        lines = []
        stored = 0
        try:
            while batch := drain(session, self.connection, stream_key(self.settings.queue_name), self.consumer,
                                 on_events=lambda s, e: on_tracking_events(s, e, self.settings.clock.now())):
                stored += batch
        except Exception as exc:  # Redis or the database: retried next tick; sending goes on
            session.rollback()
            log.warning("draining events failed: %s", exc)
        if stored:
            lines.append(f"stored {stored} tracking event(s)")
        if self.settings.imap_url and time.monotonic() - self.last_poll >= self.settings.imap_poll_seconds:
            self.last_poll = time.monotonic()
            from .imap_poll import poll

            try:
                report = poll(session, self.settings, self.settings.clock.now())
                if report.processed or report.failed:
                    lines.append(f"inbox: processed {report.processed}, failed {report.failed}")
            except Exception as exc:  # a mailbox outage must not stop sending
                session.rollback()
                log.warning("polling %s failed: %s", "the IMAP mailbox", exc)
        return lines
