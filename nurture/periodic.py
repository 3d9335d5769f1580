"""Work the scheduler does besides claiming steps: drain tracking events, poll the mailbox,
review the week, bring cooled leads back, and re-enqueue notifications whose job was lost.

The reports' per-lead stage summaries (``analytics.journeys``) are brought up
to date every tick. Events are drained every tick, so a hit reaches the lead's timeline within
seconds. The mailbox is polled every ``imap_poll_seconds`` (when configured);
a poll that fails is logged and retried next time, it never stops the tick.
The weekly review runs on the first tick after ``NURTURE_REVIEW_AT`` in each
ISO week (of nurture's clock: ``--now`` and the demo's sped-up clock count); it
is idempotent per week, so a restarted scheduler running it again sends nothing
twice. Cooled leads due to return are enrolled, and leads silent after the
follow-up after a refusal are settled, at most once per hour of nurture's
clock; pending notifications without a job are enqueued again once a minute.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime, timedelta

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
        self.last_poll = float("-inf")  # not 0.0: monotonic time starts at boot, and a fresh machine is younger than the interval
        self.last_rescore_day: str | None = None
        self.last_review_week: str | None = None
        self.last_returns: datetime | None = None
        self.last_settle: datetime | None = None
        self.last_requeue = float("-inf")

    def rescore_daily(self, session: Session) -> list[str]:
        """Recompute every open lead's probability once per day of nurture's clock (decay), across schedulers."""
        from .warmup import rescore_nightly

        now = self.settings.clock.now()
        day = now.date().isoformat()
        if day == self.last_rescore_day:
            return []
        self.last_rescore_day = day
        if not self.connection.set(f"nurture:rescored:{self.settings.queue_name}:{day}", self.consumer, nx=True, ex=2 * 86400):
            return []  # another scheduler did today's
        try:
            count, warm = rescore_nightly(session, self.settings, now)
        except Exception as exc:  # tomorrow's run catches up; sending goes on
            session.rollback()
            log.warning("the nightly rescore failed: %s", exc)
            return []
        log.info("nightly rescore: %d lead(s), %d warmed up", count, len(warm))
        return [f"nightly rescore: {len(warm)} lead(s) warmed up"] if warm else []

    def run(self, session: Session) -> list[str]:
        lines = []
        stored = 0
        try:
            while batch := drain(session, self.connection, stream_key(self.settings.queue_name), self.consumer,
                                 on_events=lambda s, e: on_tracking_events(s, e, self.settings.clock.now(), self.settings)):
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
        self.refresh_summaries(session)
        lines += self.rescore_daily(session)
        lines += self.review_and_return(session, self.settings.clock.now())
        lines += self.settle_refusals(session, self.settings.clock.now())
        return lines

    def refresh_summaries(self, session: Session) -> None:
        """Fold new stage changes into the reports' per-lead summaries, so a report has little left to fold."""
        from .analytics.journeys import refresh

        try:
            refresh(session, wait=False)
            session.commit()
        except Exception as exc:  # retried next tick; reports fold what is left themselves
            session.rollback()
            log.warning("refreshing the report summaries failed: %s", exc)

    def settle_refusals(self, session: Session, now: datetime) -> list[str]:
        """Leads silent after the follow-up after refusal: archived or handed to the re-offer, hourly."""
        if self.last_settle is not None and now - self.last_settle < timedelta(hours=1):
            return []
        from .refusal import settle_silent

        try:
            settled = settle_silent(session, self.settings, now)
            session.commit()
            self.last_settle = now
        except Exception as exc:  # retried next tick; sending goes on
            session.rollback()
            log.warning("settling leads silent after a refusal failed: %s", exc)
            return []
        return [f"after refusal: {len(settled)} silent lead(s) settled"] if settled else []

    def review_and_return(self, session: Session, now: datetime) -> list[str]:
        from .cold_return import return_cooled_leads
        from .notifications import requeue_pending
        from .weekly_review import review_moment, run_weekly_review, week_of

        lines = []
        week = week_of(now)[0]
        if week != self.last_review_week and now >= review_moment(self.settings, now):
            try:
                review = run_weekly_review(session, self.settings, now)
                self.last_review_week = week
                sent = sum(d["status"] == "sent" for d in review.digests)
                if review.cooled or review.flagged or sent:
                    lines.append(f"weekly review {week}: cooled {sum(c['moved'] for c in review.cooled)}, "
                                 f"stuck {len(review.stuck)} ({review.flagged} new), digests {sent}")
            except Exception as exc:  # retried next tick; sending goes on
                session.rollback()
                log.warning("the weekly review failed: %s", exc)
        if self.last_returns is None or now - self.last_returns >= timedelta(hours=1):
            try:
                returned = return_cooled_leads(session, self.settings, now)
                self.last_returns = now
                if returned.enrolled or returned.problem:
                    lines.append(f"cold leads back: {returned.enrolled} enrolled in the re-offer"
                                 + (f" ({returned.problem})" if returned.problem else ""))
            except Exception as exc:
                session.rollback()
                log.warning("returning cooled leads failed: %s", exc)
        if time.monotonic() - self.last_requeue >= 60:
            self.last_requeue = time.monotonic()
            try:
                requeue_pending(session, self.settings, now)
            except Exception as exc:
                session.rollback()
                log.warning("re-enqueueing notifications failed: %s", exc)
        return lines
