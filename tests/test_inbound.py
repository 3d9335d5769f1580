"""Inbound mail without IMAP: the webhook ``POST /inbound/raw``, the domain rule, and
``nurture inbox classify``. The same pipeline (``inbound.process_raw``) serves IMAP."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import select

from nurture.inbound import process_raw
from nurture.models import Enrollment, Event, InboundMail, Message, Sequence, Suppression
from nurture.suppression import suppress

from conftest import INBOUND_SECRET, links_sequence, start_links
import mail_samples as samples


def lead_state(n, email: str):
    lead = n.lead(email)
    suppressed = n.scalar(select(Suppression.reason).where(Suppression.email == email))
    return lead.status, suppressed, sorted(e.status for e in n.enrollments(Enrollment.lead_id == lead.id))


# --- the webhook ---------------------------------------------------------------------------------

@pytest.fixture
def hook(nurture, web, event_stream):
    """olga and john with their first message sent; the app with an inbound secret."""
    n = nurture
    first = start_links(n)
    n.settings = replace(n.settings, inbound_secret=INBOUND_SECRET)
    return n, first, web()


def test_webhook_is_not_there_without_a_secret(nurture, web, event_stream):
    n = nurture
    start_links(n)
    assert n.settings.inbound_secret is None
    app = web()
    raw = samples.reply("olga@example.com", "sales@nurture.example.com", "Да")
    for headers in ({}, {"Authorization": "Bearer "}, {"X-Nurture-Secret": ""}, {"Authorization": f"Bearer {INBOUND_SECRET}"}):
        assert app.post("/inbound/raw", data=raw, headers=headers).status_code == 404
    assert n.count(InboundMail) == 0


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong-secret-0123456789"}, {"X-Nurture-Secret": "wrong-secret-0123456789"},
    {"Authorization": f"Basic {INBOUND_SECRET}"}, {"Authorization": f"Bearer {INBOUND_SECRET[:-1]}"},
    {"Authorization": "Bearer"}, {"X-Nurture-Secret": INBOUND_SECRET + "x"}, {"Authorization": "Bearer пароль"},
], ids=["none", "wrong-bearer", "wrong-header", "basic", "truncated", "empty-bearer", "longer", "non-ascii"])
def test_webhook_refuses_a_missing_or_wrong_secret_and_changes_nothing(hook, headers):
    n, first, app = hook
    raw = samples.dsn("olga@example.com", "5.1.1", first["olga@example.com"].message_id)
    response = app.post("/inbound/raw", data=raw, headers=headers, content_type="message/rfc822")
    assert response.status_code == 401
    assert response.is_json and "secret" in response.json["error"]
    assert n.count(InboundMail) == 0 and n.count(Suppression) == 0


@pytest.mark.parametrize("auth", ["bearer", "header"])
def test_webhook_with_the_secret_answers_the_verdict_as_json_and_acts_like_imap(hook, auth):
    n, first, app = hook
    headers = {"Authorization": f"Bearer {INBOUND_SECRET}"} if auth == "bearer" else {"X-Nurture-Secret": INBOUND_SECRET}
    raw = samples.dsn("olga@example.com", "5.1.1", first["olga@example.com"].message_id)
    response = app.post("/inbound/raw", data=raw, headers=headers, content_type="message/rfc822")
    assert response.status_code == 200 and response.is_json
    body = response.json
    assert (body["kind"], body["duplicate"], body["lead"], body["message_id"], body["matched_by"]) == (
        "bounce_hard", False, "olga@example.com", first["olga@example.com"].id, "references")
    assert any("suppressed" in a for a in body["actions"]) and body["reasons"]
    assert lead_state(n, "olga@example.com") == ("bounced", "bounce_hard", ["exited"])
    assert lead_state(n, "john@example.net") == ("active", None, ["active"])
    (row,) = n.all(select(InboundMail))
    assert (row.source, row.kind) == ("webhook", "bounce_hard")
    # the provider retries: the same message again is a no-op
    again = app.post("/inbound/raw", data=raw, headers=headers, content_type="message/rfc822")
    assert again.status_code == 200 and again.json["duplicate"] is True
    assert n.count(InboundMail) == 1 and n.count(Event, Event.kind == "bounce_hard") == 1


def test_webhook_accepts_the_message_as_a_form_field(hook):
    n, first, app = hook
    raw = samples.reply("john@example.net", "sales@nurture.example.com", "Yes, let's talk.",
                        in_reply_to=first["john@example.net"].message_id)
    response = app.post("/inbound/raw", data={"message": raw.decode()}, headers={"X-Nurture-Secret": INBOUND_SECRET})
    assert response.status_code == 200 and response.json["kind"] == "reply"
    assert lead_state(n, "john@example.net") == ("replied", None, ["exited"])
    assert n.scalar(select(Event.data).where(Event.kind == "reply"))["text"].strip() == "Yes, let's talk."


@pytest.mark.parametrize("body", [b"", b"   \r\n\r\n  "])
def test_webhook_refuses_an_empty_body(hook, body):
    n, first, app = hook
    response = app.post("/inbound/raw", data=body, headers={"Authorization": f"Bearer {INBOUND_SECRET}"},
                        content_type="message/rfc822")
    assert response.status_code == 400 and "empty" in response.json["error"]
    assert n.count(InboundMail) == 0


def test_webhook_records_mail_it_cannot_match_without_acting(hook):
    n, first, app = hook
    raw = samples.reply("stranger@elsewhere.example", "sales@nurture.example.com", "Who are you?")
    response = app.post("/inbound/raw", data=raw, headers={"X-Nurture-Secret": INBOUND_SECRET})
    assert response.status_code == 200
    assert (response.json["lead"], response.json["matched_by"], response.json["actions"]) == (None, "none", [])
    assert n.count(Event) == 0
    assert lead_state(n, "olga@example.com") == ("active", None, ["active"])


# --- the domain rule -----------------------------------------------------------------------------

COMPANY_CSV = """\
email,first_name,timezone,language
boss@acme-corp.example,Boss,Europe/Moscow,en
colleague@acme-corp.example,Colleague,Europe/Moscow,en
other@other-corp.example,Other,Europe/Moscow,en
anna.k@gmail.com,Anna,Europe/Moscow,en
petr.v@gmail.com,Petr,Europe/Moscow,en
ivan@mail.ru,Ivan,Europe/Moscow,ru
maria@mail.ru,Maria,Europe/Moscow,ru
"""


@pytest.fixture
def company(nurture, event_stream):
    """Everyone in ``domain`` (stops on a colleague's reply) and in ``plain`` (does not)."""
    n = nurture
    first = start_links(n, csv=COMPANY_CSV, enroll=("domain", "plain"),
                        sequences=(links_sequence("domain", "Domain", domain_reply=True),
                                   links_sequence("plain", "Plain")))
    return n, first


def by_sequence(n, email: str) -> dict[str, Enrollment]:
    lead = n.lead(email)
    return {n.scalar(select(Sequence.key).where(Sequence.id == e.sequence_id)): e
            for e in n.enrollments(Enrollment.lead_id == lead.id)}


def replies(n, sender: str, first) -> None:
    raw = samples.reply(sender, "sales@nurture.example.com", "Interested, call me.",
                        in_reply_to=first[sender].message_id, subject="Re: Links")
    with n.session() as session:
        result = process_raw(session, n.settings, raw, "cli", n.now)
    assert result.kind == "reply" and result.lead == sender


def test_a_reply_from_a_colleague_at_the_same_company_stops_sequences_that_ask_for_it(company):
    n, first = company
    replies(n, "boss@acme-corp.example", first)
    assert {k: e.status for k, e in by_sequence(n, "boss@acme-corp.example").items()} == {"domain": "exited", "plain": "exited"}
    colleague = by_sequence(n, "colleague@acme-corp.example")
    assert colleague["domain"].status == "exited"
    assert "acme-corp.example" in colleague["domain"].exit_reason
    assert colleague["plain"].status == "active"  # this sequence does not stop on a colleague's reply
    assert n.lead("colleague@acme-corp.example").status == "active"  # the colleague did not reply
    assert {e.status for e in by_sequence(n, "other@other-corp.example").values()} == {"active"}


@pytest.mark.parametrize("sender, colleague", [("anna.k@gmail.com", "petr.v@gmail.com"), ("ivan@mail.ru", "maria@mail.ru")])
def test_the_domain_rule_never_applies_to_free_mail_domains(company, sender, colleague):
    n, first = company
    replies(n, sender, first)
    assert n.lead(sender).status == "replied"
    assert {e.status for e in by_sequence(n, colleague).values()} == {"active"}
    assert n.lead(colleague).status == "active"


# --- nurture inbox classify ----------------------------------------------------------------------

def test_inbox_classify_prints_one_json_verdict_per_file_and_touches_no_database(nurture, tmp_path, monkeypatch):
    n = nurture
    files = {
        "reply.eml": samples.reply("olga@example.com", "sales@nurture.example.com", "Да, интересно.",
                                   in_reply_to="<x1@nurture.example.com>"),
        "ooo.eml": samples.out_of_office("john@example.net", "sales@nurture.example.com", "16 March 2026"),
        "bounce.eml": samples.dsn("gone@example.org", "5.1.1", "<x2@nurture.example.com>"),
        "complaint.eml": samples.arf("angry@example.org", "<x3@nurture.example.com>"),
    }
    for name, raw in files.items():
        (tmp_path / name).write_bytes(raw)
    missing = tmp_path / "no-such-dir" / "nurture.db"
    monkeypatch.setenv("NURTURE_DATABASE_URL", f"sqlite:///{missing}")
    monkeypatch.setenv("NURTURE_REDIS_URL", "redis://127.0.0.1:1/0")
    proc = n.cli("inbox", "classify", *(str(tmp_path / name) for name in files))
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 4
    verdicts = [json.loads(line) for line in lines]
    for verdict in verdicts:
        assert {"kind", "recipients", "reply_text", "return_date"} <= set(verdict)
    reply, ooo, bounce, complaint = verdicts
    assert reply["kind"] == "reply" and reply["reply_text"].strip() == "Да, интересно."
    assert ooo["kind"] == "auto_reply" and ooo["return_date"] == "2026-03-16"
    assert bounce["kind"] == "bounce_hard"
    assert [r["address"] for r in bounce["recipients"]] == ["gone@example.org"]
    assert bounce["recipients"][0]["status"] == "5.1.1" and bounce["recipients"][0]["hard"] is True
    assert complaint["kind"] == "complaint"
    assert not missing.parent.exists()


# --- out of office and the calendar --------------------------------------------------------------

def process(n, raw: bytes):
    with n.session() as session:
        return process_raw(session, n.settings, raw, "cli", n.now)


def test_an_out_of_office_holds_a_message_already_queued_until_the_lead_is_back(nurture, event_stream):
    n = nurture
    first = start_links(n, csv="email,first_name,timezone\njohn@example.net,John,Europe/London\n")
    john = n.lead("john@example.net")
    (enrollment,) = n.enrollments()
    n.at(enrollment.next_run_at)
    n.tick()  # the follow-up is claimed and enqueued
    (queued,) = n.messages(Message.status == "queued")
    result = process(n, samples.out_of_office("john@example.net", "sales@nurture.example.com", "Monday 16 March 2026",
                                              in_reply_to=first["john@example.net"].message_id))
    assert result.kind == "auto_reply"
    back = datetime(2026, 3, 16, 9, 0, tzinfo=ZoneInfo("Europe/London"))  # the lead's own morning
    assert n.lead("john@example.net").paused_until == back
    n.work()  # the worker does not send it, and does not drop it
    held = n.scalar(select(Message).where(Message.id == queued.id))
    assert held.status == "queued" and held.available_at == back
    assert len(n.smtp.messages) == 1
    n.at(back - timedelta(minutes=1))
    n.tick_and_work()
    assert len(n.smtp.messages) == 1
    n.at(back + timedelta(minutes=1))
    n.tick_and_work()
    assert len(n.smtp.messages) == 2
    assert n.scalar(select(Message.status).where(Message.id == queued.id)) == "sent"
    assert n.enrollments()[0].status == "active"


def test_an_out_of_office_without_a_date_pauses_for_the_default_days(nurture, event_stream):
    n = nurture
    first = start_links(n, csv="email,first_name,timezone\njohn@example.net,John,Europe/Moscow\n")
    raw = samples.out_of_office("john@example.net", "sales@nurture.example.com", "soon").replace(
        b"I will be back on soon.", b"I have limited access to email.")
    result = process(n, raw)
    assert result.kind == "auto_reply"
    lead = n.lead("john@example.net")
    assert (lead.status, lead.paused_until) == ("paused", n.now + timedelta(days=n.settings.auto_reply_pause_days))


def test_a_reply_from_a_lead_who_unsubscribed_is_recorded_and_the_lead_stays_unsubscribed(nurture, event_stream):
    n = nurture
    first = start_links(n, csv="email,first_name,timezone\njohn@example.net,John,Europe/Moscow\n")
    with n.session() as session:
        suppress(session, "john@example.net", "unsubscribed", n.now)
        session.commit()
    result = process(n, samples.reply("john@example.net", "sales@nurture.example.com", "Why do you still write?",
                                      in_reply_to=first["john@example.net"].message_id))
    assert result.kind == "reply"
    assert n.count(Event, Event.kind == "reply") == 1
    assert lead_state(n, "john@example.net") == ("unsubscribed", "unsubscribed", ["exited"])
