"""Close probability: explained to the point, fitted on history, stored on every lead, moved by real clicks."""

from __future__ import annotations

import html as html_lib
import json
import re
from datetime import timedelta

from sqlmodel import select

from nurture.engagement import Touch, engagement
from nurture.models import Lead, ModelFit
from nurture.probability import DEFAULT_WEIGHTS, FEATURES, attribution_path, current_weights, explain, feature_matrix, recompute, recompute_all
from nurture.probability_fit import fit_model
from nurture.event_stream import drain, stream_key
from nurture.reactions import on_tracking_events

from conftest import BASE_URL, START, iso, received_by, start_links
from simulated_history import TRUE_EFFECTS, simulate

BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"


def test_fitted_weights_recover_the_sign_and_size_of_the_true_effects(nurture):
    n = nurture
    with n.session() as s:
        history = simulate(s)
        fit = fit_model(s, n.settings, history.now)
    assert fit.n_leads == len(history.closed) and fit.n_won == len(history.won)
    coef = fit.weights["coef"]
    print(fit.weights)
    for name in ("reply", "click", "opted_out"):  # the strong effects: right sign, within a factor of three
        true = TRUE_EFFECTS[name]
        assert coef[name] * true > 0 and abs(true) / 3 < abs(coef[name]) < abs(true) * 1.5, (name, coef[name])
    assert abs(coef["open"]) < 0.4 and abs(coef["machine"]) < 0.15  # weak and null effects stay small
    assert min(coef["reply"], coef["click"]) > coef["open"] > coef["machine"]
    assert 0.7 < fit.weights["stage"] < 1.6  # the stage probability still carries most of the weight
    with n.session() as s:  # the stored fit is what scoring uses from now on
        used = current_weights(s)
    assert used.coef == coef and used.source.startswith("fitted")


def test_fitting_refuses_too_few_closed_leads_and_keeps_the_defaults(nurture):
    n = nurture
    with n.session() as s:
        history = simulate(s, leads=20, seed=5)
    proc = n.cli("model", "fit", "--now", iso(history.now))
    assert proc.returncode == 1 and "closed lead(s)" in proc.stderr and "at least 30" in proc.stderr, proc.stderr
    n.monkeypatch.setenv("NURTURE_MIN_CLOSED_FOR_FIT", "5")
    proc = n.cli("model", "fit", "--now", iso(history.now), check=True)
    assert re.search(r"fitted on \d+ closed leads", proc.stdout)
    assert n.count(ModelFit, ModelFit.kind == "engagement") == 1


def test_every_explanation_adds_up_exactly_to_the_probability(nurture):
    n = nurture
    with n.session() as s:
        history = simulate(s, leads=600, seed=2)
        count = recompute_all(s, n.settings, history.now)
    leads = n.all(select(Lead))
    open_leads = [lead for lead in leads if lead.stage not in ("won", "lost")]
    assert count == len(open_leads) > 50
    moved = 0
    for lead in open_leads:
        assert lead.probability_at == history.now
        points = [item["points"] for item in lead.probability_why]
        assert sum(points) == round(lead.probability * 100), (lead.probability, lead.probability_why)
        assert lead.probability_why[0]["factor"] == "stage"
        text = explain(lead.probability, lead.probability_why, history.now)
        assert text.startswith(f"{round(lead.probability * 100)}%: stage {lead.stage} ")
        moved += len(points) > 1
    assert moved > len(open_leads) / 3  # engagement moved many of them
    won = [lead for lead in leads if lead.stage == "won"]
    assert won and all(lead.probability_at is None for lead in won)  # closed leads are left as they are


def test_contributions_follow_the_features_in_order_and_stop_at_the_final_number():
    now = START
    found = engagement([Touch("reply", now - timedelta(days=2)), Touch("click", now - timedelta(days=3), "https://example.org/case-study"),
                        Touch("open", now - timedelta(days=3))], now, 14.0)
    path = attribution_path([0.22], feature_matrix([found]), DEFAULT_WEIGHTS)[0]
    assert len(path) == 2 + len(FEATURES) and path[0] == 0.22
    assert path[-1] > path[0]
    assert list(path[2:5]) == sorted(path[2:5])  # reply, click, open each add
    assert attribution_path([0.0], feature_matrix([found]), DEFAULT_WEIGHTS)[0][-1] == 0.0  # lost stays lost
    assert attribution_path([1.0], feature_matrix([found]), DEFAULT_WEIGHTS)[0][-1] == 1.0


def test_a_human_click_through_the_tracking_endpoint_raises_the_probability_and_says_why(nurture, web, event_stream):
    n = nurture
    first = start_links(n)
    olga = first["olga@example.com"]
    with n.session() as s:  # scored after the first send: contacted, nothing else yet
        before = recompute(s, n.settings, s.get(Lead, olga.lead_id), n.now)
        s.commit()
    n.advance(hours=3)
    html = received_by(n)["olga@example.com"][0].get_body(("html",)).get_content()
    clicks = [html_lib.unescape(u) for u in re.findall(r'href="(https://nurture\.example\.com/c/[^"]+)"', html)]
    path = next(u for u in clicks if "trap.invalid" not in u).removeprefix(BASE_URL)
    app = web()
    assert app.get(path, headers={"User-Agent": BROWSER}).status_code == 302
    with n.session() as s:
        while drain(s, n.redis, stream_key(n.settings.queue_name), "test",
                    on_events=lambda session, events: on_tracking_events(session, events, n.now, n.settings)):
            pass
    lead = n.lead("olga@example.com")
    assert lead.probability > before.after and lead.probability_at == n.now
    assert lead.stage == "engaged"
    factors = {item["factor"]: item for item in lead.probability_why}
    assert factors["click"]["points"] > 0 and factors["click"]["url"].startswith("https://example.org/")
    text = n.cli("leads", "why", "olga@example.com", check=True).stdout
    assert text.startswith(f"olga@example.com: {round(lead.probability * 100)}%: stage engaged ")
    assert "clicked example.org/" in text and "today" in text
    document = json.loads(n.cli("leads", "why", "olga@example.com", "--json", check=True).stdout)
    assert sum(item["points"] for item in document["why"]) == round(lead.probability * 100)
