"""Follow-up after a refusal: a lost deal comes back on a plan, with a reason to return.

- ``on_stage_change`` is ``stages.move_stage``'s hook. A move out of a lost stage
  (a rep reopens the deal) ends the follow-up: its letters would be wrong now.
- ``on_lost`` (a rep or the API moved a lead to a lost stage) stops the lead's
  other sequences and enrolls it in every active sequence with ``trigger: lost``.
  The enrollment's ``context`` keeps what
  the letters need: the lost reason and its labels, the day of the last
  conversation (the lead's last reply or click, a rep's note or our last message,
  else the day it was marked lost), the stage before and when it was lost.
  Imported history (``source="import"``) enrolls nobody: an old refusal is not news.
- ``on_reply`` (called by ``reactions.on_reply`` before the exit rules stop the
  sequence): a lead that answers during the follow-up, or in the silence after
  its last letter, goes back to the engaged stage and the rest of the letters
  are cancelled ("replied"). Its rep is told on the warm-up notice path, where every
  reply notifies (``warmup.after_inbound`` -> ``notify_warm_lead(replied=True)``).
- ``settle_silent``: ``refusal_silence_days`` after the last letter with no answer,
  the lead is archived (``NURTURE_REFUSAL_AFTER=archive``) or handed to the
  cold-return re-offer (``re_offer``, the default): the cold stage, with a return
  date 3..6 months after it was lost. The enrollment's ``exit_reason`` records
  which, so each lead is settled once.
- ``won_back_counts``: per lost reason, leads lost, back in an active stage later,
  and won later (with the value won): the "won back after refusal" flow.

Nothing here commits: the caller's transaction holds the stage change and the
enrollment together.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, select

from .config import Settings
from .models import SENDABLE_LEAD_STATUSES, Enrollment, Event, Lead, Message, Note, Sequence, StageChange, Suppression
from .pipeline import PipelineConfig, stored_pipeline
from .scheduling import first_step, lead_zone, live_steps, schedule_step
from .stages import move_stage, return_date
from .suppression import exit_enrollments, stop_lead

TRIGGER = "lost"
SETTLED_PREFIX = "after refusal: "


def _label(config: PipelineConfig, reason: str) -> dict[str, str]:
    for item in config.lost_reasons:
        if item.key == reason:
            return item.label.model_dump()
    return {"en": reason, "ru": reason}


def last_conversation_at(session: Session, lead_id: int, before: datetime) -> datetime | None:
    """The lead's last human reply or click, a rep's note, or our last sent message, before ``before``."""
    candidates = [
        select(sa.func.max(Event.occurred_at)).where(Event.lead_id == lead_id, Event.kind.in_(("reply", "click")),
                                                     Event.is_machine.is_(False), Event.occurred_at <= before),
        select(sa.func.max(Note.created_at)).where(Note.lead_id == lead_id, Note.created_at <= before),
        select(sa.func.max(Message.sent_at)).where(Message.lead_id == lead_id, Message.status == "sent",
                                                   Message.sent_at <= before),
    ]
    found = [moment for query in candidates if (moment := session.exec(query).one()) is not None]
    return max(found) if found else None


def on_stage_change(session: Session, lead: Lead, change: StageChange, config: PipelineConfig,
                    now: datetime) -> list[str]:
    """After every stage move: into a lost stage, plan the return; out of one, end the follow-up."""
    if config.stage(change.to_stage).lost:
        return on_lost(session, lead, change, now)
    if change.from_stage in config.keys and config.stage(change.from_stage).lost:
        running = [e.id for e in _open_followups(session, lead.id) if e.status in ("active", "paused")]
        if exit_enrollments(session, running, f"moved to {change.to_stage}", now):
            return [f"follow-up after refusal stopped: moved to {change.to_stage}"]
    return []


def on_lost(session: Session, lead: Lead, change: StageChange, now: datetime) -> list[str]:
    """Plan the return of a lead just moved to a lost stage; returns what was done, one line each."""
    if change.reason == "import":
        return []
    actions = []
    stopped = stop_lead(session, lead.id, f"lost ({change.lost_reason})", now)
    if stopped:
        actions.append(f"{stopped} running sequence(s) stopped")
    sequences = session.exec(select(Sequence).where(Sequence.trigger == TRIGGER, Sequence.status == "active")
                             .order_by(Sequence.id)).all()
    if not sequences:
        return actions + ["no active sequence with trigger: lost"]
    suppressed = session.exec(select(Suppression.reason).where(Suppression.email == lead.email)).first()
    if suppressed:
        return actions + [f"not followed up: suppressed ({suppressed})"]
    if lead.status not in SENDABLE_LEAD_STATUSES:
        return actions + [f"not followed up: lead {lead.status}"]
    last = last_conversation_at(session, lead.id, now) or now
    context = {
        "lost_reason": change.lost_reason,
        "lost_reason_label": _label(stored_pipeline(session), change.lost_reason),
        "last_conversation_at": last.isoformat(),
        "stage_before": change.from_stage or "",
        "lost_at": now.isoformat(),
    }
    for sequence in sequences:
        step = first_step(live_steps(session, sequence.id))
        if step is None:
            continue
        tz = lead_zone(lead.timezone, sequence, None)
        session.add(Enrollment(lead_id=lead.id, sequence_id=sequence.id, status="active", next_step_id=step.id,
                               started_at=now, next_run_at=schedule_step(step, sequence, tz, lead.id, now, now),
                               context=dict(context)))
        actions.append(f"enrolled in {sequence.key}")
    session.flush()
    return actions


def _open_followups(session: Session, lead_id: int) -> list[Enrollment]:
    """The lead's refusal enrollments still running, or finished but not yet settled."""
    return list(session.exec(
        select(Enrollment).join(Sequence, Sequence.id == Enrollment.sequence_id).where(
            Enrollment.lead_id == lead_id, Sequence.trigger == TRIGGER,
            sa.or_(Enrollment.status.in_(("active", "paused")),
                   sa.and_(Enrollment.status == "completed", Enrollment.exit_reason == "")))))


