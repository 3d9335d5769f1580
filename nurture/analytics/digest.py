"""The analytics section of the managers' weekly digest: the bottleneck, and the plan against actuals.

``manager_section`` returns plain JSON-able data for the digest's payload (the
weekly review stores it in ``Notification.payload``; its templates print it),
once per language the team's emails are written in: the figures are read once,
the bottleneck sentence is worded in each language ("Bottleneck: contacted ->
engaged converts 10% against 50% (plan), ..." / "Узкое место: contacted →
engaged, конверсия 10% против 50% по плану, ..."). The plan against actuals is
data; each language's template words it. A question that cannot be answered yet
(no movement, no plan) gives a sentence saying so, never an error that would
stop the review.
"""

from __future__ import annotations

from datetime import datetime

from babel.numbers import format_decimal
from sqlmodel import Session

from ..conversion import stage_probabilities
from ..sequences import LANGUAGES
from .backwards_plan import latest_plan, progress
from .bottleneck import MIN_EXITS, Bottleneck, bottleneck
from .chain import load_chain

# the reference a step is compared with: (after "against 50%", after "at or above")
_REFERENCE_RU = {"plan": ("по плану", "плана"), "trailing average": ("в среднем за прошлые недели", "среднего за прошлые недели")}


def manager_section(session: Session, now: datetime) -> dict[str, dict]:
    """The section in each team language: ``{"en": {...}, "ru": {...}}``."""
    chain = load_chain(session)
    plan = latest_plan(session, now)
    won_from = {key: p.blended for key, p in stage_probabilities(session).items()}
    found = bottleneck(session, chain, won_from, now, plan)
    step = {"stage": found.worst.stage, "next_stage": found.worst.next_stage,
            "deals_per_month": found.worst.deals_per_month} if found.worst else None
    plan_progress = progress(session, chain, plan, now).as_dict() if plan else None
    return {language: {"bottleneck": _SENTENCES[language](found), "bottleneck_step": step, "plan": plan_progress}
            for language in LANGUAGES}


def _bottleneck_in_russian(found: Bottleneck) -> str:
    against, at_or_above = _REFERENCE_RU[found.reference]
    w = found.worst
    if w is None:
        if found.judged:
            return f"Узкого места нет: все этапы не ниже {at_or_above}"
        return (f"Узкого места нет: пока мало данных — за последние {found.window_days} дн. ни с одного этапа "
                f"не ушло {MIN_EXITS} и более лидов")
    return (f"Узкое место: {w.stage} → {w.next_stage}, конверсия {w.recent:.0%} против {w.reference:.0%} {against}, "
            f"теряем около {format_decimal(w.deals_per_month, '0.0', locale='ru')} сделки в месяц")


_SENTENCES = {"en": Bottleneck.sentence, "ru": _bottleneck_in_russian}
