"""Claim due enrollment steps and turn them into queued messages.

One round (``claim_due``) takes due enrollments of one sequence with row locks
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several schedulers claim disjoint
work; SQLite serialises writers with ``BEGIN IMMEDIATE``), and in the same
transaction creates at most one message per enrollment x step (a unique
constraint backs this), advances each enrollment to its next step and time,
and gives the new messages a lease. After the commit the caller enqueues them.
If the process dies before enqueueing, ``requeue_expired`` finds the messages
when their lease ends: no due step is lost. A message left in ``sending`` past
its lease belonged to a worker that died during the SMTP transaction; it may
have been delivered, so ``expire_sending`` marks it failed instead of sending
it again (at most once).

No Flask, no RQ: the session, the settings, the time and an ``enqueue``
callable are passed in.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Callable

import sqlalchemy as sa
from sqlmodel import Session, select

from .attempt_journal import AttemptJournal
from .calendar_anchors import Anchor, anchored_send_time
from .config import Settings
from .db import is_postgresql
from .models import SENDABLE_LEAD_STATUSES, Enrollment, Event, Lead, Message, Notification, Sequence, Step, Suppression
from .send_window import SendWindow, inside, pick_send_time, seed_fraction, zone

MIN_GAP_BETWEEN_TOUCHES = timedelta(hours=20)
MAX_ROUNDS_PER_TICK = 1000


@dataclass
class TickReport:
    messages: int = 0
    skipped: int = 0
    tasks: int = 0
    exited: int = 0
    completed: int = 0
    deferred: int = 0
    requeued: int = 0
    expired: int = 0
    message_ids: list[int] = field(default_factory=list)

    def add(self, other: "TickReport") -> None:
        for name in ("messages", "skipped", "tasks", "exited", "completed", "deferred", "requeued", "expired"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@lru_cache(maxsize=256)
def _window(days: str, start: str, end: str) -> SendWindow:
    return SendWindow.parse(days, start, end)


def sequence_window(sequence: Sequence) -> SendWindow:
    return _window(sequence.send_days, sequence.send_start, sequence.send_end)


def lead_zone(lead_timezone: str | None, sequence: Sequence, settings: Settings | None):
    """The lead's zone, else the sequence's, else the default (UTC without settings)."""
    for name in (lead_timezone, sequence.timezone, settings.default_timezone if settings else None):
        if name:
            try:
                return zone(name)
            except ValueError:
                continue
    return zone("UTC")


def live_steps(session: Session, sequence_id: int) -> list[Step]:
    return list(session.exec(select(Step).where(Step.sequence_id == sequence_id).order_by(Step.position, Step.id)))


def step_after(steps: list[Step], current: Step) -> Step | None:
    """The live step that follows ``current`` (a retired step is followed by the step that took its place)."""
    for step in steps:
        if step.retired or step.id == current.id:
            continue
        if step.position > current.position or (current.retired and step.position >= current.position):
            return step
    return None


def first_step(steps: list[Step]) -> Step | None:
    return next((step for step in steps if not step.retired), None)


def schedule_step(step: Step, sequence: Sequence, tz, lead_id: int, started_at: datetime, earliest: datetime) -> datetime:
    """When to send ``step`` to a lead: inside its day window (or before its calendar anchor), in business hours, spread per lead."""
    fraction = seed_fraction(lead_id, sequence.id, step.key)
    if step.anchor != "enrollment":
        anchor = Anchor(step.anchor, step.anchor_business_days, step.anchor_date)
        return anchored_send_time(sequence_window(sequence), tz, anchor, earliest, fraction)
    return pick_send_time(sequence_window(sequence), tz, started_at, step.day_min, step.day_max, earliest, fraction)


def run_tick(session: Session, settings: Settings, now: datetime, enqueue: Callable[[list[int]], None],
             journal: AttemptJournal | None = None) -> TickReport:
    """One scheduler tick: claim every due step (bounded), requeue expired leases, settle dead sends."""
    report = TickReport()
    report.expired = expire_sending(session, now, journal)
    for sequence in session.exec(select(Sequence).where(Sequence.status == "active").order_by(Sequence.id)).all():
        allowance = _allowance(session, sequence, now)
        for _ in range(MAX_ROUNDS_PER_TICK):
            if allowance <= 0:
                break
            round_report = claim_due(session, settings, sequence, now, min(allowance, settings.claim_batch_size))
            if round_report.message_ids:
                enqueue(round_report.message_ids)
            report.add(round_report)
            report.message_ids += round_report.message_ids
            allowance -= round_report.messages
            if not round_report.claimed_any:
                break
    while True:
        ids = requeue_expired(session, now, settings.lease_seconds, settings.claim_batch_size)
        if not ids:
            break
        enqueue(ids)
        report.requeued += len(ids)
    return report


def _allowance(session: Session, sequence: Sequence, now: datetime) -> int:
    if not sequence.throttle_per_hour:
        return 10**12
    recent = session.exec(
        select(sa.func.count()).select_from(Message).where(
            Message.sequence_id == sequence.id,
            Message.created_at > now - timedelta(hours=1),
            Message.status.not_in(("skipped", "cancelled")),
        )
    ).one()
    return sequence.throttle_per_hour - recent


@dataclass
class RoundReport(TickReport):
    claimed_any: bool = False


def claim_due(session: Session, settings: Settings, sequence: Sequence, now: datetime, limit: int) -> RoundReport:
    """Claim up to ``limit`` due enrollments of ``sequence``; commit; return the new message ids."""
    report = RoundReport()
    claim = (
        select(Enrollment.id, Enrollment.lead_id, Enrollment.next_step_id, Enrollment.started_at)
        .where(Enrollment.sequence_id == sequence.id, Enrollment.status == "active", Enrollment.next_run_at <= now)
        .order_by(Enrollment.next_run_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = session.exec(claim).all()
    if not rows:
        session.commit()
        return report
    report.claimed_any = True
    steps = live_steps(session, sequence.id)
    steps_by_id = {step.id: step for step in steps}
    lead_ids = [row.lead_id for row in rows]
    leads = {lead.id: lead for lead in session.exec(
        select(Lead.id, Lead.email, Lead.status, Lead.paused_until, Lead.timezone, Lead.owner_id).where(Lead.id.in_(lead_ids))
    )}
    suppressed = dict(session.exec(
        select(Suppression.email, Suppression.reason).where(Suppression.email.in_([lead.email for lead in leads.values()]))
    ).all())
    engaged = _engaged_enrollments(session, [row.id for row in rows]) if any(
        step.condition != "always" for step in steps) else set()

    lease_end = now + timedelta(seconds=settings.lease_seconds)
    messages, notifications, updates, resumed = [], [], [], []
    for row in rows:
        lead = leads[row.lead_id]
        step = steps_by_id.get(row.next_step_id)
        tz = lead_zone(lead.timezone, sequence, settings)
        update = {"id": row.id, "next_step_id": row.next_step_id, "next_run_at": None, "status": "active",
                  "finished_at": None, "exit_reason": ""}
        updates.append(update)
        stop = _stop_reason(lead, suppressed, now)
        if stop == "paused":
            update["next_run_at"] = schedule_step(step, sequence, tz, row.lead_id, row.started_at, lead.paused_until) if step else lead.paused_until
            report.deferred += 1
            continue
        if lead.status == "paused":
            resumed.append(lead.id)
        if stop or step is None:
            update.update(status="exited" if stop else "completed", finished_at=now, exit_reason=stop or "")
            report.exited += bool(stop)
            report.completed += not stop
            continue
        if not step.retired and not inside(sequence_window(sequence), tz, now):
            # Claimed late (the scheduler was down): wait for the lead's next business moment.
            update["next_run_at"] = pick_send_time(sequence_window(sequence), tz, now, 0, 0, now,
                                                   seed_fraction(row.lead_id, sequence.id, step.key))
            report.deferred += 1
            continue
        if step.retired:
            pass  # a step removed from the sequence: go on to the one that took its place, sending nothing
        elif step.kind == "rep_task":
            notifications.append({"user_id": lead.owner_id, "lead_id": lead.id, "channel": "task", "status": "open",
                                  "reason": f"{sequence.name}: {step.goal or step.key}", "created_at": now})
            report.tasks += 1
        else:
            wanted = step.condition == "always" or (step.condition == "engaged") == (row.id in engaged)
            messages.append(_message_row(row, lead, sequence, step, now, lease_end, settings, "queued" if wanted else "skipped"))
            if wanted:
                report.messages += 1
            else:
                report.skipped += 1
        following = step_after(steps, step)
        if following is None:
            update.update(status="completed", next_step_id=None, finished_at=now)
            report.completed += 1
        else:
            earliest = now if step.retired else now + MIN_GAP_BETWEEN_TOUCHES
            update.update(next_step_id=following.id,
                          next_run_at=schedule_step(following, sequence, tz, row.lead_id, row.started_at, earliest))
    if messages:
        inserted = _insert_messages(session, messages)
        report.message_ids = sorted(mid for mid, status in inserted if status == "queued")
    if notifications:
        session.execute(sa.insert(Notification), notifications)
    if resumed:
        session.execute(sa.update(Lead).where(Lead.id.in_(resumed)).values(status="active", paused_until=None))
    _update_enrollments(session, updates)
    session.commit()
    return report


def _stop_reason(lead, suppressed: dict[str, str], now: datetime) -> str:
    """Why this lead gets nothing now: '' (go), 'paused', or the exit reason."""
    if lead.email in suppressed:
        return f"suppressed: {suppressed[lead.email]}"
    if lead.status not in SENDABLE_LEAD_STATUSES:
        return f"lead {lead.status}"
    if lead.status == "paused" and lead.paused_until and lead.paused_until > now:
        return "paused"
    return ""


def _message_row(row, lead, sequence, step, now, lease_end, settings: Settings, status: str) -> dict:
    return {
        "enrollment_id": row.id, "step_id": step.id, "lead_id": lead.id, "sequence_id": sequence.id,
        "status": status, "variant": 0, "subject": "", "attempts": 0,
        "message_id": f"<{uuid.uuid4().hex}@{settings.mail_domain}>",
        "available_at": lease_end, "created_at": now, "smtp_response": "", "error": "",
    }


def _engaged_enrollments(session: Session, enrollment_ids: list[int]) -> set[int]:
    """Enrollments with a human open or click on any of their messages."""
    return set(session.exec(
        select(Message.enrollment_id).join(Event, Event.message_id == Message.id).where(
            Message.enrollment_id.in_(enrollment_ids), Event.kind.in_(("open", "click")), Event.is_machine.is_(False)
        ).distinct()
    ).all())


def _update_enrollments(session: Session, updates: list[dict]) -> None:
    if is_postgresql(session):
        # One statement over arrays: far cheaper than one UPDATE per row at 10,000 rows.
        columns = defaultdict(list)
        for update in updates:
            for key, value in update.items():
                columns[key].append(value)
        session.execute(sa.text(
            """
            UPDATE enrollment AS e SET next_step_id = v.next_step_id, next_run_at = v.next_run_at,
                   status = v.status, finished_at = v.finished_at, exit_reason = v.exit_reason
            FROM unnest(CAST(:id AS integer[]), CAST(:next_step_id AS integer[]),
                        CAST(:next_run_at AS timestamptz[]), CAST(:status AS varchar[]),
                        CAST(:finished_at AS timestamptz[]), CAST(:exit_reason AS varchar[]))
                 AS v(id, next_step_id, next_run_at, status, finished_at, exit_reason)
            WHERE e.id = v.id AND e.id = ANY(CAST(:id AS integer[]))
            """
        ), dict(columns))
    else:
        session.execute(sa.update(Enrollment), updates)


def _insert_messages(session: Session, rows: list[dict]) -> list[tuple[int, str]]:
    """Insert message rows; return (id, status) of each."""
    if not is_postgresql(session):
        return session.execute(sa.insert(Message).returning(Message.id, Message.status), rows).all()
    # One statement over arrays: the ORM's multi-row VALUES with ~13 parameters a row
    # spent most of a 10,000-step tick in the driver's query parsing.
    first = rows[0]
    return session.execute(sa.text(
        """
        INSERT INTO message (enrollment_id, step_id, lead_id, sequence_id, status, message_id,
                             variant, subject, attempts, available_at, created_at, smtp_response, error)
        SELECT v.enrollment_id, v.step_id, v.lead_id, v.sequence_id, v.status, v.message_id,
               0, '', 0, :available_at, :created_at, '', ''
        FROM unnest(CAST(:enrollment_id AS integer[]), CAST(:step_id AS integer[]), CAST(:lead_id AS integer[]),
                    CAST(:sequence_id AS integer[]), CAST(:status AS varchar[]), CAST(:message_id AS varchar[]))
             AS v(enrollment_id, step_id, lead_id, sequence_id, status, message_id)
        RETURNING id, status
        """
    ), {
        **{key: [row[key] for row in rows] for key in ("enrollment_id", "step_id", "lead_id", "sequence_id", "status", "message_id")},
        "available_at": first["available_at"], "created_at": first["created_at"],
    }).all()


def requeue_expired(session: Session, now: datetime, lease_seconds: int, limit: int) -> list[int]:
    """Give queued messages whose lease (or retry delay) has passed a new lease; return their ids."""
    due = (
        select(Message.id).where(Message.status == "queued", Message.available_at <= now)
        .order_by(Message.available_at).limit(limit).with_for_update(skip_locked=True)
    )
    ids = list(session.exec(due).all())
    if ids:
        session.execute(sa.update(Message).where(Message.id.in_(ids))
                        .values(available_at=now + timedelta(seconds=lease_seconds)))
    session.commit()
    return sorted(ids)


UNKNOWN_OUTCOME = "the worker stopped during the SMTP transaction; not sent again, since the server may already have it"


def expire_sending(session: Session, now: datetime, journal: AttemptJournal | None = None) -> int:
    """Settle messages stuck in ``sending`` past their lease: their worker died.

    With the attempt journal: an answered attempt is recorded as answered, a
    message never handed over is queued again, and only an attempt without an
    answer fails as "may have been delivered". Without it, all of them fail.
    """
    ids = list(session.exec(select(Message.id).where(Message.status == "sending", Message.available_at <= now)
                            .limit(10000).with_for_update(skip_locked=True)).all())
    if not ids:
        session.commit()
        return 0
    states = journal.lookup(ids) if journal else {i: ("started", "") for i in ids}
    for message_id, state in states.items():
        outcome, answer = state or ("", "")
        values: dict = {"available_at": None}
        if state is None:
            values.update(status="queued", attempts=Message.attempts - 1, available_at=now)
        elif outcome == "sent":
            values.update(status="sent", sent_at=now, smtp_response=answer, smtp_code=int(answer[:3]) if answer[:3].isdigit() else None)
        elif outcome == "retry":
            values.update(status="queued", available_at=now, error=answer)
        elif outcome == "failed":
            values.update(status="failed", error=f"refused: {answer}")
        else:
            values.update(status="failed", error=UNKNOWN_OUTCOME)
        session.execute(sa.update(Message).where(Message.id == message_id, Message.status == "sending").values(**values))
    session.commit()
    if journal:
        journal.forget(ids)
    return len(ids)
