"""Fitting the close-probability weights on recorded history (``nurture model fit``).

A logistic regression (scikit-learn) on the snapshots of closed leads
(``closed_history``): the inputs are logit(p_stage) and the engagement features,
so its coefficients are exactly the model's ``a`` (stage) and ``w`` and its
intercept ``b``. Each lead weighs one in total. A light L2 penalty keeps the
weights finite when a feature is rare. The result is stored as a ``ModelFit``
row of kind ``engagement``; until one exists the defaults are used. Fewer closed
leads than ``NURTURE_MIN_CLOSED_FOR_FIT``, or only one outcome, is refused with a
message saying what is missing (and the weights in use stay as they were).
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sqlmodel import Session

from .closed_history import Snapshots, closed_snapshots
from .config import Settings
from .errors import NurtureError
from .models import ModelFit
from .probability import FEATURES, MODEL_KIND, Weights, logit, predict, stage_table

REGULARISATION_C = 10.0


def fit_weights(p_stage: np.ndarray, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray) -> Weights:
    """The weights that best predict ``y`` from the stage probabilities and features (leads at 0 or 1 left out)."""
    open_rows = (p_stage > 0) & (p_stage < 1)
    inputs = np.column_stack([logit(p_stage[open_rows]), X[open_rows]])
    model = LogisticRegression(C=REGULARISATION_C, max_iter=2000)
    model.fit(inputs, y[open_rows], sample_weight=sample_weight[open_rows])
    coefficients = model.coef_[0]
    return Weights(stage=float(coefficients[0]), intercept=float(model.intercept_[0]),
                   coef={name: float(value) for name, value in zip(FEATURES, coefficients[1:])}, source="fitted")


def check_enough(snapshots: Snapshots, minimum: int, what: str = "fitting") -> None:
    leads, won = snapshots.leads, snapshots.leads_won
    if leads < minimum:
        raise NurtureError(f"only {leads} closed lead(s) (won or lost) in the history; {what} needs at least "
                           f"{minimum} (NURTURE_MIN_CLOSED_FOR_FIT): the default weights stay in use")
    if won == 0 or won == leads:
        raise NurtureError(f"all {leads} closed leads were {'won' if won else 'lost'}: {what} needs both outcomes")


def fit_model(session: Session, settings: Settings, now: datetime) -> ModelFit:
    """Fit the weights on every lead closed up to ``now``, store them, and return the stored row."""
    stages = stage_table(session)
    snapshots = closed_snapshots(session, stages, settings.score_half_life_days, now)
    check_enough(snapshots, settings.min_closed_for_fit)
    p_stage, X, y, w = stages.of(snapshots.stages), snapshots.X, snapshots.y, snapshots.w
    weights = fit_weights(p_stage, X, y, w)
    fitted = np.clip(predict(p_stage, X, weights), 1e-6, 1 - 1e-6)
    fit = ModelFit(kind=MODEL_KIND, fitted_at=now, n_leads=snapshots.leads, n_won=snapshots.leads_won,
                   weights=weights.to_json(),
                   metrics={"snapshots": len(y), "half_life_days": settings.score_half_life_days,
                            "log_loss_in_sample": float(log_loss(y, fitted, sample_weight=w, labels=[0, 1]))})
    session.add(fit)
    session.commit()
    return fit
