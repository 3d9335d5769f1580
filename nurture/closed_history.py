"""Closed leads as learning material: what was known about each, week by week, and how it ended.

A lead is closed when a stage change took it into a won or lost stage; it is
won if that stage was a won one. For each closed lead we take a snapshot every
``every_days`` from a day after it was created until it closed: its stage then
(replayed from ``StageChange``), its engagement then (only events up to that
moment, decayed to it) and its fields. Every snapshot carries the final outcome
and the weight 1 / (snapshots of its lead), so that each lead counts once
whatever its length. The model is fitted (``probability_fit``) and judged
(``calibration``) on these rows.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from sqlmodel import Session, select

from .engagement import DECAYING, Engagement, engagement, load_touches
from .models import Lead, StageChange
from .probability import StageTable, feature_matrix

SNAPSHOT_EVERY_DAYS = 7
CHUNK = 1000  # leads per events query


@dataclass
class Snapshots:
    """One row per (closed lead, moment); arrays line up."""

    lead_ids: list[int] = field(default_factory=list)
    created_at: list[datetime] = field(default_factory=list)  # of the lead: the time order of the holdout
    at: list[datetime] = field(default_factory=list)
    stages: list[str] = field(default_factory=list)
    engagements: list[Engagement] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    languages: list[str] = field(default_factory=list)
    won: list[int] = field(default_factory=list)
    weight: list[float] = field(default_factory=list)

    @property
    def X(self) -> np.ndarray:
        return feature_matrix(self.engagements)

    @property
    def y(self) -> np.ndarray:
        return np.array(self.won, dtype=int)

    @property
    def w(self) -> np.ndarray:
        return np.array(self.weight, dtype=float)

    @property
    def leads(self) -> int:
        return len(set(self.lead_ids))

    @property
    def leads_won(self) -> int:
        return len({i for i, won in zip(self.lead_ids, self.won) if won})

    def counts(self) -> np.ndarray:
        """(n, kinds) plain counts of reply, click, open and machine touches up to each moment."""
        return np.array([[e.counts[k] for k in DECAYING] for e in self.engagements], dtype=int).reshape(-1, len(DECAYING))

    def subset(self, mask: np.ndarray) -> "Snapshots":
        picked = Snapshots()
        for name in ("lead_ids", "created_at", "at", "stages", "engagements", "sources", "languages", "won", "weight"):
            values = getattr(self, name)
            setattr(picked, name, [v for v, keep in zip(values, mask) if keep])
        return picked


def closed_snapshots(session: Session, stages: StageTable, half_life_days: float, until: datetime,
                     every_days: int = SNAPSHOT_EVERY_DAYS) -> Snapshots:
    """Snapshots of every lead closed (won or lost) up to ``until``."""
    closing = session.exec(
        select(StageChange.lead_id, StageChange.to_stage, StageChange.changed_at)
        .where(StageChange.to_stage.in_(list(stages.closed)), StageChange.changed_at <= until)
        .order_by(StageChange.changed_at, StageChange.id)).all()
    closed: dict[int, tuple[datetime, bool]] = {}
    for lead_id, to_stage, changed_at in closing:
        closed.setdefault(lead_id, (changed_at, to_stage in stages.won))
    snapshots = Snapshots()
    ids = sorted(closed)
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start:start + CHUNK]
        leads = {row[0]: row for row in session.exec(
            select(Lead.id, Lead.created_at, Lead.source, Lead.language).where(Lead.id.in_(chunk)))}
        timelines: dict[int, list[tuple[datetime, str]]] = {}
        first_stage: dict[int, str] = {}
        for lead_id, from_stage, to_stage, changed_at in session.exec(
                select(StageChange.lead_id, StageChange.from_stage, StageChange.to_stage, StageChange.changed_at)
                .where(StageChange.lead_id.in_(chunk)).order_by(StageChange.changed_at, StageChange.id)):
            first_stage.setdefault(lead_id, from_stage or "new")
            timelines.setdefault(lead_id, []).append((changed_at, to_stage))
        touches = load_touches(session, chunk)
        for lead_id in chunk:
            closed_at, won = closed[lead_id]
            _, created_at, source, language = leads[lead_id]
            moments = []
            moment = created_at + timedelta(days=1)
            while moment < closed_at:
                moments.append(moment)
                moment += timedelta(days=every_days)
            timeline = timelines.get(lead_id, [])
            change_times = [at for at, _ in timeline]
            for moment in moments:
                index = bisect_right(change_times, moment)
                snapshots.lead_ids.append(lead_id)
                snapshots.created_at.append(created_at)
                snapshots.at.append(moment)
                snapshots.stages.append(timeline[index - 1][1] if index else first_stage.get(lead_id, "new"))
                snapshots.engagements.append(engagement(touches.get(lead_id, ()), moment, half_life_days))
                snapshots.sources.append(source or "")
                snapshots.languages.append(language or "")
                snapshots.won.append(int(won))
                snapshots.weight.append(1.0 / len(moments))
    return snapshots
