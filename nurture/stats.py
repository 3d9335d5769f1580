"""Per-step sending and engagement figures, human events only unless asked.

A message counts as opened (clicked) when it has at least one human open
(click) event; machine events (see ``machine_detection``) are reported on their
own so that proxy prefetches and link scanners never inflate the rates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import sqlalchemy as sa
from sqlmodel import Session, select

from .models import Event, Message, Sequence, Step


@dataclass
class StepFigures:
    sequence: str
    step: str
    variant: int
    sent: int = 0
    bounced: int = 0
    human_opens: int = 0
    machine_opens: int = 0
    human_clicks: int = 0
    machine_clicks: int = 0
    replies: int = 0
    unsubscribes: int = 0
    complaints: int = 0

    def rates(self) -> dict[str, float]:
        delivered = max(self.sent - self.bounced, 0)
        base = delivered or 1
        return {"open_rate": self.human_opens / base, "click_rate": self.human_clicks / base,
                "reply_rate": self.replies / base, "unsubscribe_rate": self.unsubscribes / base,
                "bounce_rate": self.bounced / (self.sent or 1)}

    def as_dict(self) -> dict:
        return {**asdict(self), **{k: round(v, 4) for k, v in self.rates().items()}}


def step_figures(session: Session, sequence_key: str | None = None) -> list[StepFigures]:
    query = (select(Sequence.key, Step.key, Step.position, Message.variant, Message.status, sa.func.count())
             .join(Step, Step.id == Message.step_id).join(Sequence, Sequence.id == Message.sequence_id)
             .where(Message.status.in_(("sent", "bounced")))
             .group_by(Sequence.key, Step.key, Step.position, Message.variant, Message.status))
    if sequence_key:
        query = query.where(Sequence.key == sequence_key)
    figures: dict[tuple, StepFigures] = {}
    order: dict[tuple, int] = {}
    for seq, step, position, variant, status, count in session.exec(query):
        row = figures.setdefault((seq, step, variant), StepFigures(seq, step, variant))
        order[(seq, step, variant)] = position
        row.sent += count
        if status == "bounced":
            row.bounced += count
    events = (select(Sequence.key, Step.key, Message.variant, Event.kind, Event.is_machine,
                     sa.func.count(sa.distinct(Event.message_id)))
              .join(Message, Message.id == Event.message_id).join(Step, Step.id == Message.step_id)
              .join(Sequence, Sequence.id == Message.sequence_id)
              .group_by(Sequence.key, Step.key, Message.variant, Event.kind, Event.is_machine))
    if sequence_key:
        events = events.where(Sequence.key == sequence_key)
    fields = {("open", False): "human_opens", ("open", True): "machine_opens", ("click", False): "human_clicks",
              ("click", True): "machine_clicks", ("reply", False): "replies", ("unsubscribe", False): "unsubscribes",
              ("complaint", False): "complaints"}
    for seq, step, variant, kind, machine, count in session.exec(events):
        row = figures.get((seq, step, variant))
        name = fields.get((kind, bool(machine)))
        if row is not None and name:
            setattr(row, name, getattr(row, name) + count)
    return sorted(figures.values(), key=lambda f: (f.sequence, order[(f.sequence, f.step, f.variant)], f.variant))
