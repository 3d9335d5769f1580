"""The engagement score: weights per kind, machines next to nothing, halving every half-life (``--now``)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import select

from nurture.config import Settings
from nurture.engagement import Touch, engagement, touch_kind
from nurture.errors import ConfigError
from nurture.models import Event, Lead

from conftest import START, iso


def test_a_reply_outweighs_a_click_which_outweighs_an_open_and_machines_count_next_to_nothing():
    scores = {kind: engagement([Touch(kind, START)], START, 14.0).score for kind in ("reply", "click", "open", "machine")}
    assert scores["reply"] > 3 * scores["click"] > 3 * scores["open"] > 3 * 10 * scores["machine"] > 0
    assert touch_kind("open", True) == touch_kind("click", True) == "machine"
    assert touch_kind("auto_reply", False) is None and touch_kind("bounce_soft", False) is None
    assert touch_kind("unsubscribe", False, {"scope": "sequence"}) is None  # leaving one sequence is not opting out
    assert touch_kind("unsubscribe", False, {"scope": "all"}) == touch_kind("complaint", False) == "opted_out"
    assert engagement([Touch("reply", START + timedelta(days=1))], START, 14.0).score == 0  # the future does not count


def lead_with_reply(n, stage: str = "engaged") -> None:
    n.import_csv("email,first_name\nmarina@example.ru,Марина\n")
    with n.session() as s:
        lead = s.exec(select(Lead).where(Lead.email == "marina@example.ru")).one()
        lead.stage = stage
        s.add(lead)
        s.add(Event(lead_id=lead.id, kind="reply", occurred_at=START, data={"text": "Да, интересно"}))
        s.commit()


def rescore_at(n, moment) -> Lead:
    n.cli("leads", "rescore", "--email", "marina@example.ru", "--now", iso(moment), check=True)
    return n.lead("marina@example.ru")


def test_the_score_halves_every_half_life_and_the_probability_decays_with_it(nurture):
    n = nurture
    lead_with_reply(n)
    fresh = rescore_at(n, START)
    two_weeks = rescore_at(n, START + timedelta(days=14))
    four_weeks = rescore_at(n, START + timedelta(days=28))
    assert fresh.score == pytest.approx(10.0) and two_weeks.score == pytest.approx(5.0) and four_weeks.score == pytest.approx(2.5)
    assert fresh.probability > two_weeks.probability > four_weeks.probability > 0.05  # never below the stage's own floor
    assert four_weeks.probability_at == START + timedelta(days=28)
    n.monkeypatch.setenv("NURTURE_SCORE_HALF_LIFE_DAYS", "7")  # a shorter memory: a quarter after two weeks
    assert rescore_at(n, START + timedelta(days=14)).score == pytest.approx(2.5)
    proc = n.cli("leads", "why", "marina@example.ru", "--now", iso(START + timedelta(days=16)), check=True)
    assert "replied 16 days ago" in proc.stdout and "stage engaged" in proc.stdout


def test_the_nightly_rescore_decays_every_open_lead(nurture):
    n = nurture
    lead_with_reply(n)
    rescore_at(n, START)
    proc = n.cli("leads", "rescore", "--all", "--now", iso(START + timedelta(days=30)), check=True)
    assert proc.stdout.startswith("rescored 1 lead(s); warm: 0")
    assert n.lead("marina@example.ru").score == pytest.approx(10 * 0.5 ** (30 / 14), abs=1e-3)
    proc = n.cli("leads", "rescore")
    assert proc.returncode != 0 and "give --all or at least one --email" in proc.stderr
    proc = n.cli("leads", "rescore", "--email", "nobody@example.com")
    assert proc.returncode == 1 and "no lead nobody@example.com" in proc.stderr


@pytest.mark.parametrize("variable, value, message", [
    ("NURTURE_SCORE_HALF_LIFE_DAYS", "0", "must be above 0"),
    ("NURTURE_SCORE_HALF_LIFE_DAYS", "две недели", "is not a number"),
    ("NURTURE_WARM_THRESHOLD", "30", "between 0 and 1"),
    ("NURTURE_WARM_THRESHOLD", "nan", "between 0 and 1"),
    ("NURTURE_WARM_RISE_POINTS", "-5", "between 0 and 100"),
    ("NURTURE_MIN_CLOSED_FOR_FIT", "0", "at least 1"),
    ("NURTURE_MIN_CLOSED_FOR_FIT", "3.5", "not a whole number"),
])
def test_bad_scoring_settings_are_refused_naming_the_variable(variable, value, message):
    with pytest.raises(ConfigError) as error:
        Settings.from_env({variable: value})
    assert str(error.value).startswith(f"{variable}: ") and message in str(error.value)


def test_the_scheduler_rescores_every_lead_once_a_day_of_its_clock(nurture):
    from nurture.periodic import Periodic

    n = nurture
    lead_with_reply(n)
    with n.session() as s:
        first, second = Periodic(n.settings, n.redis), Periodic(n.settings, n.redis)
        first.rescore_daily(s)
        assert n.lead("marina@example.ru").probability_at == START
        n.at(START + timedelta(hours=5))
        second.settings = first.settings = n.settings
        first.rescore_daily(s)
        second.rescore_daily(s)  # another scheduler, the same day: already done
        assert n.lead("marina@example.ru").probability_at == START
        n.at(START + timedelta(days=1, hours=1))
        second.settings = n.settings
        second.rescore_daily(s)
    lead = n.lead("marina@example.ru")
    assert lead.probability_at == START + timedelta(days=1, hours=1) and lead.score == pytest.approx(10 * 0.5 ** (25 / 24 / 14), abs=1e-3)
