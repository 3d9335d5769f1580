"""Sending end to end: real Redis and RQ worker, real SMTP server; and the send invariants.

Every received message is parsed back with the standard library.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections import Counter
from datetime import timedelta

import jinja2
import sqlalchemy as sa
from sqlmodel import select

from nurture import tasks
from nurture.models import EmailTemplate, Enrollment, Event, Lead, Message, Sequence, Suppression
from nurture.rendering import Renderer
from nurture.scheduling import claim_due
from nurture.sending import send_batch
from nurture.tasks import attempt_journal
from nurture.signing import verify
from nurture.suppression import suppress

from conftest import (BASE_URL, SECRET_KEY, SHORT_SEQUENCE, START, drive, write_campaigns)

FIRST_DAY_OVER = START + timedelta(days=1, hours=16)  # every lead's first contact is out by then


def parse(raw: bytes):
    return email.message_from_bytes(raw, policy=email.policy.default)


def received(n) -> dict[str, email.message.EmailMessage]:
    """Message-ID -> parsed message, asserting no Message-ID arrived twice."""
    parsed = n.smtp.parsed()
    counts = Counter(m["Message-ID"] for m in parsed)
    assert all(c == 1 for c in counts.values()), counts
    return {m["Message-ID"]: m for m in parsed}


def due_now(n) -> None:
    """Jump to the moment every active enrollment's next step is due, on the same local day."""
    n.at(max(e.next_run_at for e in n.enrollments(Enrollment.status == "active")))


def expected_subjects(n, template_name: str, lead: Lead) -> list[str]:
    template = n.scalar(select(EmailTemplate).where(EmailTemplate.name == template_name,
                                                    EmailTemplate.language == lead.language))
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    context = {"lead": {"first_name": lead.first_name, "last_name": lead.last_name, "company": lead.company}}
    return [" ".join(env.from_string(s).render(context).split()) for s in template.subjects]


def moscow_pair(n):
    """Two leads in Moscow, enrolled, the clock at the moment both first contacts are due."""
    n.import_csv("email,first_name,timezone\nfirst@example.com,First,Europe/Moscow\nsecond@example.com,Second,Europe/Moscow\n")
    n.enroll()
    due_now(n)


def at_due(n, email: str) -> None:
    """Jump to the moment this lead's next step is due."""
    lead = n.lead(email)
    n.at(min(e.next_run_at for e in n.enrollments(Enrollment.lead_id == lead.id, Enrollment.status == "active")))


def test_first_contact_arrives_as_a_well_formed_multipart_message(leads):
    n = leads
    n.enroll()
    drive(n, until=FIRST_DAY_OVER)
    messages = n.messages()
    assert len(messages) == 4 and {m.status for m in messages} == {"sent"}
    by_id = received(n)
    assert set(by_id) == {m.message_id for m in messages}
    for _, rcpts, raw in n.smtp.messages:
        assert raw.isascii()  # 8-bit clean: encoded words and base64/QP only
    for message in messages:
        lead = n.scalar(select(Lead).where(Lead.id == message.lead_id))
        got = by_id[message.message_id]
        assert got.get_content_type() == "multipart/alternative"
        parts = [part.get_content_type() for part in got.iter_parts()]
        assert parts == ["text/plain", "text/html"]
        text = got.get_body(("plain",)).get_content()
        html = got.get_body(("html",)).get_content()
        assert lead.first_name in text and lead.first_name in html
        assert not re.search(r"<(p|div|table|td|a|span|mj-[a-z]+)[\s>]", text)  # no markup in the text part
        assert "<html" in html.lower()
        sender = got["From"].addresses[0]
        assert (sender.display_name, sender.addr_spec) == ("Отдел продаж Nurture", "sales@nurture.example.com")
        to = got["To"].addresses[0]
        assert (to.display_name, to.addr_spec) == (f"{lead.first_name} {lead.last_name}", lead.email)
        assert got["Subject"] == message.subject
        assert got["Message-ID"] == message.message_id
        assert abs(got["Date"].datetime - message.sent_at) < timedelta(seconds=1)