def on_reply(session: Session, lead: Lead, now: datetime) -> list[str]:
    """A reply during (or in the silence after) the follow-up after refusal: the lead is back in play."""
    followups = _open_followups(session, lead.id)
    if not followups:
        return []
    exit_enrollments(session, [e.id for e in followups if e.status in ("active", "paused")], "replied", now)
    for enrollment in followups:
        if enrollment.status == "completed":
            enrollment.exit_reason = SETTLED_PREFIX + "replied"
            session.add(enrollment)
    config = stored_pipeline(session)
    if lead.stage not in config.keys or not config.stage(lead.stage).lost:
        return []
    reason = (followups[0].context or {}).get("lost_reason", "")
    move_stage(session, lead, config.rules.engagement, source="rule", now=now, config=config,
               note=f"replied to the follow-up after refusal (lost: {reason})")
    return [f"{lead.email} replied after a refusal ({reason}): back to {config.rules.engagement}"]


def settle_silent(session: Session, settings: Settings, now: datetime, limit: int = 1000) -> list[str]:
    """Archive or hand to the re-offer the leads that stayed silent after the last follow-up letter."""
    cutoff = now - timedelta(days=settings.refusal_silence_days)
    done = session.exec(
        select(Enrollment).join(Sequence, Sequence.id == Enrollment.sequence_id).where(
            Sequence.trigger == TRIGGER, Enrollment.status == "completed", Enrollment.exit_reason == "",
            Enrollment.finished_at <= cutoff).order_by(Enrollment.id).limit(limit)).all()
    if not done:
        return []
    config = stored_pipeline(session)
    archive = next((s.key for s in config.ordered if s.terminal and not s.won and not s.lost), None)
    lines = []
    for enrollment in done:
        lead = session.get(Lead, enrollment.lead_id)
        if lead.stage not in config.keys or not config.stage(lead.stage).lost:
            outcome = f"lead moved on to {lead.stage}"
        elif settings.refusal_after == "archive" and archive:
            move_stage(session, lead, archive, source="rule", now=now, config=config,
                       note=f"no answer to the follow-up after refusal in {settings.refusal_silence_days} days")
            lead.status = "archived" if lead.status in SENDABLE_LEAD_STATUSES else lead.status
            outcome = "archived"
        else:
            lost_at = datetime.fromisoformat(enrollment.context.get("lost_at", now.isoformat()))
            move_stage(session, lead, config.rules.cold, source="rule", now=now, config=config,
                       note="no answer to the follow-up after refusal: handed to the re-offer")
            lead.returns_at = max(return_date(lead.id, config.rules, lost_at), now)
            outcome = f"re-offer on {lead.returns_at:%Y-%m-%d}"
        session.add(lead)
        enrollment.exit_reason = SETTLED_PREFIX + outcome
        session.add(enrollment)
        lines.append(f"{lead.email}: {outcome}")
    session.flush()
    return lines


