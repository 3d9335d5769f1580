"""Engagement: what a lead's opens, clicks and replies are worth at a given moment.

Pure functions over ``Touch`` records (plus ``load_touches``, one query for many
leads). A touch counts for its kind: a human reply far more than a human click,
a click more than an open; what a machine did (a mail scanner following links, an
image proxy fetching the pixel) is kept apart as ``machine`` and counts next to
nothing. Each touch halves in weight every ``half_life_days``: a reply two
half-lives ago counts a quarter of a reply today. An unsubscribe or a complaint
is the ``opted_out`` touch: it does not decay.

``Engagement.decayed`` (decayed counts per kind) feeds the probability model;
``Engagement.score`` (the weighted sum with ``KIND_WEIGHTS``) is the single number
shown on a lead.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Iterable

import numpy as np
from sqlmodel import Session, select

from .models import Event

DECAYING = ("reply", "click", "open", "machine")
KIND_WEIGHTS = {"reply": 10.0, "click": 3.0, "open": 1.0, "machine": 0.05}
OPTED_OUT = "opted_out"
HORIZON_HALF_LIVES = 10  # older touches weigh under 0.1 % of a fresh one: not loaded


@dataclass(frozen=True)
class Touch:
    """One counted event: its kind (one of ``DECAYING`` or ``OPTED_OUT``), when, and the link clicked."""

    kind: str
    at: datetime
    url: str = ""


def touch_kind(event_kind: str, is_machine: bool, data: dict | None = None) -> str | None:
    """Which engagement kind an event counts as, or None (auto-replies, bounces, unsubscribing one sequence)."""
    if event_kind == "reply":
        return "reply"
    if event_kind in ("open", "click"):
        return "machine" if is_machine else event_kind
    if event_kind == "complaint" or (event_kind == "unsubscribe" and (data or {}).get("scope") != "sequence"):
        return OPTED_OUT
    return None


@dataclass
class Engagement:
    """Touches up to one moment: decayed counts, plain counts and the latest touch per kind."""

    decayed: dict[str, float] = field(default_factory=lambda: dict.fromkeys(DECAYING, 0.0))
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DECAYING, 0))
    latest: dict[str, Touch] = field(default_factory=dict)
    opted_out: bool = False

    @property
    def score(self) -> float:
        return sum(KIND_WEIGHTS[kind] * value for kind, value in self.decayed.items())


def decay_factors(ages_days: np.ndarray, half_life_days: float) -> np.ndarray:
    """0.5 ** (age / half-life) for each age in days."""
    return np.exp2(-np.asarray(ages_days, dtype=float) / half_life_days)


def engagement(touches: Iterable[Touch], now: datetime, half_life_days: float) -> Engagement:
    """The engagement of these touches as of ``now`` (touches after ``now`` are ignored)."""
    result = Engagement()
    kept = sorted((t for t in touches if t.at <= now), key=lambda t: t.at)
    if not kept:
        return result
    ages = np.array([(now - t.at).total_seconds() / 86400 for t in kept])
    factors = decay_factors(ages, half_life_days)
    for touch, factor in zip(kept, factors):
        if touch.kind == OPTED_OUT:
            result.opted_out = True
        else:
            result.decayed[touch.kind] += float(factor)
            result.counts[touch.kind] += 1
        result.latest[touch.kind] = touch
    return result


def horizon(now: datetime, half_life_days: float) -> datetime:
    """The oldest moment whose touches still count."""
    return now - timedelta(days=half_life_days * HORIZON_HALF_LIVES)


def load_touches(session: Session, lead_ids: list[int], since: datetime | None = None) -> dict[int, list[Touch]]:
    """The touches of these leads (opt-outs of any age; others since ``since``), oldest first: one query.

    Later touches are loaded too; ``engagement`` ignores what happened after its moment.
    """
    touches: dict[int, list[Touch]] = defaultdict(list)
    if not lead_ids:
        return touches
    # the kinds are sorted out here (touch_kind), not in SQL: a kind filter steers the database to the
    # kind index (a scan of every open in the table) instead of the lead_id one; so do ORDER BY time and an upper bound
    query = select(Event.lead_id, Event.kind, Event.is_machine, Event.occurred_at, Event.data).where(
        Event.lead_id.in_(lead_ids))
    if since is not None:
        query = query.where((Event.occurred_at >= since) | Event.kind.in_(("unsubscribe", "complaint")))
    for lead_id, kind, is_machine, occurred_at, data in session.exec(query):
        counted = touch_kind(kind, is_machine, data)
        if counted is not None:
            touches[lead_id].append(Touch(counted, occurred_at, (data or {}).get("url", "") if kind == "click" else ""))
    for found in touches.values():
        found.sort(key=lambda touch: touch.at)
    return touches
