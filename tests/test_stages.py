"""Stage moves and stage rules, end to end: the real worker, tracking links, inbound mail, unsubscribe."""

from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from sqlmodel import select

from nurture.event_stream import drain, stream_key
from nurture.inbound import process_raw
from nurture.models import Event, Lead, StageChange
from nurture.pipeline import default_pipeline
from nurture.reactions import on_tracking_events
from nurture.stages import cool_stale_leads, move_stage, on_engagement, on_first_send, return_date

from conftest import BASE_URL, received_by, start_links
from mail_samples import reply

BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
OLGA, JOHN = "olga@example.com", "john@example.net"


@pytest.fixture
def sent(nurture, event_stream):
    """olga and john got their first message from the real worker; the clock an hour later."""
    first = start_links(nurture)
    nurture.advance(hours=1)
    return nurture, first


def changes(n, email: str) -> list[tuple]:
    lead = n.lead(email)
    return [(c.from_stage, c.to_stage, c.reason) for c in
            n.all(select(StageChange).where(StageChange.lead_id == lead.id).order_by(StageChange.id))]


def set_stage(n, email: str, stage: str, **kwargs):
    with n.session() as s:
        lead = s.exec(select(Lead).where(Lead.email == email)).one()
        change = move_stage(s, lead, stage, now=n.now, **{"source": "manual", **kwargs})
        s.commit()
        return change


def click_first_link(n, email: str, web) -> None:
    parsed = received_by(n)[email][0]
    html = parsed.get_body(("html",)).get_content()
    click = next(u for u in re.findall(r'href="([^"]+)"', html) if u.startswith(f"{BASE_URL}/c/"))
    parts = urlsplit(click.replace("&amp;", "&"))
    assert web().get(f"{parts.path}?{parts.query}", headers={"User-Agent": BROWSER}).status_code == 302
    with n.session() as s:  # what the scheduler's drainer does every tick
        while drain(s, n.redis, stream_key(n.settings.queue_name), "test",
                    on_events=lambda session, events: on_tracking_events(session, events, n.now, n.settings)):
            pass


def reply_from(n, email: str, first) -> None:
    with n.session() as s:
        process_raw(s, n.settings, reply(email, "sales@nurture.example.com", "Интересно, расскажите подробнее",
                                         in_reply_to=first[email].message_id), "cli", n.now)


def test_the_first_message_sent_by_the_worker_moves_leads_to_contacted(sent):
    n, _ = sent
    for email in (OLGA, JOHN):
        lead = n.lead(email)
        assert (lead.stage, lead.stage_source) == ("contacted", "rule")
        assert changes(n, email) == [("new", "contacted", "rule")]


def test_a_reply_through_the_inbound_pipeline_engages_the_lead(sent):
    n, first = sent
    reply_from(n, OLGA, first)
    assert n.lead(OLGA).stage == "engaged"
    assert changes(n, OLGA)[-1] == ("contacted", "engaged", "rule")
    assert n.lead(JOHN).stage == "contacted"


def test_a_human_click_engages_the_lead(sent, web):
    n, _ = sent
    click_first_link(n, JOHN, web)
    assert n.lead(JOHN).stage == "engaged"
    (change,) = n.all(select(StageChange).where(StageChange.to_stage == "engaged"))
    assert change.note == "clicked a link"


def test_unsubscribing_while_warm_archives_the_lead(sent, web):
    n, first = sent
    reply_from(n, JOHN, first)
    assert n.lead(JOHN).stage == "engaged"
    parsed = received_by(n)[JOHN][0]
    path = urlsplit(re.search(r"<(https://[^>]+)>", str(parsed["List-Unsubscribe"]))[1]).path
    assert web().post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    lead = n.lead(JOHN)
    assert (lead.status, lead.stage) == ("unsubscribed", "archived")
    assert changes(n, JOHN)[-1] == ("engaged", "archived", "rule")


def test_rules_never_move_a_lead_off_a_stage_a_rep_set_by_hand(sent, web, caplog):
    n, first = sent
    set_stage(n, OLGA, "qualified", note="call went well")
    reply_from(n, OLGA, first)
    parsed = received_by(n)[OLGA][0]
    path = urlsplit(re.search(r"<(https://[^>]+)>", str(parsed["List-Unsubscribe"]))[1]).path
    with caplog.at_level("INFO", logger="nurture.stages"):
        assert web().post(path).status_code == 200
    lead = n.lead(OLGA)
    assert (lead.status, lead.stage, lead.stage_source) == ("unsubscribed", "qualified", "manual")
    assert "qualified was set by hand; a rule does not move it to archived" in caplog.text
    # a rule still moves a hand-set lead forward
    set_stage(n, JOHN, "contacted")  # already there: nothing recorded
    assert changes(n, JOHN) == [("new", "contacted", "rule")]


def test_a_rule_moves_a_hand_set_lead_forward(sent):
    n, first = sent
    set_stage(n, JOHN, "new", note="not really contacted")
    reply_from(n, JOHN, first)
    assert n.lead(JOHN).stage == "engaged"


