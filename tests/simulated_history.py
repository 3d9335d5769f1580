"""A realistic recorded history with KNOWN true close probabilities, written straight into the database.

Each lead has a hidden interest ``z`` (inbound leads a little more, cold-list
leads a little less). Messages go out on the systematic calendar (day 0, 3, 14,
30, then monthly); a lead opens, clicks and replies to each with chances that
grow with ``z``; a quarter of the leads sit behind a link scanner that opens and
clicks every message within seconds (machine events that say nothing about
``z``); a few opt out. Stages move the way nurture's rules and a rep would move
them: contacted on the first send, engaged on the first human click or reply,
qualified after a reply, then proposal and negotiation with weekly chances that
grow with ``z``; a lead with no human engagement after 45 days goes cold.

On its decision day the lead is won with the TRUE probability::

    logit(p) = TRUE_STAGE_LOGIT[stage] + sum(TRUE_EFFECTS[k] * x_k)

where ``x`` are the same features nurture computes (log1p of decayed counts with
a 14-day half-life, the opt-out flag): the true effects are known, the manager's
manual stage probabilities (``MANUAL``, nurture's default pipeline) are only
roughly right. Leads whose decision day is after the end of the history stay
open. Everything is drawn from one seeded generator: the same seed gives the
same history, row for row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np
import sqlalchemy as sa
from sqlmodel import Session, select

from nurture.engagement import Touch, engagement
from nurture.models import Event, Lead, Stage, StageChange
from nurture.probability import feature_matrix

HALF_LIFE_DAYS = 14.0
# key: (position, manual probability, won, lost, cold, terminal): nurture's default pipeline
MANUAL = {
    "new": (0, 0.02, False, False, False, False), "contacted": (1, 0.04, False, False, False, False),
    "engaged": (2, 0.12, False, False, False, False), "qualified": (3, 0.25, False, False, False, False),
    "proposal": (4, 0.45, False, False, False, False), "negotiation": (5, 0.70, False, False, False, False),
    "won": (6, 1.0, True, False, False, True), "lost": (7, 0.0, False, True, False, True),
    "cold": (8, 0.03, False, False, True, False), "archived": (9, 0.0, False, False, False, True),
}
TRUE_STAGE_LOGIT = {"new": -4.0, "contacted": -3.6, "engaged": -2.6, "qualified": -1.6, "proposal": -0.8,
                    "negotiation": 0.0, "cold": -4.2}
TRUE_EFFECTS = {"reply": 2.0, "click": 0.9, "open": 0.25, "machine": 0.0, "opted_out": -1.5}
MESSAGE_DAYS = (0, 3, 14, 30, 60, 90, 120, 150, 180)
SOURCES = {"inbound": 0.5, "webinar": 0.0, "cold_list": -0.6}
URLS = ("https://example.org/case-study", "https://example.org/pricing", "https://example.org/demo")
START = datetime(2024, 1, 1, 8, 0, tzinfo=timezone.utc)


@dataclass
class History:
    """What was written, and the truth behind it."""

    now: datetime
    lead_ids: list[int] = field(default_factory=list)
    true_probability: dict[int, float] = field(default_factory=dict)  # closed leads, on their decision day
    won: set[int] = field(default_factory=set)
    closed: set[int] = field(default_factory=set)


def write_stages(session: Session) -> None:
    """The default pipeline's stages, unless they are there already."""
    present = set(session.exec(select(Stage.key)).all())
    for key, (position, probability, won, lost, cold, terminal) in MANUAL.items():
        if key not in present:
            session.add(Stage(key=key, name=key.title(), position=position, probability=probability,
                              is_won=won, is_lost=lost, is_cold=cold, is_terminal=terminal))
    session.commit()


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + np.exp(-x))


