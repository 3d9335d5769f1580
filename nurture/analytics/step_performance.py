"""Sequence and step performance, and the A/B verdict between a step's subject variants.

The counts are ``nurture.stats.step_figures`` (human events only; machine opens
and clicks apart). Each step's variants are compared on one rate (human opens by
default: the variants differ by subject line) with a two-proportion z-test,
computed as the 2 x k chi-squared test of independence without continuity
correction (for two variants the very same p-value). The leader is declared the
winner only when every variant has at least ``MIN_SAMPLE`` delivered messages
and it beats every other variant with p < ``ALPHA`` / (k - 1) (Bonferroni), so
peeking at a small early sample does not crown a lucky variant.

``ab_winners`` records the winners for new sends.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from scipy.stats import chi2_contingency
from sqlmodel import Session, select

from ..models import Sequence
from ..stats import StepFigures, step_figures
from .chain import AnalyticsError

MIN_SAMPLE = 200  # delivered messages per variant before any verdict
ALPHA = 0.05
METRICS = {"open": "human_opens", "click": "human_clicks", "reply": "replies"}


@dataclass
class Verdict:
    sequence: str
    step: str
    metric: str
    variants: list[int]
    winner: int | None
    p_value: float | None
    text: str


@dataclass
class StepPerformance:
    figures: list[StepFigures]
    verdicts: list[Verdict] = field(default_factory=list)

    def rows(self) -> list[dict]:
        """One flat row per step and variant, with delivered and complaint figures (JSON and CSV)."""
        return [{**f.as_dict(), "delivered": max(f.sent - f.bounced, 0),
                 "complaint_rate": round(f.complaints / max(f.sent - f.bounced, 1), 4)} for f in self.figures]

    def as_dict(self) -> dict:
        return {"steps": self.rows(), "verdicts": [v.__dict__ for v in self.verdicts]}


def verdict(sequence: str, step: str, variants: list[StepFigures], metric: str = "open",
            min_sample: int = MIN_SAMPLE, alpha: float = ALPHA) -> Verdict:
    """The A/B verdict for one step's variants on ``metric`` (open, click or reply)."""
    if metric not in METRICS:
        raise AnalyticsError(f"metric {metric!r}: use one of {', '.join(METRICS)}")
    field_name = METRICS[metric]
    variants = sorted(variants, key=lambda f: f.variant)
    labels = [f.variant for f in variants]
    delivered = [max(f.sent - f.bounced, 0) for f in variants]
    hits = [min(getattr(f, field_name), d) for f, d in zip(variants, delivered)]

    def result(winner, p, text):
        return Verdict(sequence, step, metric, labels, winner, p, text)

    short = [(label, d) for label, d in zip(labels, delivered) if d < min_sample]
    if short:
        listed = ", ".join(f"variant {label} has {d}" for label, d in short)
        return result(None, None, f"not enough data: {listed} delivered of the {min_sample} needed per variant")
    rates = [h / d for h, d in zip(hits, delivered)]
    leader = max(range(len(variants)), key=lambda i: rates[i])
    threshold = alpha / (len(variants) - 1)
    worst_p = 0.0
    for i in range(len(variants)):
        if i == leader:
            continue
        p = _p_value(hits[leader], delivered[leader], hits[i], delivered[i])
        worst_p = max(worst_p, p)
    if worst_p < threshold:
        runner_up = max(rates[i] for i in range(len(variants)) if i != leader)
        return result(labels[leader], worst_p,
                      f"winner: variant {labels[leader]} ({rates[leader]:.1%} {metric} rate, "
                      f"+{(rates[leader] - runner_up) * 100:.1f} points, p={worst_p:.3g})")
    return result(None, worst_p, f"no significant difference yet (p={worst_p:.3g}, needs < {threshold:.3g})")


def _p_value(hits_a: int, n_a: int, hits_b: int, n_b: int) -> float:
    """Two-sided two-proportion z-test (the 2x2 chi-squared test without continuity correction)."""
    if hits_a + hits_b == 0 or hits_a + hits_b == n_a + n_b:
        return 1.0  # both all-or-nothing: nothing tells them apart
    table = [[hits_a, n_a - hits_a], [hits_b, n_b - hits_b]]
    return float(chi2_contingency(table, correction=False).pvalue)


def step_performance(session: Session, sequence_key: str | None = None, metric: str = "open",
                     min_sample: int = MIN_SAMPLE) -> StepPerformance:
    """Every step's figures per variant, and a verdict for each step sent in two or more variants."""
    if metric not in METRICS:
        raise AnalyticsError(f"metric {metric!r}: use one of {', '.join(METRICS)}")
    if sequence_key and session.exec(select(Sequence.id).where(Sequence.key == sequence_key)).first() is None:
        known = ", ".join(session.exec(select(Sequence.key).order_by(Sequence.key)).all()) or "none loaded"
        raise AnalyticsError(f"unknown sequence {sequence_key!r} (known: {known})")
    figures = step_figures(session, sequence_key)
    by_step: dict[tuple[str, str], list[StepFigures]] = defaultdict(list)
    for f in figures:
        by_step[(f.sequence, f.step)].append(f)
    verdicts = [verdict(seq, step, variants, metric, min_sample)
                for (seq, step), variants in by_step.items() if len(variants) > 1]
    return StepPerformance(figures=figures, verdicts=verdicts)