def test_cyrillic_subject_and_names_are_decoded(leads):
    n = leads
    n.enroll()
    drive(n, until=FIRST_DAY_OVER)
    olga = n.lead("olga@example.com")
    message = n.messages(Message.lead_id == olga.id)[0]
    got = received(n)[message.message_id]
    assert got["Subject"] in expected_subjects(n, "first_contact", olga)
    assert re.search("[а-яё]", got["Subject"], re.I)
    assert str(got["To"]) == "Ольга Иванова <olga@example.com>"
    body = got.get_body(("plain",)).get_content()
    assert "Здравствуйте, Ольга!" in body
    assert "Анна Соколова" in body  # the owner's name as the signature


def test_unsubscribe_headers_are_signed_and_one_click(leads):
    n = leads
    n.enroll()
    drive(n, until=FIRST_DAY_OVER)
    by_id = received(n)
    for message in n.messages():
        got = by_id[message.message_id]
        links = re.findall(r"<([^>]+)>", got["List-Unsubscribe"])
        assert len(links) == 2
        https = next(link for link in links if link.startswith("https://"))
        mailto = next(link for link in links if link.startswith("mailto:"))
        assert https.startswith(f"{BASE_URL}/u/")
        token = https.rsplit("/", 1)[1]
        assert verify(SECRET_KEY, "unsubscribe", token) == message.id
        mail_token = re.match(r"mailto:unsubscribe\+([^@]+)@nurture\.example\.com", mailto)[1]
        assert verify(SECRET_KEY, "unsubscribe", mail_token) == message.id
        assert verify("another-secret-key-entirely-000000000000", "unsubscribe", token) is None
        assert verify(SECRET_KEY, "click", token) is None
        assert got["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert https in got.get_body(("html",)).get_content()
        assert https in got.get_body(("plain",)).get_content()


def test_ab_variant_matches_the_subject_and_is_stable_for_the_lead(leads):
    n = leads
    extra = "".join(f"lead{i}@example.com,Lead{i},Company {i},Europe/London\n" for i in range(12))
    n.import_csv("email,first_name,company,timezone\n" + extra)
    n.enroll()
    drive(n, until=FIRST_DAY_OVER)
    by_id = received(n)
    first_run = {}
    for message in n.messages():
        lead = n.scalar(select(Lead).where(Lead.id == message.lead_id))
        subjects = expected_subjects(n, "first_contact", lead)
        assert by_id[message.message_id]["Subject"] == subjects[message.variant] == message.subject
        first_run[lead.id] = (message.variant, message.subject)
    assert {variant for variant, _ in first_run.values()} == {0, 1}, "16 leads all got one variant"

    # Run it again: stop the enrollments, enroll the same leads a week later.
    with n.session() as s:
        s.execute(sa.update(Enrollment).values(status="exited", exit_reason="test re-run", next_run_at=None))
        s.commit()
    n.at(START + timedelta(days=7))
    assert n.enroll().enrolled == 16
    drive(n, until=START + timedelta(days=8, hours=16))
    second = n.messages(Message.enrollment_id > 16)
    assert len(second) == 16
    for message in second:
        assert (message.variant, message.subject) == first_run[message.lead_id]


def test_html_part_escapes_lead_data_and_text_part_keeps_it(team):
    n = team
    n.load_campaigns()
    n.import_csv('email,first_name,company,timezone\nxss@example.com,<script>alert(1)</script>,"Tom & Jerry <Ltd>",Europe/London\n')
    n.enroll()
    drive(n, until=FIRST_DAY_OVER)
    (_, _, raw), = n.smtp.messages
    got = parse(raw)
    html = got.get_body(("html",)).get_content()
    text = got.get_body(("plain",)).get_content()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "Tom &amp; Jerry &lt;Ltd&gt;" in html
    assert "Hi <script>alert(1)</script>," in text  # plain text is not HTML: shown as typed
    assert "Tom & Jerry <Ltd>" in text


def test_idn_address_is_handed_over_in_punycode(team):
    n = team
    n.load_campaigns()
    n.import_csv("email,first_name,timezone\nivan@пример.рф,Иван,Europe/Moscow\n")
    n.enroll()
    drive(n, until=FIRST_DAY_OVER)
    (_, rcpts, raw), = n.smtp.messages
    assert rcpts == ["ivan@xn--e1afmkfd.xn--p1ai"]
    assert parse(raw)["To"].addresses[0].addr_spec == "ivan@xn--e1afmkfd.xn--p1ai"
    assert n.messages()[0].status == "sent"


# --- invariants ---------------------------------------------------------------------------------

def test_address_suppressed_after_queueing_is_not_sent_to(leads):
    n = leads
    n.enroll()
    at_due(n, "olga@example.com")
    olga = n.lead("olga@example.com")
    report = n.tick()
    assert report.messages >= 1
    queued = n.messages(Message.lead_id == olga.id)
    assert [m.status for m in queued] == ["queued"]
    with n.session() as s:
        suppress(s, "olga@example.com", "unsubscribed", n.now)
        s.commit()
    n.work()
    assert all(rcpts != ["olga@example.com"] for _, rcpts, _ in n.smtp.messages)
    message = n.messages(Message.lead_id == olga.id)[0]
    assert message.status == "cancelled" and message.sent_at is None


def test_suppression_row_added_behind_the_engines_back_is_checked_before_smtp(team):
    """Only a Suppression row appears (another process, a raw insert): the queued message
    is untouched, so only the worker's own check before the SMTP transaction stops it."""
    n = team
    n.load_campaigns()
    moscow_pair(n)
    n.tick()
    assert [m.status for m in n.messages()] == ["queued", "queued"]
    with n.session() as s:
        s.add(Suppression(email="second@example.com", reason="manual", created_at=n.now))
        s.commit()
    n.work()
    assert [rcpts for _, rcpts, _ in n.smtp.messages] == [["first@example.com"]]
    statuses = {n.scalar(select(Lead.email).where(Lead.id == m.lead_id)): (m.status, m.error) for m in n.messages()}
    assert statuses["first@example.com"][0] == "sent"
    assert statuses["second@example.com"] == ("cancelled", "suppressed: manual")


def test_suppression_during_the_batch_stops_the_next_message_of_the_batch(team):
    """The suppression lands while the worker is talking SMTP about the previous message."""
    n = team
    n.load_campaigns()
    moscow_pair(n)
    n.tick()
    assert len(n.enqueued) == 1 and len(n.enqueued[0]) == 2  # one batch with both messages

    def suppress_the_other(mail_from, rcpts, raw):
        other = "second@example.com" if rcpts == ["first@example.com"] else "first@example.com"
        with n.session() as s:
            suppress(s, other, "complaint", n.now)
            s.commit()

    n.smtp.on_data = suppress_the_other
    n.work()
    assert len(n.smtp.messages) == 1
    assert sorted(m.status for m in n.messages()) == ["cancelled", "sent"]


def test_temporary_failure_is_retried_with_growing_backoff_then_sent(leads):
    n = leads
    n.smtp.replies["john@example.net"] = ["451 4.3.0 Try again later", "452 4.2.2 Mailbox full"]
    n.enroll(emails=["john@example.net"])  # alone: other leads' moments depend on the seed
    john = n.lead("john@example.net")
    n.at(n.enrollments(Enrollment.lead_id == john.id)[0].next_run_at)
    n.tick_and_work()
    (message,) = n.messages(Message.lead_id == john.id)
    assert (message.status, message.attempts, message.smtp_code) == ("queued", 1, 451)
    assert message.available_at == n.now + timedelta(seconds=60)
    assert "451" in message.error

    n.advance(seconds=30)
    assert n.tick().requeued == 0  # not before the backoff ends
    n.advance(seconds=31)
    assert n.tick().requeued == 1
    n.work()
    (message,) = n.messages(Message.lead_id == john.id)
    assert (message.status, message.attempts, message.smtp_code) == ("queued", 2, 452)
    assert message.available_at == n.now + timedelta(seconds=300)  # the delay grows

    n.advance(seconds=301)
    n.tick_and_work()
    (message,) = n.messages(Message.lead_id == john.id)
    assert (message.status, message.attempts, message.smtp_code, message.error) == ("sent", 3, 250, "")
    assert n.smtp.rcpt_log.count("john@example.net") == 3
    assert [rcpts for _, rcpts, _ in n.smtp.messages] == [["john@example.net"]]


def test_repeated_temporary_failure_fails_after_max_attempts(leads):
    n = leads
    n.smtp.replies["john@example.net"] = "451 4.3.0 Try again later"
    n.enroll(emails=["john@example.net"])  # alone: other leads' moments depend on the seed
    john = n.lead("john@example.net")
    n.at(n.enrollments(Enrollment.lead_id == john.id)[0].next_run_at)
    for attempt in range(1, 20):
        n.tick_and_work()
        (message,) = n.messages(Message.lead_id == john.id)
        if message.status != "queued":
            break
        assert message.attempts == attempt
        n.at(message.available_at)
    assert message.status == "failed"
    assert message.attempts == n.settings.max_attempts == 5
    assert message.error.startswith("gave up after 5 attempts")
    assert message.available_at is None
    assert n.smtp.rcpt_log.count("john@example.net") == 5 and n.smtp.messages == []
    assert n.count(Suppression) == 0


def test_hard_bounce_on_rcpt_suppresses_and_stops_every_sequence_of_the_lead(leads):
    n = leads
    campaigns = write_campaigns(n.tmp_path / "campaigns", SHORT_SEQUENCE, shipped=True)
    n.load_campaigns(campaigns)
    n.smtp.replies["olga@example.com"] = "550 5.1.1 No such user"
    assert n.enroll("systematic-follow-up").enrolled == 4
    assert n.enroll("webinar-follow-up").enrolled == 4
    olga = n.lead("olga@example.com")
    due = sorted(e.next_run_at for e in n.enrollments(Enrollment.lead_id == olga.id))
    n.at(due[0])
    n.tick_and_work()
    messages = n.messages(Message.lead_id == olga.id)
    assert [m.status for m in messages].count("bounced") == 1
    bounced = next(m for m in messages if m.status == "bounced")
    assert bounced.smtp_code == 550 and "No such user" in bounced.error
    assert all(m.status in ("bounced", "cancelled") for m in messages)
    assert n.scalar(select(Suppression.reason).where(Suppression.email == "olga@example.com")) == "bounce_hard"
    assert n.lead("olga@example.com").status == "bounced"
    enrollments = n.enrollments(Enrollment.lead_id == olga.id)
    assert len(enrollments) == 2
    assert all(e.status == "exited" and e.exit_reason == "suppressed: bounce_hard" for e in enrollments)
    events = n.all(select(Event).where(Event.lead_id == olga.id))
    assert [(e.kind, e.message_id) for e in events] == [("bounce_hard", bounced.id)]
    # Nothing more ever goes to her; the others carry on.
    drive(n, until=START + timedelta(days=5))
    assert "olga@example.com" not in [r for _, rcpts, _ in n.smtp.messages for r in rcpts]
    assert n.smtp.rcpt_log.count("olga@example.com") == 1
    others = n.enrollments(Enrollment.lead_id != olga.id)
    assert all(e.status == "active" for e in others)


def test_refusal_after_data_fails_the_message_and_exits_only_that_enrollment(leads):
    n = leads
    campaigns = write_campaigns(n.tmp_path / "campaigns", SHORT_SEQUENCE, shipped=True)
    n.load_campaigns(campaigns)
    n.enroll("systematic-follow-up", emails=["john@example.net"])
    n.enroll("webinar-follow-up", emails=["john@example.net"])
    john = n.lead("john@example.net")
    systematic = n.scalar(select(Sequence.id).where(Sequence.key == "systematic-follow-up"))
    target = n.enrollments(Enrollment.sequence_id == systematic)[0]
    n.at(target.next_run_at)
    n.tick()
    message = n.messages(Message.enrollment_id == target.id)[0]
    n.smtp.data_filter = lambda rcpts, raw: ("554 5.6.0 Message content rejected"
                                             if message.message_id.encode() in raw else None)
    n.work()
    message = n.messages(Message.enrollment_id == target.id)[0]
    assert message.status == "failed" and "554" in message.error
    target = n.enrollments(Enrollment.id == target.id)[0]
    assert target.status == "exited" and "554" in target.exit_reason
    assert n.count(Suppression) == 0
    assert n.lead("john@example.net").status == "active"
    other = n.enrollments(Enrollment.lead_id == john.id, Enrollment.id != target.id)[0]
    assert other.status == "active"
    drive(n, until=START + timedelta(days=2))
    assert [m.status for m in n.messages(Message.enrollment_id == other.id)] == ["sent"]


def test_running_the_same_job_twice_sends_nothing_twice(team):
    n = team
    n.load_campaigns()
    moscow_pair(n)
    n.tick()
    (ids,) = n.enqueued
    n.enqueue(ids)  # the same batch enqueued again
    n.work()
    again = tasks.send_messages(ids)  # and run by hand once more
    assert again["sent"] == 0 and again["ignored"] == len(ids)
    assert len(n.smtp.messages) == len(ids)
    received(n)
    assert all(m.status == "sent" and m.attempts == 1 for m in n.messages(Message.id.in_(ids)))


def test_work_claimed_by_a_scheduler_that_died_before_enqueueing_is_requeued_after_the_lease(team):
    n = team
    n.load_campaigns()
    moscow_pair(n)
    sequence = n.scalar(select(Sequence).where(Sequence.key == "systematic-follow-up"))
    with n.session() as s:
        claimed = claim_due(s, n.settings, sequence, n.now, 1000)  # ... and the process dies here
    assert claimed.message_ids
    n.work()
    assert n.smtp.messages == []
    n.advance(seconds=n.settings.lease_seconds - 1)
    assert n.tick().requeued == 0
    n.advance(seconds=1)
    report = n.tick()
    assert report.requeued == len(claimed.message_ids)
    n.work()
    assert sorted(m.id for m in n.messages(Message.status == "sent")) == claimed.message_ids
    assert len(n.smtp.messages) == len(claimed.message_ids)


class DyingTransport:
    """Hands the message over, then the process 'dies' before recording the outcome."""

    def __init__(self, smtp_settings):
        from nurture.transports import SmtpTransport

        self.inner = SmtpTransport(smtp_settings)

    def send(self, sender, recipient, data):
        self.inner.send(sender, recipient, data)
        raise SystemExit("killed")

    def close(self):
        self.inner.close()


def test_message_left_sending_past_its_lease_is_failed_not_resent(team):
    n = team
    n.load_campaigns()
    n.import_csv("email,timezone\nsolo@example.com,Europe/Moscow\n")
    n.enroll()
    at_due(n, "solo@example.com")
    n.tick(enqueue=lambda ids: None)
    (message,) = n.messages()
    transport = DyingTransport(n.settings.smtp)
    try:
        with n.session() as s:
            send_batch(s, n.settings, [message.id], transport, Renderer(), n.settings.clock.now,
                       attempt_journal(n.settings))
    except SystemExit:
        pass
    finally:
        transport.close()
    assert len(n.smtp.messages) == 1
    (message,) = n.messages()
    assert message.status == "sending"
    n.advance(seconds=n.settings.lease_seconds - 1)
    assert n.tick().expired == 0
    n.advance(seconds=1)
    report = n.tick()
    assert (report.expired, report.requeued) == (1, 0)
    (message,) = n.messages()
    assert message.status == "failed" and "not sent again" in message.error
    n.enqueue([message.id])
    n.work()
    assert len(n.smtp.messages) == 1


def test_hard_bounce_in_the_middle_of_a_batch_suppresses_only_that_lead(team):
    n = team
    n.load_campaigns()
    n.import_csv("email,timezone\n" + "".join(f"m{i}@example.com,Europe/Moscow\n" for i in range(6)))
    n.enroll()
    due_now(n)
    n.tick()
    (batch,) = n.enqueued
    order = [n.scalar(select(Lead.email).where(Lead.id == m.lead_id)) for m in n.messages(Message.id.in_(batch))]
    bouncing = order[2]  # neither first nor last in the batch
    n.smtp.replies[bouncing] = "550 5.1.1 No such user"
    n.work()
    assert n.all(select(Suppression.email)) == [bouncing]
    statuses = {n.scalar(select(Lead.email).where(Lead.id == m.lead_id)): m.status for m in n.messages()}
    assert statuses == {email: ("bounced" if email == bouncing else "sent") for email in order}
    assert {lead.email: lead.status for lead in n.all(select(Lead))} == {
        email: ("bounced" if email == bouncing else "active") for email in order}
    events = n.all(select(Event))
    assert [(e.kind, e.lead_id) for e in events] == [("bounce_hard", n.lead(bouncing).id)]


def test_smtp_server_down_loses_nothing_and_sends_once_it_is_back(team):
    n = team
    n.load_campaigns()
    moscow_pair(n)
    n.smtp_server.stop()
    n.tick_and_work()
    messages = n.messages()
    assert [m.status for m in messages] == ["queued", "queued"]
    assert all(m.available_at == n.now + timedelta(seconds=60) for m in messages)
    assert "cannot connect to SMTP server" in messages[0].error
    n.smtp_server.start()  # back, on the same port
    n.advance(seconds=61)
    assert n.tick().requeued == 2
    n.work()
    assert [m.status for m in n.messages()] == ["sent", "sent"]
    assert len(n.smtp.messages) == 2
    received(n)


def test_connection_lost_during_data_fails_the_message_and_does_not_resend_it(team):
    n = team
    n.load_campaigns()
    moscow_pair(n)
    n.smtp.drop_in_data.add("first@example.com")
    n.tick_and_work()
    by_email = {n.scalar(select(Lead.email).where(Lead.id == m.lead_id)): m for m in n.messages()}
    first, second = by_email["first@example.com"], by_email["second@example.com"]
    assert first.status == "failed" and "connection lost during DATA" in first.error
    assert "not sent again" in first.error
    assert second.status == "sent"
    n.advance(hours=1)
    n.tick()
    n.enqueue([first.id])
    n.work()
    assert [rcpts for _, rcpts, _ in n.smtp.messages].count(["first@example.com"]) == 1


def test_suppressing_the_punycode_spelling_of_an_idn_address_stops_its_lead(team):
    """Bounce reports and mailto unsubscribes carry the ASCII (punycode) form of the domain."""
    n = team
    n.load_campaigns()
    n.import_csv("email,timezone\nivan@пример.рф,Europe/Moscow\n")
    n.enroll()
    at_due(n, "ivan@пример.рф")
    n.tick()
    with n.session() as s:
        suppress(s, "ivan@xn--e1afmkfd.xn--p1ai", "unsubscribed", n.now)
        s.commit()
    n.work()
    assert n.smtp.messages == []
    assert n.lead("ivan@пример.рф").status == "unsubscribed"
    assert [m.status for m in n.messages()] == ["cancelled"]


class FailingAfterTransport:
    """Hands over ``limit`` messages, then the process 'dies' as the next SMTP transaction starts."""

    def __init__(self, smtp_settings, limit):
        from nurture.transports import SmtpTransport

        self.inner, self.limit, self.count = SmtpTransport(smtp_settings), limit, 0

    def send(self, sender, recipient, data):
        if self.count == self.limit:
            raise SystemExit("killed")
        self.count += 1
        return self.inner.send(sender, recipient, data)

    def close(self):
        self.inner.close()


def test_recovery_reads_the_attempt_journal_for_a_chunk_claimed_by_a_dead_worker(team):
    n = team
    n.load_campaigns()
    n.import_csv("email,timezone\n" + "".join(f"lead{i}@example.com,Europe/Moscow\n" for i in range(5)))
    n.enroll()
    n.at(max(e.next_run_at for e in n.enrollments()))  # every one of the five is due
    n.tick(enqueue=lambda ids: None)
    ids = [m.id for m in n.messages()]
    assert len(ids) == 5
    transport = FailingAfterTransport(n.settings.smtp, limit=2)
    try:
        with n.session() as s:
            send_batch(s, n.settings, ids, transport, Renderer(), n.settings.clock.now, attempt_journal(n.settings))
    except SystemExit:
        pass
    finally:
        transport.close()
    # The whole chunk was claimed; two were handed over, their outcome never reached the database.
    assert len(n.smtp.messages) == 2
    assert {m.status for m in n.messages()} == {"sending"}
    n.advance(seconds=n.settings.lease_seconds + 1)
    report = n.tick()
    # Answered: recorded as sent. Journaled as started, no answer (the process died inside
    # the transaction): the one ambiguous message, failed, never resent. Never handed over:
    # queued again.
    assert report.expired == 5 and report.requeued == 2
    by_status = Counter(m.status for m in n.messages())
    assert by_status == {"sent": 2, "failed": 1, "queued": 2}
    n.work()
    received = Counter(raw.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0] for _, _, raw in n.smtp.messages)
    assert len(received) == 4 and set(received.values()) == {1}
    assert Counter(m.status for m in n.messages()) == {"sent": 4, "failed": 1}
