"""Warm-up detection: after a lead acts, recompute its probability and tell its rep if it warmed up.

A lead is warm when its close probability crosses ``NURTURE_WARM_THRESHOLD``
(from below, since it was last scored), rises by more than
``NURTURE_WARM_RISE_POINTS`` within a day (against what it would have been a day
earlier, events and stage as they were then), or it replies: a reply always
counts. The rep is told through ``notifications.notify_warm_lead``, which keeps
to one notice per lead per ``NURTURE_WARM_NOTICE_DAYS`` (a reply always
notifies), assigns leads without an owner and delivers after the commit. A lead
that opted out, or sits in a stage fixed at 0 % or 100 % (lost, archived, won),
is not warm, whatever its engagement. The reason is worded in every team
language; the notice takes its rep's.

``on_activity`` is the hook the event drainer, the inbound pipeline and the
unsubscribe page call, once per batch, inside their transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, select

from .config import Settings
from .models import Lead
from .probability import ProbabilityChange, recompute_all, rescore
from .sequences import LANGUAGES

log = logging.getLogger(__name__)
OPTED_OUT_STATUSES = ("unsubscribed", "complained", "bounced")
REASONS = {
    "en": {"replied": "replied", "crossed": "close probability crossed {threshold:.0%} ({before:.0%} → {after:.0%})",
           "rose": "close probability rose {rise} points in a day ({before:.0%} → {after:.0%})"},
    "ru": {"replied": "лид ответил", "crossed": "вероятность сделки достигла порога {threshold:.0%} ({before:.0%} → {after:.0%})",
           "rose": "вероятность сделки выросла на {rise} п. п. за сутки ({before:.0%} → {after:.0%})"},
}


@dataclass
class WarmUp:
    lead_id: int
    reason: str
    notified: bool  # False: a notice went out recently (notify_warm_lead's dedupe)


def is_warm(lead: Lead, settings: Settings) -> bool:
    """Whether the lead, as last scored, counts as warm now."""
    return lead.status not in OPTED_OUT_STATUSES and 0 < lead.probability < 1 \
        and lead.probability >= settings.warm_threshold


def warm_reason(change: ProbabilityChange, settings: Settings, replied: bool = False, rises: bool = True,
                language: str = "en") -> str | None:
    """Why this change makes the lead warm, in ``language``, or None (``rises=False``: only a crossing counts)."""
    words = REASONS[language]
    if replied:
        return words["replied"]
    before = change.before if change.scored_before or change.day_ago is None else change.day_ago
    if not 0 < change.after < 1:
        return None
    if before < settings.warm_threshold <= change.after:
        return words["crossed"].format(threshold=settings.warm_threshold, before=before, after=change.after)
    if rises and change.day_ago is not None and (change.after - change.day_ago) * 100 > settings.warm_rise_points:
        rise = round((change.after - change.day_ago) * 100)
        return words["rose"].format(rise=rise, before=change.day_ago, after=change.after)
    return None


def detect(session: Session, settings: Settings, changes: list[ProbabilityChange], now: datetime,
           replied: frozenset[int] = frozenset(), rises: bool = True) -> list[WarmUp]:
    """Notify the reps of the leads these changes warmed up; return what was found."""
    from .notifications import notify_warm_lead

    reasons = {c.lead_id: (reason, c) for c in changes if (reason := warm_reason(c, settings, c.lead_id in replied, rises))}
    if not reasons:
        return []
    found = []
    for lead in session.exec(select(Lead).where(Lead.id.in_(list(reasons))).order_by(Lead.id)):
        reason, change = reasons[lead.id]
        if lead.id not in replied and lead.status in OPTED_OUT_STATUSES:
            continue
        words = {language: f"{warm_reason(change, settings, lead.id in replied, rises, language)}: "
                           f"{change.explain(now, language)}" for language in LANGUAGES}
        notices = notify_warm_lead(session, settings, lead, words, now, replied=lead.id in replied)
        found.append(WarmUp(lead.id, reason, bool(notices)))
    return found


def on_activity(session: Session, settings: Settings, lead_ids: list[int], now: datetime, *,
                replied: frozenset[int] = frozenset()) -> list[WarmUp]:
    """Recompute these leads (their events are already in the session) and notify for the warm ones.

    It runs in a savepoint and never fails its caller: an unsubscribe or a batch of events
    must be stored even if scoring breaks (the nightly pass recomputes the lead anyway).
    """
    try:
        with session.begin_nested():
            changes = rescore(session, settings, sorted(set(lead_ids)), now, day_ago=True)
            return detect(session, settings, changes, now, replied)
    except Exception:
        log.exception("recomputing the probability of lead(s) %s failed", sorted(set(lead_ids))[:20])
        return []


def after_inbound(session: Session, settings: Settings, email: str, kind: str, now: datetime) -> list[str]:
    """The inbound pipeline's hook: rescore the lead a mail was matched to; a reply always notifies."""
    lead = session.exec(select(Lead).where(Lead.email == email)).first()
    if lead is None:
        return []
    before = lead.probability
    warm = on_activity(session, settings, [lead.id], now, replied=frozenset({lead.id} if kind == "reply" else ()))
    actions = [f"close probability {before:.0%} → {lead.probability:.0%}"]
    actions += [f"warm: {w.reason}" + ("; rep notified" if w.notified else "; rep notified recently") for w in warm]
    return actions


def rescore_nightly(session: Session, settings: Settings, now: datetime, progress=None) -> tuple[int, list[WarmUp]]:
    """Recompute every open lead (decay); notify for leads that crossed the threshold without an event (stage moves).

    Rises within a day were already noticed when their events arrived; only crossings are looked for here.
    """
    warm: list[WarmUp] = []
    count = recompute_all(session, settings, now, progress,
                          on_batch=lambda s, changes: warm.extend(detect(s, settings, changes, now, rises=False)))
    return count, warm