@dataclass
class WonBack:
    """One lost reason's flow: lost, back in an active stage later, won later."""

    reason: str
    label: dict
    lost: int = 0
    returned: int = 0
    won: int = 0
    won_value: float = 0.0

    @property
    def won_rate(self) -> float:
        return self.won / self.lost if self.lost else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "won_rate": round(self.won_rate, 4)}


def won_back_counts(session: Session, since: datetime | None = None) -> list[WonBack]:
    """Per lost reason (pipeline order, then any others): leads lost since ``since``, and what became of them.

    A lead counts once per reason, from its first loss in the period; "returned"
    is any later move to a stage that is not lost, cold or terminal, "won" a later
    move to a won stage (its deal value summed).
    """
    config = stored_pipeline(session)
    lost_keys = [s.key for s in config.ordered if s.lost]
    won_keys = {s.key for s in config.ordered if s.won}
    active_keys = {s.key for s in config.ordered if not (s.lost or s.cold or s.terminal or s.won)}
    query = select(StageChange.lead_id, StageChange.lost_reason, StageChange.changed_at).where(
        StageChange.to_stage.in_(lost_keys))
    if since is not None:
        query = query.where(StageChange.changed_at >= since)
    first_loss: dict[tuple[int, str], datetime] = {}
    for lead_id, reason, at in session.exec(query.order_by(StageChange.changed_at)).all():
        first_loss.setdefault((lead_id, reason or ""), at)
    later: dict[int, list[tuple[str, datetime, float | None]]] = defaultdict(list)
    lead_ids = sorted({lead_id for lead_id, _ in first_loss})
    for start in range(0, len(lead_ids), 1000):
        for lead_id, to_stage, at, value in session.exec(
                select(StageChange.lead_id, StageChange.to_stage, StageChange.changed_at, StageChange.deal_value)
                .where(StageChange.lead_id.in_(lead_ids[start:start + 1000]),
                       StageChange.to_stage.in_(won_keys | active_keys))).all():
            later[lead_id].append((to_stage, at, value))
    flows = {r.key: WonBack(r.key, r.label.model_dump()) for r in config.lost_reasons}
    for (lead_id, reason), lost_at in first_loss.items():
        flow = flows.setdefault(reason, WonBack(reason, {"en": reason, "ru": reason}))
        flow.lost += 1
        after = [(stage, value) for stage, at, value in later[lead_id] if at > lost_at]
        flow.returned += any(stage in active_keys or stage in won_keys for stage, _ in after)
        wins = [value for stage, value in after if stage in won_keys]
        if wins:
            flow.won += 1
            flow.won_value += wins[0] or 0.0
    return list(flows.values())
