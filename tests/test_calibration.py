"""The calibration report on a simulated history with known true probabilities (``nurture model evaluate``)."""

from __future__ import annotations

import json

import numpy as np
from sqlmodel import select

from nurture.calibration import NAIVE_BAYES, OURS, STAGE_ONLY, evaluate
from nurture.models import ModelFit

from conftest import iso
from simulated_history import simulate


def test_ours_beats_stage_only_and_naive_bayes_on_brier_and_the_report_says_so(nurture):
    n = nurture
    with n.session() as s:
        history = simulate(s)
        result = evaluate(s, n.settings, history.now)
    ours, stage_only, bayes = result.score(OURS), result.score(STAGE_ONLY), result.score(NAIVE_BAYES)
    print({m.name: (round(m.brier, 4), round(m.log_loss, 4)) for m in result.models})
    assert ours.brier < stage_only.brier and ours.brier < bayes.brier
    assert ours.log_loss < stage_only.log_loss and ours.log_loss < bayes.log_loss
    assert result.ours_wins and result.verdict().startswith(f"ours (Brier {ours.brier:.4f}) beats")
    # time-ordered: the judged leads are the newest 30 %, none of them seen in learning
    assert result.test_leads == round(len(history.closed) * 0.3) and result.train_leads + result.test_leads == len(history.closed)
    # the reliability table covers every judged snapshot and ours is close to the diagonal where it has data
    for model in result.models:
        assert sum(row["snapshots"] for row in model.reliability) == result.test_snapshots
    well_filled = [row for row in ours.reliability if row["leads"] >= 50]
    assert well_filled and all(abs(row["predicted"] - row["observed"]) < 0.06 for row in well_filled)
    # a Brier score no better than the truth itself allows: the true probabilities of the judged leads
    truth = np.array([history.true_probability[i] for i in history.closed])
    outcome = np.array([i in history.won for i in history.closed])
    assert 0 < np.mean((truth - outcome) ** 2) < stage_only.brier


def test_model_evaluate_cli_prints_the_tables_and_the_verdict_and_json(nurture):
    n = nurture
    with n.session() as s:
        history = simulate(s, leads=1200, seed=11)
    n.at(history.now)
    text = n.cli("model", "evaluate", check=True).stdout
    assert "stage only (manual)" in text and "naive Bayes" in text and "reliability: ours" in text
    assert "ours (Brier" in text.splitlines()[-1]
    document = json.loads(n.cli("model", "evaluate", "--json", check=True).stdout)
    names = [m["name"] for m in document["models"]]
    assert names[:3] == [STAGE_ONLY, NAIVE_BAYES, OURS]
    briers = {m["name"]: m["brier"] for m in document["models"]}
    assert document["ours_wins"] == (briers[OURS] < min(briers[STAGE_ONLY], briers[NAIVE_BAYES]))
    assert document["verdict"].split(")")[0] == f"ours (Brier {briers[OURS]:.4f}"
    assert n.count(ModelFit, ModelFit.kind == "engagement") == 0  # evaluating stores nothing


def test_evaluate_refuses_a_history_too_small_with_a_clear_error(nurture):
    n = nurture
    with n.session() as s:
        history = simulate(s, leads=20, seed=3)
    n.at(history.now)
    proc = n.cli("model", "evaluate", "--now", iso(history.now))
    assert proc.returncode == 1
    assert "closed lead(s)" in proc.stderr and "NURTURE_MIN_CLOSED_FOR_FIT" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert n.all(select(ModelFit).where(ModelFit.kind == "engagement")) == []
