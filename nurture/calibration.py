"""How good are the close probabilities? A time-ordered holdout on the recorded history.

``evaluate`` takes the snapshots of closed leads (``closed_history``), sorts the
leads by creation time and holds out the newest ``holdout`` share: models learn
only from the older leads and are judged on the newer ones, as they would be in
use. Three models are compared on the same held-out snapshots:

(a) ``stage only``: the manager's manual probability of the stage the lead was in;
(b) ``naive Bayes``: in the style of Odoo's predictive lead scoring, a
    frequency-based naive Bayes (scikit-learn ``CategoricalNB``, Laplace smoothing)
    over the lead's stage, source and language and bucketed engagement counts;
(c) ``ours``: the logistic model of ``probability``, its weights fitted on the
    older leads; its stage input is the manual probability too, because the
    learned stage probabilities are counted from the whole history, held-out
    leads included, and would peek at the answers.

Also shown: ours with the default weights (no fitting). Each model gets the
Brier score and log loss (each lead weighing one) and a reliability table over
ten equal-width bins of the predicted probability (predicted mean vs observed
share). ``verdict`` says in words, either way, whether ours beats (a) and (b).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss
from sklearn.naive_bayes import CategoricalNB
from sqlmodel import Session

from .closed_history import Snapshots, closed_snapshots
from .config import Settings
from .probability import DEFAULT_WEIGHTS, predict, stage_table
from .probability_fit import check_enough, fit_weights

HOLDOUT = 0.3
BINS = 10
CLIP = 1e-4  # a stage at exactly 0 % that still wins would make the log loss infinite
COUNT_BUCKETS = (0, 1, 2, 4)  # engagement counts for naive Bayes: 0, 1, 2-3, 4+


@dataclass
class ModelScore:
    name: str
    brier: float
    log_loss: float
    reliability: list[dict] = field(default_factory=list)


@dataclass
class Evaluation:
    train_leads: int
    test_leads: int
    test_snapshots: int
    test_won: int
    cutoff: datetime  # leads created before it learned, after it were judged
    models: list[ModelScore]
    weights: dict

    def score(self, name: str) -> ModelScore:
        return next(m for m in self.models if m.name == name)

    @property
    def ours_wins(self) -> bool:
        ours = self.score(OURS).brier
        return ours < self.score(STAGE_ONLY).brier and ours < self.score(NAIVE_BAYES).brier

    def verdict(self) -> str:
        ours = self.score(OURS)
        rivals = [self.score(STAGE_ONLY), self.score(NAIVE_BAYES)]
        beaten = [m for m in rivals if ours.brier < m.brier]
        lost_to = [m for m in rivals if ours.brier >= m.brier]
        parts = [f"{m.name} ({m.brier:.4f})" for m in beaten]
        text = f"ours (Brier {ours.brier:.4f}) "
        if not lost_to:
            return text + "beats " + " and ".join(parts) + " on held-out leads."
        losing = " and ".join(f"{m.name} ({m.brier:.4f})" for m in lost_to)
        return text + f"does NOT beat {losing}" + (f"; it beats {', '.join(parts)}" if parts else "") + "."

    def to_json(self) -> dict:
        return {"train_leads": self.train_leads, "test_leads": self.test_leads, "test_snapshots": self.test_snapshots,
                "test_won": self.test_won, "cutoff": self.cutoff.isoformat(), "ours_wins": self.ours_wins,
                "verdict": self.verdict(), "weights": self.weights,
                "models": [{"name": m.name, "brier": m.brier, "log_loss": m.log_loss, "reliability": m.reliability}
                           for m in self.models]}


STAGE_ONLY, NAIVE_BAYES, OURS, OURS_DEFAULT = "stage only (manual)", "naive Bayes", "ours", "ours, default weights"


def reliability(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> list[dict]:
    """Ten equal-width bins of the prediction: how many snapshots, mean predicted, share that were won."""
    observed, predicted = calibration_curve(y, p, n_bins=BINS, strategy="uniform")
    counts, _ = np.histogram(p, bins=BINS, range=(0.0, 1.0))
    leads, _ = np.histogram(p, bins=BINS, range=(0.0, 1.0), weights=w)
    rows, filled = [], iter(zip(predicted, observed))
    for index, count in enumerate(counts):
        if count == 0:
            continue
        mean_predicted, share = next(filled)
        rows.append({"bin": f"{index * 10}-{index * 10 + 10}%", "snapshots": int(count), "leads": round(float(leads[index]), 1),
                     "predicted": float(mean_predicted), "observed": float(share)})
    return rows


def _score(name: str, y: np.ndarray, p: np.ndarray, w: np.ndarray) -> ModelScore:
    p = np.clip(p, CLIP, 1 - CLIP)
    return ModelScore(name, float(brier_score_loss(y, p, sample_weight=w)),
                      float(log_loss(y, p, sample_weight=w, labels=[0, 1])), reliability(y, p, w))


def _categories(snapshots: Snapshots) -> list[list[str]]:
    buckets = np.digitize(snapshots.counts(), COUNT_BUCKETS[1:])
    return [[stage, source, language, *map(str, row)] for stage, source, language, row
            in zip(snapshots.stages, snapshots.sources, snapshots.languages, buckets)]


def naive_bayes(train: Snapshots, test: Snapshots) -> np.ndarray:
    """P(won) of the held-out snapshots from per-field frequencies in the training ones (unseen values: their own category)."""
    train_rows, test_rows = _categories(train), _categories(test)
    columns = len(train_rows[0])
    codes = [{value: code for code, value in enumerate(sorted({row[c] for row in train_rows}))} for c in range(columns)]

    def encode(rows: list[list[str]]) -> np.ndarray:
        return np.array([[codes[c].get(row[c], len(codes[c])) for c in range(columns)] for row in rows])

    model = CategoricalNB(alpha=1.0, min_categories=[len(c) + 1 for c in codes])
    model.fit(encode(train_rows), train.y, sample_weight=train.w)
    return model.predict_proba(encode(test_rows))[:, list(model.classes_).index(1)]


def evaluate(session: Session, settings: Settings, now: datetime, holdout: float = HOLDOUT) -> Evaluation:
    """Learn on the older closed leads, judge (a), (b) and (c) on the newer ones."""
    manual = stage_table(session, manual=True)
    snapshots = closed_snapshots(session, manual, settings.score_half_life_days, now)
    check_enough(snapshots, settings.min_closed_for_fit, "evaluating")
    created = dict(zip(snapshots.lead_ids, snapshots.created_at))
    order = sorted(created, key=lambda lead_id: (created[lead_id], lead_id))
    test_ids = set(order[int(round(len(order) * (1 - holdout))):])
    cutoff = min(created[i] for i in test_ids)
    in_test = np.array([i in test_ids for i in snapshots.lead_ids])
    train, test = snapshots.subset(~in_test), snapshots.subset(in_test)
    check_enough(train, 2, "the training part of the holdout")
    y, w = test.y, test.w
    p_train, p_test = manual.of(train.stages), manual.of(test.stages)
    weights = fit_weights(p_train, train.X, train.y, train.w)
    models = [
        _score(STAGE_ONLY, y, p_test, w),
        _score(NAIVE_BAYES, y, naive_bayes(train, test), w),
        _score(OURS, y, predict(p_test, test.X, weights), w),
        _score(OURS_DEFAULT, y, predict(p_test, test.X, DEFAULT_WEIGHTS), w),
    ]
    return Evaluation(train.leads, test.leads, len(y), test.leads_won, cutoff, models, weights.to_json())
