"""Learned stage probabilities: simulated histories with known true rates, and the Beta blend."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
import sqlalchemy as sa

from nurture.conversion import blend, stage_probabilities
from nurture.models import Lead, StageChange
from nurture.pipeline import default_pipeline, parse_pipeline

# P(leaving the stage forward) for the chain, the rest is lost; engaged leads may also cool
# down and come back. Everything else is chosen so each probability has a simple closed form.
ADVANCE = {"new": 0.9, "contacted": 0.6, "engaged": 0.5, "qualified": 0.6, "proposal": 0.7, "negotiation": 0.6}
ENGAGED_COOLS = 0.2  # engaged -> cold; the rest of engaged's exits: 0.5 qualified, 0.3 lost
COLD_RETURNS = 0.3  # cold -> engaged; else cold -> archived
CHAIN = ["new", "contacted", "engaged", "qualified", "proposal", "negotiation", "won"]


def true_won_probability() -> dict[str, float]:
    p = {"won": 1.0, "lost": 0.0, "archived": 0.0}
    for stage, following in zip(reversed(CHAIN[:-1]), reversed(CHAIN[1:])):
        if stage == "engaged":
            # w_e = a * w_q + c * r * w_e
            p[stage] = ADVANCE[stage] * p[following] / (1 - ENGAGED_COOLS * COLD_RETURNS)
        else:
            p[stage] = ADVANCE[stage] * p[following]
    p["cold"] = COLD_RETURNS * p["engaged"]
    return p


def simulate(n_leads: int, seed: int = 7) -> list[list[str]]:
    rng = random.Random(seed)
    paths = []
    for _ in range(n_leads):
        path, stage = ["new"], "new"
        while stage not in ("won", "lost", "archived"):
            roll = rng.random()
            if stage == "cold":
                stage = "engaged" if roll < COLD_RETURNS else "archived"
            elif stage == "engaged":
                stage = ("qualified" if roll < ADVANCE["engaged"] else
                         "cold" if roll < ADVANCE["engaged"] + ENGAGED_COOLS else "lost")
            else:
                stage = CHAIN[CHAIN.index(stage) + 1] if roll < ADVANCE[stage] else "lost"
            path.append(stage)
        paths.append(path)
    return paths


def store_paths(n, paths: list[list[str]]) -> None:
    """Leads and their stage changes, written in bulk (the first stage is the lead's origin)."""
    start = n.now
    with n.session() as s:
        ids = s.execute(sa.insert(Lead).returning(Lead.id), [
            {"email": f"sim{i}@example.com", "stage": path[-1], "status": "active", "custom": {}, "probability_why": [],
             "created_at": start, "updated_at": start} for i, path in enumerate(paths)]).scalars().all()
        rows = []
        for lead_id, path in zip(ids, paths):
            for step, (before, after) in enumerate(zip(path, path[1:])):
                rows.append({"lead_id": lead_id, "from_stage": before, "to_stage": after, "reason": "import",
                             "changed_at": start + timedelta(days=step + 1), "note": "", "lost_reason": ""})
        s.execute(sa.insert(StageChange), rows)
        s.commit()


def test_learned_probabilities_converge_to_the_true_rates(nurture):
    store_paths(nurture, simulate(6000))
    with nurture.session() as s:
        stats = stage_probabilities(s, default_pipeline())
    truth = true_won_probability()
    for key in ("new", "contacted", "engaged", "qualified", "proposal", "negotiation", "cold"):
        assert stats[key].learned == pytest.approx(truth[key], abs=0.03), (key, stats[key], truth[key])
    assert stats["engaged"].conversion_to_next == pytest.approx(ADVANCE["engaged"], abs=0.03)
    assert stats["new"].entered == 6000 and stats["new"].exits == 6000
    assert stats["won"].learned == 1.0 and stats["lost"].learned == 0.0
    # with 6000 leads the data outweighs a prior worth 20
    assert abs(stats["new"].blended - stats["new"].learned) < 0.01


def test_blend_follows_the_manual_number_until_the_data_outweighs_it(nurture):
    config = default_pipeline()
    manual = config.stage("negotiation").probability
    assert blend(manual, None, 0, 20) == manual
    assert blend(manual, 0.8, 10, 20) == pytest.approx((20 * manual + 10 * 0.8) / 30)
    # 0, 10 and 1000 leads that left negotiation, 80 % of them won
    for n_leads, expected_weight in ((0, 0.0), (10, 10 / 30), (1000, 1000 / 1020)):
        paths = [["negotiation", "won" if i % 5 else "lost"] for i in range(n_leads)]
        with nurture.session() as s:
            s.execute(sa.delete(StageChange))
            s.execute(sa.delete(Lead))
            s.commit()
        if paths:
            store_paths(nurture, paths)
        with nurture.session() as s:
            row = stage_probabilities(s, config)["negotiation"]
        if n_leads == 0:
            assert row.learned is None and row.blended == manual and row.entered == 0
            continue
        assert row.exits == n_leads and row.learned == pytest.approx(0.8)
        assert row.blended == pytest.approx(manual + expected_weight * (0.8 - manual))


def test_prior_weight_comes_from_the_pipeline_file(nurture):
    document = default_pipeline().model_dump(mode="json")
    document["prior_weight"] = 0
    config = parse_pipeline(document, "test")
    store_paths(nurture, [["negotiation", "won"], ["negotiation", "lost"]])
    with nurture.session() as s:
        row = stage_probabilities(s, config)["negotiation"]
    assert row.blended == row.learned == pytest.approx(0.5)
