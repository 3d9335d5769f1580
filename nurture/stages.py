"""Moving leads between pipeline stages: by hand, and by the stage rules.

``move_stage`` is the one way a lead changes stage: it checks the stage key
(and the lost reason when the stage is a lost one), records a ``StageChange``
and updates the lead, in the caller's transaction.

The rules (which stage each one targets is in ``pipeline.yaml``):

- first message sent -> contacted (``on_first_send``, one statement per batch);
- human click or reply -> engaged (``on_engagement``); a cold lead that engages
  comes back to engaged;
- unsubscribe -> archived (``on_unsubscribe``);
- no human engagement for ``cold_after_days`` after the last touch -> cold, with a
  return date 3..6 months later, fixed per lead (``cool_stale_leads``).

Rules only move leads forward along the chain, except cooling and archiving;
they never move a won, lost or terminal lead, and never move a lead off a stage
a rep set by hand except forward: they leave it and return (and log) why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, select

from .models import STAGE_CHANGE_SOURCES, Event, Lead, Message, StageChange
from .pipeline import PipelineConfig, RuleSettings, stored_pipeline
from .send_window import seed_fraction

log = logging.getLogger(__name__)
DAYS_PER_MONTH = 365.25 / 12
HUMAN_ENGAGEMENT = ("open", "click", "reply")  # counted only when not is_machine


@dataclass
class RuleOutcome:
    """What a rule did to one lead, or why it left it alone."""

    lead_id: int
    email: str
    from_stage: str
    to_stage: str
    moved: bool
    reason: str


def move_stage(session: Session, lead: Lead, to_stage: str, *, source: str, now: datetime, note: str = "",
               by_user_id: int | None = None, lost_reason: str = "", deal_value: float | None = None,
               config: PipelineConfig | None = None) -> StageChange | None:
    """Put ``lead`` in ``to_stage`` and record why; None when it is already there.

    Raises ``ValueError`` for an unknown stage (naming the valid ones), a missing or
    unknown lost reason on a lost stage, or a lost reason on any other stage.
    """
    if source not in STAGE_CHANGE_SOURCES:
        raise ValueError(f"unknown source {source!r}; use one of {', '.join(STAGE_CHANGE_SOURCES)}")
    config = config or stored_pipeline(session)
    target = config.stage(to_stage)
    if target.lost:
        if not lost_reason:
            raise ValueError(f"moving to {to_stage} needs a lost reason: one of {', '.join(config.lost_reason_keys)}")
        if lost_reason not in config.lost_reason_keys:
            raise ValueError(f"unknown lost reason {lost_reason!r}; use one of {', '.join(config.lost_reason_keys)}")
    elif lost_reason:
        raise ValueError(f"a lost reason goes only with a lost stage, not {to_stage}")
    if lead.stage == to_stage and deal_value is None:
        return None
    change = StageChange(lead_id=lead.id, from_stage=lead.stage, to_stage=to_stage, changed_at=now, reason=source,
                         note=note[:500], by_user_id=by_user_id, lost_reason=lost_reason, deal_value=deal_value)
    session.add(change)
    lead.stage, lead.stage_changed_at, lead.stage_source = to_stage, now, source
    lead.lost_reason = lost_reason
    if deal_value is not None:
        lead.deal_value = deal_value
    if not target.cold:
        lead.returns_at = None
    lead.updated_at = now
    session.add(lead)
    session.flush()
    from .refusal import on_stage_change  # refusal builds on this module: imported here, not at the top

    on_stage_change(session, lead, change, config, now)
    return change


def rule_refusal(config: PipelineConfig, lead: Lead, to_stage: str) -> str:
    """Why a rule may not move ``lead`` to ``to_stage`` ("" when it may)."""
    if lead.stage == to_stage:
        return f"already {to_stage}"
    if lead.stage not in config.keys:
        return f"stage {lead.stage!r} is not in the pipeline"
    current = config.stage(lead.stage)
    if current.terminal:
        return f"{lead.stage} is final"
    if config.is_forward(lead.stage, to_stage) or (current.cold and to_stage == config.rules.engagement):
        return ""
    if lead.stage_source == "manual":
        return f"{lead.stage} was set by hand; a rule does not move it to {to_stage}"
    if current.cold and to_stage in config.chain:
        return f"{lead.stage} leads come back only by engaging"
    if to_stage in config.chain:
        return f"{to_stage} is not ahead of {lead.stage}"
    return ""  # sideways, off the chain: cooling, archiving


def _apply_rule(session: Session, lead: Lead, to_stage: str, now: datetime, note: str,
                config: PipelineConfig) -> StageChange | None:
    refusal = rule_refusal(config, lead, to_stage)
    if refusal:
        if not refusal.startswith("already"):
            log.info("stage rule left %s in %s: %s", lead.email, lead.stage, refusal)
        return None
    return move_stage(session, lead, to_stage, source="rule", now=now, note=note, config=config)


_lead, _change = Lead.__table__, StageChange.__table__
_FIRST_SEND_WHERE = sa.and_(_lead.c.id.in_(sa.bindparam("b_ids", expanding=True)),
                            _lead.c.stage.in_(sa.bindparam("b_before", expanding=True)))
# Built once and run on the connection: the worker runs them for every chunk it sends.
_FIRST_SEND_CHANGES = sa.insert(_change).from_select(
    ["lead_id", "from_stage", "to_stage", "changed_at", "reason", "note", "lost_reason"],
    sa.select(_lead.c.id, _lead.c.stage, sa.bindparam("b_to", type_=sa.String()),
              sa.bindparam("b_at", type_=_change.c.changed_at.type), sa.literal("rule"),
              sa.literal("first message sent"), sa.literal("")).where(_FIRST_SEND_WHERE))
_FIRST_SEND_LEADS = sa.update(_lead).where(_FIRST_SEND_WHERE).values(
    stage=sa.bindparam("b_to"), stage_changed_at=sa.bindparam("b_at"), stage_source="rule", updated_at=sa.bindparam("b_at"))


def on_first_send(session: Session, lead_ids: list[int], now: datetime, config: PipelineConfig | None = None) -> int:
    """Leads still before ``rules.first_send`` move there: one INSERT ... SELECT for the batch,
    and one UPDATE when it recorded anything (after the first message, usually nothing)."""
    if not lead_ids:
        return 0
    config = config or stored_pipeline(session)
    target = config.rules.first_send
    params = {"b_ids": sorted(set(lead_ids)), "b_before": [key for key in config.chain if config.is_forward(key, target)],
              "b_to": target, "b_at": now}
    connection = session.connection()
    if not connection.execute(_FIRST_SEND_CHANGES, params).rowcount:
        return 0
    return connection.execute(_FIRST_SEND_LEADS, params).rowcount or 0


def on_engagement(session: Session, lead: Lead, now: datetime, what: str,
                  config: PipelineConfig | None = None) -> StageChange | None:
    """A human click or reply: the lead is engaged (a cold lead comes back)."""
    config = config or stored_pipeline(session)
    return _apply_rule(session, lead, config.rules.engagement, now, what, config)


def on_unsubscribe(session: Session, lead: Lead, now: datetime, config: PipelineConfig | None = None) -> StageChange | None:
    config = config or stored_pipeline(session)
    return _apply_rule(session, lead, config.rules.unsubscribe, now, "unsubscribed", config)


def return_date(lead_id: int, rules: RuleSettings, now: datetime) -> datetime:
    """When a cooled lead comes back: 3..6 months (the configured window) from now, fixed per lead."""
    months = rules.cold_return_months_min + seed_fraction(lead_id, "cold-return") * (
        rules.cold_return_months_max - rules.cold_return_months_min)
    return now + timedelta(days=round(months * DAYS_PER_MONTH))


def cool_stale_leads(session: Session, settings: object, now: datetime) -> list[RuleOutcome]:
    """Leads with no human engagement for ``cold_after_days`` since their last touch go cold.

    ``settings`` is the pipeline's ``RuleSettings``, or a ``PipelineConfig``; anything
    else (the app's ``Settings``, None) means the stored pipeline's rules. Only touched leads (at least one message sent) in a non-final stage of
    the chain are considered; leads a rep put in their stage by hand are left there
    and listed with ``moved=False``. Returns one outcome per stale lead.
    """
    config = settings if isinstance(settings, PipelineConfig) else stored_pipeline(session)
    rules = settings if isinstance(settings, RuleSettings) else config.rules
    cutoff = now - timedelta(days=rules.cold_after_days)
    open_stages = [key for key in config.chain if not config.stage(key).terminal]
    last_touch = (select(Message.lead_id, sa.func.max(Message.sent_at).label("at"))
                  .where(Message.status == "sent").group_by(Message.lead_id).subquery())
    last_human = (select(Event.lead_id, sa.func.max(Event.occurred_at).label("at"))
                  .where(Event.kind.in_(HUMAN_ENGAGEMENT), Event.is_machine.is_(False)).group_by(Event.lead_id).subquery())
    stale = session.exec(
        select(Lead).join(last_touch, last_touch.c.lead_id == Lead.id)
        .outerjoin(last_human, last_human.c.lead_id == Lead.id)
        .where(Lead.stage.in_(open_stages), last_touch.c.at <= cutoff,
               sa.or_(last_human.c.at.is_(None), last_human.c.at <= cutoff),
               sa.or_(Lead.stage_changed_at.is_(None), Lead.stage_changed_at <= cutoff))
        .order_by(Lead.id)).all()
    outcomes = []
    for lead in stale:
        from_stage = lead.stage
        refusal = rule_refusal(config, lead, rules.cold)
        if refusal:
            outcomes.append(RuleOutcome(lead.id, lead.email, from_stage, rules.cold, False, refusal))
            continue
        move_stage(session, lead, rules.cold, source="rule", now=now, config=config,
                   note=f"no human engagement for {rules.cold_after_days} days after the last touch")
        lead.returns_at = return_date(lead.id, rules, now)
        session.add(lead)
        outcomes.append(RuleOutcome(lead.id, lead.email, from_stage, rules.cold, True,
                                    f"returns {lead.returns_at:%Y-%m-%d}"))
    session.flush()
    return outcomes
