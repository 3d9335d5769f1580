"""Unsubscribe: signed links, a GET that changes nothing, RFC 8058 one-click POST, the mailto form.

The links are taken from the mail the worker really sent (the List-Unsubscribe header and
the footer link) and used through the Flask app, without any login or session.
"""

from __future__ import annotations

import re
from dataclasses import replace
from urllib.parse import urlsplit

import pytest
from sqlmodel import select

from nurture.inbound import process_raw
from nurture.models import Enrollment, Event, Message, Sequence, Suppression
from nurture.signing import sign

from conftest import INBOUND_SECRET, SECRET_KEY, links_sequence, received_by, start_links
from mail_samples import unsubscribe_mail

TWO_SEQUENCES = (links_sequence("links", "Links"), links_sequence("webinar", "Вебинар: запись"))


def unsubscribe_links(parsed) -> tuple[str, str]:
    """(https URL path, mailto address) from the List-Unsubscribe header."""
    header = str(parsed["List-Unsubscribe"])
    url = re.search(r"<(https://[^>]+)>", header)[1]
    mailto = re.search(r"<mailto:([^?>]+)", header)[1]
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    html = parsed.get_body(("html",)).get_content()
    assert f'href="{url}"' in html  # the footer link is the same signed URL
    return urlsplit(url).path, mailto


@pytest.fixture
def two(nurture, event_stream):
    """olga (ru) and john (en), each enrolled in two sequences, both first messages sent."""
    n = nurture
    first = start_links(n, sequences=TWO_SEQUENCES, enroll=("links", "webinar"))
    got = received_by(n)
    return n, first, got


def status(n, email: str) -> tuple[str, str | None, list[str]]:
    lead = n.lead(email)
    suppression = n.scalar(select(Suppression.reason).where(Suppression.email == email))
    return lead.status, suppression, [e.status for e in n.enrollments(Enrollment.lead_id == lead.id)]


def message_of(n, parsed) -> Message:
    return n.scalar(select(Message).where(Message.message_id == parsed["Message-ID"]))


def test_get_shows_a_confirmation_page_and_changes_nothing(two, web):
    n, first, got = two
    app = web()
    path, _ = unsubscribe_links(got["john@example.net"][0])
    for _ in range(3):  # a link scanner may fetch it several times
        response = app.get(path, headers={"User-Agent": "Mozilla/5.0 (compatible; Barracuda Sentinel)"})
        assert response.status_code == 200 and response.mimetype == "text/html"
        page = response.get_data(as_text=True)
        assert "Unsubscribe from all emails" in page and "john@example.net" in page
        assert 'method="post"' in page
    assert app.head(path).status_code == 200
    assert status(n, "john@example.net") == ("active", None, ["active", "active"])
    assert n.count(Event) == 0


def test_page_is_in_russian_for_a_russian_lead(two, web):
    n, first, got = two
    app = web()
    path, _ = unsubscribe_links(got["olga@example.com"][0])
    page = app.get(path).get_data(as_text=True)
    assert "Отписаться от всех писем" in page and "Больше не присылать письма на olga@example.com?" in page
    assert "Unsubscribe from all emails" not in page
    sequence = n.scalar(select(Sequence.name).where(Sequence.id == message_of(n, got["olga@example.com"][0]).sequence_id))
    assert f"Отписаться только от «{sequence}»" in page
    done = app.post(path, data={"scope": "all"}).get_data(as_text=True)
    assert "Готово: на адрес olga@example.com больше не придёт ни одного письма." in done


@pytest.mark.parametrize("body", [
    {"data": "List-Unsubscribe=One-Click", "content_type": "application/x-www-form-urlencoded"},  # RFC 8058
    {"data": {"List-Unsubscribe": "One-Click"}, "content_type": "multipart/form-data"},
    {},  # a client that posts nothing at all
    {"data": "", "content_type": "text/plain"},
], ids=["one-click-urlencoded", "one-click-multipart", "no-body", "empty-text-body"])
def test_one_click_post_unsubscribes_without_login(two, web, body):
    n, first, got = two
    app = web()
    path, _ = unsubscribe_links(got["john@example.net"][0])
    response = app.post(path, **body)
    assert response.status_code == 200
    assert "john@example.net will get no more emails from us" in response.get_data(as_text=True)
    assert status(n, "john@example.net") == ("unsubscribed", "unsubscribed", ["exited", "exited"])
    assert status(n, "olga@example.com") == ("active", None, ["active", "active"])
    (event,) = n.all(select(Event))
    assert (event.kind, event.lead_id, event.message_id) == ("unsubscribe", first["john@example.net"].lead_id,
                                                            message_of(n, got["john@example.net"][0]).id)
    assert app.post(path, **body).status_code == 200  # twice is harmless
    assert n.count(Suppression) == 1


def test_unsubscribing_cancels_queued_messages_and_the_worker_sends_nothing_more(two, web):
    n, first, got = two
    path, _ = unsubscribe_links(got["john@example.net"][0])
    john = n.lead("john@example.net")
    # the follow-ups are claimed and enqueued, not yet sent
    due = max(e.next_run_at for e in n.enrollments(Enrollment.status == "active"))
    n.at(due)
    n.tick()
    queued = n.messages(Message.lead_id == john.id, Message.status == "queued")
    assert len(queued) == 2
    app = web()
    assert app.post(path, data="List-Unsubscribe=One-Click",
                    content_type="application/x-www-form-urlencoded").status_code == 200
    assert {m.status for m in n.messages(Message.id.in_([m.id for m in queued]))} == {"cancelled"}
    before = len(n.smtp.messages)
    n.work()
    for _ in range(3):
        n.advance(days=10)
        n.tick_and_work()
    delivered = [rcpts for _, rcpts, _ in n.smtp.messages[before:]]
    assert delivered and all(rcpts == ["olga@example.com"] for rcpts in delivered)
    assert "john@example.net" not in n.smtp.rcpt_log[before:]


