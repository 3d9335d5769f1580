"""Warm-up detection: replies always, threshold crossings once, rises within a day; machines and opt-outs never."""

from __future__ import annotations

import html as html_lib
import re
from dataclasses import replace
from datetime import timedelta

from sqlmodel import select

from nurture.event_stream import drain, stream_key
from nurture.inbound import process_raw
from nurture.models import Event, Lead, Notification
from nurture.reactions import on_tracking_events
from nurture.stages import move_stage
from nurture.warmup import is_warm, on_activity

from conftest import BASE_URL, received_by, start_links
import mail_samples as samples

BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"


def notices(n, email: str) -> list[Notification]:
    lead = n.lead(email)
    return n.all(select(Notification).where(Notification.lead_id == lead.id, Notification.kind == "warm_up")
                 .order_by(Notification.id))


def reply(n, first, email: str, text: str = "Интересно, позвоните мне завтра."):
    raw = samples.reply(email, "sales@nurture.example.com", text, in_reply_to=first[email].message_id, subject="Re: Links")
    with n.session() as session:
        return process_raw(session, n.settings, raw, "cli", n.now)


def at_stage(n, email: str, stage: str) -> None:
    with n.session() as s:
        lead = s.exec(select(Lead).where(Lead.email == email)).one()
        move_stage(s, lead, stage, source="manual", now=n.now)
        on_activity(s, n.settings, [lead.id], n.now)
        s.commit()


def add_events(n, email: str, *kinds: str, machine: bool = False) -> list:
    """Store events of the lead's first message now (as the drainer would) and run the hook; return what warmed up."""
    with n.session() as s:
        lead = s.exec(select(Lead).where(Lead.email == email)).one()
        events = [Event(lead_id=lead.id, kind=kind, is_machine=machine, occurred_at=n.now,
                        data={"url": "https://example.org/pricing"} if kind == "click" else {}) for kind in kinds]
        s.add_all(events)
        s.flush()
        found = on_activity(s, n.settings, [lead.id], n.now)
        s.commit()
        return found


def test_a_reply_always_notifies_even_twice_within_the_notice_window(nurture, event_stream):
    n = nurture
    first = start_links(n)
    n.advance(hours=2)
    result = reply(n, first, "olga@example.com")
    assert result.kind == "reply" and "warm: replied; rep notified" in result.actions, result.actions
    assert len(notices(n, "olga@example.com")) == 1
    notice = notices(n, "olga@example.com")[0]
    assert notice.reason.startswith("replied: ") and "stage engaged" in notice.reason and "replied today" in notice.reason
    n.advance(hours=1)
    reply(n, first, "olga@example.com", "И ещё вопрос по цене.")
    assert len(notices(n, "olga@example.com")) == 2  # a reply always counts, whatever was sent before
    assert is_warm(n.lead("olga@example.com"), replace(n.settings, warm_threshold=0.1))
    assert notices(n, "john@example.net") == []


def test_crossing_the_threshold_notifies_once_and_staying_above_does_not_repeat(nurture, event_stream):
    n = nurture
    start_links(n)
    n.settings = replace(n.settings, warm_threshold=0.12, warm_rise_points=50)  # only the crossing counts here
    at_stage(n, "john@example.net", "engaged")
    assert n.lead("john@example.net").probability < 0.12 and notices(n, "john@example.net") == []
    n.advance(hours=1)
    found = add_events(n, "john@example.net", "click")
    assert [w.reason.split(" (")[0] for w in found] == ["close probability crossed 12%"]
    assert len(notices(n, "john@example.net")) == 1
    n.advance(hours=1)
    assert add_events(n, "john@example.net", "open") == []  # still above: no new crossing, a small rise
    assert len(notices(n, "john@example.net")) == 1


def test_a_rise_of_more_than_the_set_points_within_a_day_is_warm(nurture, event_stream):
    n = nurture
    start_links(n)
    n.settings = replace(n.settings, warm_threshold=0.9, warm_rise_points=10)
    at_stage(n, "john@example.net", "qualified")
    n.advance(days=2)
    found = add_events(n, "john@example.net", "click", "click", "open")
    assert len(found) == 1 and found[0].reason.startswith("close probability rose ")
    rise = int(re.search(r"rose (\d+) points", found[0].reason)[1])
    assert rise > 10 and len(notices(n, "john@example.net")) == 1