def simulate(session: Session, leads: int = 2000, seed: int = 7, days: int = 540, start: datetime = START) -> History:
    """Write ``leads`` leads created over ``days`` days from ``start``, with their events and stage changes."""
    rng = np.random.default_rng(seed)
    write_stages(session)
    now = start + timedelta(days=days)
    history = History(now=now)
    lead_rows, plans = [], []
    for number in range(leads):
        source = rng.choice(list(SOURCES), p=[0.3, 0.3, 0.4])
        created = start + timedelta(days=float(rng.uniform(0, days - 20)))
        email = f"sim{number:06d}@{source.replace('_', '-')}.example.com"
        lead_rows.append({"email": email, "first_name": "Лида" if number % 5 == 0 else "Lee", "last_name": f"N{number}",
                          "company": f"Company {number % 300}", "language": "ru" if number % 5 == 0 else "en",
                          "source": source, "stage": "new", "status": "active", "custom": {}, "probability_why": [],
                          "created_at": created, "updated_at": created, "score": 0.0, "probability": 0.0,
                          "stage_source": "rule", "lost_reason": ""})
        plans.append((email, source, created))
    session.execute(sa.insert(Lead.__table__), lead_rows)
    ids = dict(session.exec(select(Lead.email, Lead.id)).all())
    events, changes, updates = [], [], []
    for email, source, created in plans:
        lead_id = ids[email]
        history.lead_ids.append(lead_id)
        z = float(rng.normal(SOURCES[source], 1.0))
        scanner = rng.random() < 0.25
        decision = created + timedelta(days=float(rng.uniform(30, 150)))
        end = min(decision, now)
        touches: list[Touch] = []
        stage, timeline = "new", []

        def move(to: str, at: datetime, reason: str = "rule") -> None:
            nonlocal stage
            changes.append({"lead_id": lead_id, "from_stage": stage, "to_stage": to, "changed_at": at,
                            "reason": reason, "note": "", "lost_reason": ""})
            timeline.append((at, to))
            stage = to

        def add(kind: str, at: datetime, machine: bool = False, url: str = "") -> None:
            if at >= end:
                return
            data = {"url": url} if url else ({"scope": "all"} if kind == "unsubscribe" else {})
            events.append({"lead_id": lead_id, "kind": kind, "is_machine": machine, "occurred_at": at, "data": data})
            touches.append(Touch("opted_out" if kind == "unsubscribe" else "machine" if machine else kind, at, url))

        opted_out_at = None
        for day in MESSAGE_DAYS:
            sent = created + timedelta(days=day, hours=float(rng.uniform(0, 8)))
            if sent >= end or (opted_out_at is not None and sent > opted_out_at):
                break
            url = URLS[int(rng.integers(len(URLS)))]
            if scanner:
                add("open", sent + timedelta(seconds=20), machine=True)
                add("click", sent + timedelta(seconds=25), machine=True, url=url)
            if rng.random() < _sigmoid(z):
                add("open", sent + timedelta(hours=float(rng.exponential(20))))
                if rng.random() < _sigmoid(z - 1.2):
                    add("click", sent + timedelta(hours=float(rng.exponential(22))), url=url)
            if rng.random() < _sigmoid(z - 2.6):
                add("reply", sent + timedelta(hours=float(rng.exponential(40))))
            if opted_out_at is None and rng.random() < _sigmoid(-z - 4.0):
                opted_out_at = sent + timedelta(hours=float(rng.exponential(30)))
                add("unsubscribe", opted_out_at)
        touches.sort(key=lambda t: t.at)
        # stages, walking the touches and the weeks in time order
        move("contacted", created + timedelta(minutes=5))
        human = [t for t in touches if t.kind in ("click", "reply")]
        replies = [t for t in touches if t.kind == "reply"]
        if human:
            move("engaged", human[0].at)
        elif created + timedelta(days=45) < end:
            move("cold", created + timedelta(days=45))
        if replies and rng.random() < 0.7:
            moment = replies[0].at + timedelta(days=float(rng.uniform(1, 5)))
            if moment < end:
                move("qualified", moment, "manual")
                for later in ("proposal", "negotiation"):
                    while moment < end and rng.random() >= _sigmoid(z - 1.0):
                        moment += timedelta(days=7)
                    moment += timedelta(days=float(rng.uniform(1, 7)))
                    if moment >= end:
                        break
                    move(later, moment, "manual")
        if decision <= now:
            found = engagement(touches, decision, HALF_LIFE_DAYS)
            x = feature_matrix([found])[0]
            p_true = _sigmoid(TRUE_STAGE_LOGIT[stage] + sum(TRUE_EFFECTS[k] * v for k, v in zip(TRUE_EFFECTS, x)))
            won = bool(rng.random() < p_true)
            history.true_probability[lead_id] = float(p_true)
            history.closed.add(lead_id)
            if won:
                history.won.add(lead_id)
            move("won" if won else "lost", decision, "manual")
        status = "unsubscribed" if opted_out_at is not None and opted_out_at < end else "active"
        updates.append({"lead_id": lead_id, "new_stage": stage, "new_status": status,
                        "new_changed_at": timeline[-1][0] if timeline else None})
    session.execute(sa.insert(Event.__table__), events)
    session.execute(sa.insert(StageChange.__table__), changes)
    table = Lead.__table__
    session.execute(sa.update(table).where(table.c.id == sa.bindparam("lead_id")).values(
        stage=sa.bindparam("new_stage"), status=sa.bindparam("new_status"),
        stage_changed_at=sa.bindparam("new_changed_at")), updates)
    session.commit()
    return history