def test_leaving_only_this_sequence_keeps_the_lead_and_its_other_sequence(two, web):
    n, first, got = two
    app = web()
    john = n.lead("john@example.net")
    john_mail = [m for m in got["john@example.net"]]
    sequences = {m["Message-ID"]: message_of(n, m).sequence_id for m in john_mail}
    links_mail = next(m for m in john_mail
                      if n.scalar(select(Sequence.key).where(Sequence.id == sequences[m["Message-ID"]])) == "links")
    path, _ = unsubscribe_links(links_mail)
    page = app.get(path).get_data(as_text=True)
    assert "Only stop “Links”" in page
    response = app.post(path, data={"scope": "sequence"})
    assert response.status_code == 200
    assert "Done: no more emails from “Links”." in response.get_data(as_text=True)
    lead, suppression, _ = status(n, "john@example.net")
    assert (lead, suppression) == ("active", None)
    by_sequence = {n.scalar(select(Sequence.key).where(Sequence.id == e.sequence_id)): e
                   for e in n.enrollments(Enrollment.lead_id == john.id)}
    assert by_sequence["links"].status == "exited" and by_sequence["webinar"].status == "active"
    # the other sequence goes on: its follow-up reaches john; nothing more from "links"
    n.at(by_sequence["webinar"].next_run_at)
    n.tick_and_work()
    sent = n.messages(Message.lead_id == john.id, Message.status == "sent")
    assert [n.scalar(select(Sequence.key).where(Sequence.id == m.sequence_id)) for m in sent].count("webinar") == 2
    assert [n.scalar(select(Sequence.key).where(Sequence.id == m.sequence_id)) for m in sent].count("links") == 1


@pytest.mark.parametrize("method", ["get", "post"])
def test_forged_or_tampered_tokens_answer_404_and_change_nothing(two, web, method):
    n, first, got = two
    app = web()
    path, _ = unsubscribe_links(got["john@example.net"][0])
    token = path.rsplit("/", 1)[1]
    number, digest = token.split("-")
    olga_id = message_of(n, got["olga@example.com"][0]).id
    forged = [
        f"/u/{token[:-1]}", f"/u/{number}-{digest[:-1]}{'0' if digest[-1] != '0' else '1'}",
        f"/u/{olga_id}-{digest}", f"/u/{number}", "/u/garbage",
        f"/u/{sign(SECRET_KEY, 'open', int(number))}",  # a valid token of another purpose
        f"/u/{sign('some-other-secret-key-0123456789', 'unsubscribe', int(number))}",
        f"/u/{sign(SECRET_KEY, 'unsubscribe', 999999)}",  # well signed, no such message
    ]
    for bad in forged:
        response = getattr(app, method)(bad, data={"scope": "all"} if method == "post" else None)
        assert response.status_code == 404, bad
    assert status(n, "john@example.net") == ("active", None, ["active", "active"])
    assert status(n, "olga@example.com") == ("active", None, ["active", "active"])
    assert n.count(Event) == 0 and n.count(Suppression) == 0


def test_the_mailto_form_unsubscribes_through_the_pipeline(two):
    n, first, got = two
    _, mailto = unsubscribe_links(got["john@example.net"][0])
    assert mailto.startswith("unsubscribe+") and mailto.endswith("@nurture.example.com")
    raw = unsubscribe_mail("John Smith <john.smith.home@example.org>", mailto)  # from any address
    with n.session() as session:
        result = process_raw(session, n.settings, raw, "cli", n.now)
    assert (result.kind, result.matched_by, result.lead) == ("unsubscribe", "unsubscribe_token", "john@example.net")
    assert status(n, "john@example.net") == ("unsubscribed", "unsubscribed", ["exited", "exited"])
    assert status(n, "olga@example.com") == ("active", None, ["active", "active"])
    assert [(e.kind, e.data) for e in n.all(select(Event))] == [("unsubscribe", {"via": "mailto"})]


def test_the_mailto_form_unsubscribes_through_the_webhook(two, web):
    n, first, got = two
    n.settings = replace(n.settings, inbound_secret=INBOUND_SECRET)
    app = web()
    _, mailto = unsubscribe_links(got["olga@example.com"][0])
    response = app.post("/inbound/raw", data=unsubscribe_mail("olga@example.com", mailto.upper()),
                        headers={"Authorization": f"Bearer {INBOUND_SECRET}"}, content_type="message/rfc822")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json["kind"] == "unsubscribe" and response.json["lead"] == "olga@example.com"
    assert status(n, "olga@example.com") == ("unsubscribed", "unsubscribed", ["exited", "exited"])


def test_a_forged_mailto_token_unsubscribes_nobody(two):
    n, first, got = two
    _, mailto = unsubscribe_links(got["john@example.net"][0])
    local, domain = mailto.split("@")
    forged = f"{local[:-1]}{'0' if local[-1] != '0' else '1'}@{domain}"
    with n.session() as session:
        result = process_raw(session, n.settings, unsubscribe_mail("mallory@example.org", forged), "cli", n.now)
    assert result.kind != "unsubscribe"
    assert n.count(Suppression) == 0
    assert status(n, "john@example.net") == ("active", None, ["active", "active"])