def test_machine_opens_and_clicks_never_warm_a_lead(nurture, event_stream):
    n = nurture
    start_links(n)
    n.settings = replace(n.settings, warm_threshold=0.12, warm_rise_points=2)
    at_stage(n, "john@example.net", "engaged")
    n.advance(days=2)  # the stage move is more than a day old: only the machine events could raise it now
    add_events(n, "john@example.net")
    before, noticed = n.lead("john@example.net").probability, len(notices(n, "john@example.net"))
    n.advance(hours=1)
    assert add_events(n, "john@example.net", *(["open", "click"] * 10), machine=True) == []
    assert abs(n.lead("john@example.net").probability - before) < 0.01
    assert len(notices(n, "john@example.net")) == noticed


def test_a_lead_unsubscribing_while_warm_stops_being_warm(nurture, web, event_stream):
    n = nurture
    first = start_links(n)
    n.advance(hours=2)
    reply(n, first, "olga@example.com")
    olga = n.lead("olga@example.com")
    assert olga.probability > 0.15 and is_warm(olga, replace(n.settings, warm_threshold=0.15))
    assert len(notices(n, "olga@example.com")) == 1
    parsed = received_by(n)["olga@example.com"][0]
    path = re.search(r"<(https://[^>]+)>", str(parsed["List-Unsubscribe"]))[1].removeprefix(BASE_URL)
    n.advance(hours=1)
    app = web()
    assert app.post(path, data="List-Unsubscribe=One-Click", content_type="application/x-www-form-urlencoded").status_code == 200
    olga = n.lead("olga@example.com")
    assert olga.status == "unsubscribed" and olga.stage == "archived"
    assert olga.probability == 0 and not is_warm(olga, replace(n.settings, warm_threshold=0.01))
    assert olga.probability_why == [{"factor": "stage", "stage": "archived", "points": 0, "label": "stage archived 0%"}]
    # a late human click on an old mail: recorded, but no warm-up notice for an unsubscribed lead
    html = parsed.get_body(("html",)).get_content()
    click = next(html_lib.unescape(u) for u in re.findall(r'href="(https://nurture\.example\.com/c/[^"]+)"', html)
                 if "trap.invalid" not in html_lib.unescape(u))
    n.advance(hours=1)
    assert web().get(click.removeprefix(BASE_URL), headers={"User-Agent": BROWSER}).status_code == 302
    with n.session() as s:
        assert drain(s, n.redis, stream_key(n.settings.queue_name), "test",
                     on_events=lambda session, events: on_tracking_events(session, events, n.now, n.settings)) == 1
    assert n.lead("olga@example.com").probability == 0
    assert len(notices(n, "olga@example.com")) == 1
    assert n.lead("olga@example.com").probability_at == n.now
    assert timedelta(0) < n.now - notices(n, "olga@example.com")[0].created_at


def test_a_scoring_failure_never_loses_the_reply_it_follows(nurture, event_stream, monkeypatch, caplog):
    n = nurture
    first = start_links(n)

    def broken(*args, **kwargs):
        raise RuntimeError("model weights unreadable")

    scored_at_import = n.lead("olga@example.com").probability_at
    monkeypatch.setattr("nurture.warmup.rescore", broken)
    n.advance(hours=2)
    result = reply(n, first, "olga@example.com")
    assert result.kind == "reply"
    olga = n.lead("olga@example.com")
    assert scored_at_import is not None  # the failed rescore stored nothing over the import's score
    assert olga.status == "replied" and olga.stage == "engaged" and olga.probability_at == scored_at_import
    assert n.count(Event, Event.kind == "reply", Event.lead_id == olga.id) == 1
    assert "recomputing the probability of lead(s)" in caplog.text and "model weights unreadable" in caplog.text