def test_won_and_lost_leads_are_never_moved_by_rules(sent):
    n, first = sent
    set_stage(n, OLGA, "won", deal_value=12500.0)
    set_stage(n, JOHN, "lost", lost_reason="price")
    for email in (OLGA, JOHN):
        reply_from(n, email, first)
    assert (n.lead(OLGA).stage, n.lead(OLGA).deal_value) == ("won", 12500.0)
    assert (n.lead(JOHN).stage, n.lead(JOHN).lost_reason) == ("lost", "price")


def test_move_stage_checks_the_stage_and_the_lost_reason(sent):
    n, _ = sent
    with pytest.raises(ValueError, match=r"unknown stage 'qualifed'; the stages are: new, contacted, engaged"):
        set_stage(n, OLGA, "qualifed")
    with pytest.raises(ValueError, match=r"needs a lost reason: one of price, timing, no_budget"):
        set_stage(n, OLGA, "lost")
    with pytest.raises(ValueError, match=r"unknown lost reason 'cost'"):
        set_stage(n, OLGA, "lost", lost_reason="cost")
    with pytest.raises(ValueError, match=r"a lost reason goes only with a lost stage"):
        set_stage(n, OLGA, "proposal", lost_reason="price")
    assert n.lead(OLGA).stage == "contacted" and len(changes(n, OLGA)) == 1


def test_stale_leads_cool_down_and_come_back_when_they_engage(sent):
    n, first = sent
    set_stage(n, OLGA, "proposal")  # by hand: the rule leaves it and says why
    n.advance(days=29)
    with n.session() as s:
        assert cool_stale_leads(s, default_pipeline().rules, n.now) == []
    n.advance(days=2)
    with n.session() as s:
        outcomes = {o.email: o for o in cool_stale_leads(s, None, n.now)}
        s.commit()
    assert outcomes[OLGA].moved is False and "proposal was set by hand" in outcomes[OLGA].reason
    assert outcomes[JOHN].moved is True
    john = n.lead(JOHN)
    assert john.stage == "cold"
    rules = default_pipeline().rules
    assert n.now + timedelta(days=88) <= john.returns_at <= n.now + timedelta(days=186)
    assert john.returns_at == return_date(john.id, rules, n.now)  # fixed per lead
    # the same lead always gets the same offset; different leads spread over the window
    offsets = {(return_date(i, rules, n.now) - n.now).days for i in range(200)}
    assert min(offsets) < 100 and max(offsets) > 170
    reply_from(n, JOHN, first)
    john = n.lead(JOHN)
    assert (john.stage, john.returns_at) == ("engaged", None)
    assert changes(n, JOHN)[-2:] == [("contacted", "cold", "rule"), ("cold", "engaged", "rule")]


def test_engagement_keeps_a_lead_warm(sent):
    n, first = sent
    n.advance(days=20)
    reply_from(n, OLGA, first)
    n.advance(days=15)
    with n.session() as s:
        moved = [o.email for o in cool_stale_leads(s, None, n.now) if o.moved]
    assert moved == [JOHN]


def test_on_engagement_says_why_it_leaves_a_lead(sent):
    n, _ = sent
    set_stage(n, OLGA, "archived")
    with n.session() as s:
        lead = s.exec(select(Lead).where(Lead.email == OLGA)).one()
        assert on_engagement(s, lead, n.now, "clicked") is None
    assert n.lead(OLGA).stage == "archived"


def test_machine_clicks_and_opens_move_nothing(sent):
    n, first = sent
    john = n.lead(JOHN)
    events = [Event(lead_id=john.id, message_id=first[JOHN].id, kind=kind, is_machine=True, occurred_at=n.now)
              for kind in ("click", "open")]
    events.append(Event(lead_id=john.id, message_id=first[JOHN].id, kind="open", is_machine=False, occurred_at=n.now))
    with n.session() as s:
        s.add_all(events)
        s.flush()
        on_tracking_events(s, events, n.now, n.settings)
        s.commit()
    assert n.lead(JOHN).stage == "contacted" and len(changes(n, JOHN)) == 1


def test_a_cold_lead_that_unsubscribes_is_archived_and_one_that_is_mailed_stays_cold(sent, web):
    n, first = sent
    n.advance(days=31)
    with n.session() as s:
        cool_stale_leads(s, None, n.now)
        s.commit()
    assert {n.lead(e).stage for e in (OLGA, JOHN)} == {"cold"}
    with n.session() as s:
        on_first_send(s, [n.lead(OLGA).id], n.now)  # a re-offer sent to a cold lead
        s.commit()
    assert n.lead(OLGA).stage == "cold"
    parsed = received_by(n)[JOHN][0]
    path = urlsplit(re.search(r"<(https://[^>]+)>", str(parsed["List-Unsubscribe"]))[1]).path
    assert web().post(path).status_code == 200
    assert n.lead(JOHN).stage == "archived"
    assert changes(n, JOHN)[-1] == ("cold", "archived", "rule")


def test_move_stage_names_the_allowed_sources(sent):
    n, _ = sent
    with pytest.raises(ValueError, match=r"unknown source 'crm'; use one of rule, manual, import, api"):
        set_stage(n, OLGA, "qualified", source="crm")
    assert n.lead(OLGA).stage == "contacted"
