"""Step performance per variant, the A/B verdict, and promoting the winner for new sends."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from scipy.stats import norm
from sqlmodel import Session, select

from conftest import START, send_due
from nurture.analytics.ab_winners import promote_winners, promoted_variants, variant_for
from nurture.analytics.chain import AnalyticsError
from nurture.analytics.step_performance import Verdict, step_performance, verdict
from nurture.models import Enrollment, Event, Lead, Message, Sequence, Step
from nurture.sending import pick_variant
from nurture.stats import StepFigures


def variant(v: int, sent: int, opens: int, bounced: int = 0, replies: int = 0) -> StepFigures:
    return StepFigures("seq", "first", v, sent=sent, bounced=bounced, human_opens=opens, replies=replies)


def test_two_variants_winner_with_the_z_test_p_value():
    result = verdict("seq", "first", [variant(0, 1010, 300, bounced=10), variant(1, 1000, 240)])
    # pooled 540/2000 = 0.27; z = 0.06 / sqrt(0.27 * 0.73 * 2/1000)
    z = 0.06 / math.sqrt(0.27 * 0.73 * 2 / 1000)
    assert result.p_value == pytest.approx(2 * norm.sf(z), rel=1e-9)
    assert result.winner == 0
    assert result.text == f"winner: variant 0 (30.0% open rate, +6.0 points, p={2 * norm.sf(z):.3g})"


def test_no_winner_before_the_minimum_sample_whatever_the_difference():
    result = verdict("seq", "first", [variant(0, 150, 140), variant(1, 400, 10)])
    assert result.winner is None and result.p_value is None
    assert result.text == "not enough data: variant 0 has 150 delivered of the 200 needed per variant"


def test_a_small_difference_is_no_winner():
    result = verdict("seq", "first", [variant(0, 500, 110), variant(1, 500, 100)])
    assert result.winner is None and result.p_value > 0.05
    assert result.text.startswith("no significant difference yet (p=")


def test_three_variants_need_the_leader_to_beat_each_other_one_with_bonferroni():
    # the leader beats variant 2 clearly but variant 1 only at p ~ 0.03: above 0.05 / 2
    variants = [variant(0, 1000, 300), variant(1, 1000, 262), variant(2, 1000, 150)]
    result = verdict("seq", "first", variants)
    assert result.winner is None and "needs < 0.025" in result.text
    assert verdict("seq", "first", variants[::2]).winner == 0


def test_verdict_on_replies_and_an_unknown_metric():
    assert verdict("seq", "s", [variant(0, 300, 0, replies=40), variant(1, 300, 0, replies=10)], "reply").winner == 0
    with pytest.raises(AnalyticsError, match="metric 'likes': use one of open, click, reply"):
        verdict("seq", "s", [variant(0, 300, 0), variant(1, 300, 0)], "likes")


def test_variant_for_uses_a_promoted_winner_only_when_it_exists():
    assert variant_for({7: 1}, 7, 2, 0) == 1
    assert variant_for({7: 3}, 7, 2, 0) == 0  # the language has fewer subjects
    assert variant_for({7: 1}, 8, 2, 0) == 0


def add_messages(s: Session) -> Step:
    seq = Sequence(key="вебинар", name="Вебинар", created_at=START, updated_at=START)
    s.add(seq)
    s.flush()
    step = Step(sequence_id=seq.id, key="first", position=0, kind="first_contact", template="first_contact")
    s.add(step)
    s.flush()
    for i in range(6):
        lead = Lead(email=f"l{i}@example.com", first_name="Ольга", created_at=START, updated_at=START)
        s.add(lead)
        s.flush()
        enrollment = Enrollment(lead_id=lead.id, sequence_id=seq.id, started_at=START)
        s.add(enrollment)
        s.flush()
        message = Message(enrollment_id=enrollment.id, step_id=step.id, lead_id=lead.id, sequence_id=seq.id,
                          status="bounced" if i == 5 else "sent", variant=i % 2, message_id=f"<m{i}@x>",
                          created_at=START)
        s.add(message)
        s.flush()
        kinds = {0: [("open", False), ("open", False), ("click", False)], 1: [("open", True), ("click", True)],
                 2: [("open", False), ("reply", False)], 3: [("unsubscribe", False), ("complaint", False)]}
        for kind, machine in kinds.get(i, []):
            s.add(Event(lead_id=lead.id, message_id=message.id, kind=kind, is_machine=machine,
                        occurred_at=START + timedelta(hours=1)))
    s.commit()
    return step


def test_figures_per_variant_from_the_database(session):
    add_messages(session)
    result = step_performance(session)
    rows = {r["variant"]: r for r in result.rows()}
    # variant 0: leads 0, 2, 4 (all sent); variant 1: leads 1, 3, 5 (5 bounced)
    assert (rows[0]["sent"], rows[0]["delivered"], rows[0]["human_opens"], rows[0]["human_clicks"], rows[0]["replies"]) \
        == (3, 3, 2, 1, 1)
    assert (rows[1]["sent"], rows[1]["delivered"], rows[1]["bounced"], rows[1]["human_opens"], rows[1]["machine_opens"],
            rows[1]["unsubscribes"], rows[1]["complaints"]) == (3, 2, 1, 0, 1, 1, 1)
    assert rows[1]["complaint_rate"] == 0.5 and rows[0]["open_rate"] == pytest.approx(0.6667, abs=1e-4)
    [v] = result.verdicts
    assert (v.sequence, v.step, v.winner) == ("вебинар", "first", None) and v.text.startswith("not enough data")


def test_an_unknown_sequence_is_named(session):
    add_messages(session)
    with pytest.raises(AnalyticsError, match="unknown sequence 'nope' \\(known: вебинар\\)"):
        step_performance(session, "nope")


def first_contacts(n) -> list[Message]:
    """Enroll the four leads and run the calendar until each got its first contact (zones differ)."""
    n.enroll()
    with n.session() as s:
        step_id = s.exec(select(Step.id).where(Step.key == "first-contact")).one()
    for _ in range(10):
        send_due(n)
        sent = n.messages(Message.step_id == step_id, Message.status == "sent")
        if len(sent) == 4:
            return sent
    raise AssertionError("the first contacts were not all sent")


def test_promoted_winner_subject_goes_to_new_sends_when_the_setting_is_on(leads):
    n = leads
    with n.session() as s:
        step_id = s.exec(select(Step.id).join(Sequence).where(Sequence.key == "systematic-follow-up",
                                                               Step.key == "first-contact")).one()
        lead_ids = s.exec(select(Lead.id)).all()
        assert promoted_variants(s) == {}
        winner = 1 - pick_variant(lead_ids[0], "first-contact", 2)  # not what the first lead would get anyway
        promote_winners(s, [Verdict("systematic-follow-up", "first-contact", "open", [0, 1], winner, 0.001, "")],
                        n.now)
        assert promoted_variants(s) == {step_id: winner}
    n.monkeypatch.setenv("NURTURE_AB_AUTO_PROMOTE", "true")
    assert {m.variant for m in first_contacts(n)} == {winner}


def test_without_the_setting_each_lead_keeps_its_assigned_variant(leads):
    n = leads
    with n.session() as s:
        promote_winners(s, [Verdict("systematic-follow-up", "first-contact", "open", [0, 1], 1, 0.001, "")], n.now)
    sent = first_contacts(n)
    assert any(m.variant != 1 for m in sent)  # the recorded winner was not applied
    assert all(m.variant == pick_variant(m.lead_id, "first-contact", 2) for m in sent)


def test_a_bad_switch_value_is_named(monkeypatch):
    from nurture.config import Settings
    from nurture.errors import ConfigError

    with pytest.raises(ConfigError, match="NURTURE_AB_AUTO_PROMOTE: 'perhaps' must be true or false"):
        Settings.from_env({"NURTURE_AB_AUTO_PROMOTE": "perhaps"})
