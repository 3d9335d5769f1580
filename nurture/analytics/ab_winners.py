"""A/B winners promoted for new sends.

``promote_winners`` records the steps whose A/B verdict named a winner (a
``ModelFit`` row of kind ``ab_winners``: step id -> variant). With
``NURTURE_AB_AUTO_PROMOTE`` on, ``sending`` reads them once per batch and gives
new messages of such a step the winner's subject (``variant_for``); messages
already sent keep theirs. Kept apart from ``step_performance`` so the send path
does not import the statistics.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, select

from ..models import ModelFit, Sequence, Step

WINNERS_KIND = "ab_winners"


def promote_winners(session: Session, verdicts: list, now: datetime) -> dict[int, int]:
    """Record the winners of ``verdicts`` (``step_performance.Verdict``) as step id -> variant; returns them."""
    steps = {(seq, key): step_id for seq, key, step_id in session.exec(
        select(Sequence.key, Step.key, Step.id).join(Sequence, Sequence.id == Step.sequence_id))}
    winners = {steps[(v.sequence, v.step)]: v.winner for v in verdicts
               if v.winner is not None and (v.sequence, v.step) in steps}
    session.add(ModelFit(kind=WINNERS_KIND, fitted_at=now, weights={str(k): w for k, w in winners.items()},
                         metrics={"steps": len(winners)}))
    session.commit()
    return winners


def promoted_variants(session: Session) -> dict[int, int]:
    """The winners last recorded: step id -> variant (empty before any)."""
    weights = session.exec(select(ModelFit.weights).where(ModelFit.kind == WINNERS_KIND)
                           .order_by(ModelFit.id.desc()).limit(1)).first()
    return {int(k): int(v) for k, v in (weights or {}).items()}


def variant_for(promoted: dict[int, int], step_id: int, count: int, assigned: int) -> int:
    """The step's promoted winner when it exists among these ``count`` subjects, else the ``assigned`` variant."""
    winner = promoted.get(step_id)
    return winner if winner is not None and 0 <= winner < count else assigned
