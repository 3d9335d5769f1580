"""Inbound mail through a real IMAP server: Dovecot (tests/imap_server.py), one folder per test.

Replies, out-of-office answers, bounces and complaints to mail the worker really sent are
appended to the folder as a mail server would deliver them, then the poller reads them
(``imap_poll.poll``, as the scheduler's ``Periodic`` runs it, and ``nurture inbox poll``).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import select

from nurture.imap_poll import FAILED, PROCESSED, poll
from nurture.models import Enrollment, Event, InboundMail, Message, Suppression
from nurture.periodic import Periodic

from conftest import drive, free_port, links_sequence, received_by, start_links
import mail_samples as samples

TWO_SEQUENCES = (links_sequence("links", "Links"), links_sequence("webinar", "Webinar"))
MOSCOW = ZoneInfo("Europe/Moscow")
RUSSIAN_REPLY = ("Добрый день, Анна!\n\nДа, тема для нас актуальна: ручной работы много. "
                 "Давайте созвонимся в четверг после обеда.\n\nС уважением,\nОльга Иванова")


@pytest.fixture
def inbox(nurture, mailbox, imap_server, event_stream):
    """olga (ru) and john (en), each in two sequences with the first messages sent; a fresh IMAP folder."""
    n = nurture
    first = start_links(n, sequences=TWO_SEQUENCES, enroll=("links", "webinar"))
    n.advance(hours=2)
    return Inbox(n, imap_server, mailbox, first)


class Inbox:
    def __init__(self, n, server, folder, first) -> None:
        self.n, self.server, self.folder, self.first = n, server, folder, first

    def append(self, raw: bytes, flags: tuple = ()) -> None:
        with self.server.client() as client:
            client.append(self.folder, raw, flags=flags)

    def poll(self):
        with self.n.session() as session:
            return poll(session, self.n.settings, self.n.now)

    def flags(self) -> list[set[str]]:
        with self.server.client() as client:
            client.select_folder(self.folder, readonly=True)
            fetched = client.fetch(client.search("ALL"), ["FLAGS"])
            return [{f.decode() for f in fetched[uid][b"FLAGS"]} for uid in sorted(fetched)]

    def message_id(self, email: str) -> str:
        return self.first[email].message_id

    def lead_state(self, email: str):
        lead = self.n.lead(email)
        suppressed = self.n.scalar(select(Suppression.reason).where(Suppression.email == email))
        enrollments = sorted(e.status for e in self.n.enrollments(Enrollment.lead_id == lead.id))
        return lead.status, suppressed, enrollments

    def events(self, email: str) -> list[Event]:
        lead = self.n.lead(email)
        return self.n.all(select(Event).where(Event.lead_id == lead.id, Event.kind != "open",
                                              Event.kind != "click").order_by(Event.id))


def queue_follow_ups(n, email: str) -> list[Message]:
    """Claim the lead's next steps (both sequences) without sending them."""
    lead = n.lead(email)
    n.at(max(e.next_run_at for e in n.enrollments(Enrollment.lead_id == lead.id, Enrollment.status == "active")))
    n.tick()
    queued = n.messages(Message.lead_id == lead.id, Message.status == "queued")
    assert len(queued) == 2
    return queued


# --- what arrives --------------------------------------------------------------------------------

def test_a_human_reply_in_russian_stops_every_sequence_of_the_lead(inbox):
    box, n = inbox, inbox.n
    queued = queue_follow_ups(n, "olga@example.com")
    box.append(samples.reply("Ольга Иванова <olga@example.com>", "sales@nurture.example.com", RUSSIAN_REPLY,
                             in_reply_to=box.message_id("olga@example.com")))
    report = box.poll()
    assert (report.found, report.processed, report.duplicates, report.failed) == (1, 1, 0, 0)
    (event,) = box.events("olga@example.com")
    assert event.kind == "reply" and event.message_id == box.first["olga@example.com"].id
    assert event.data["text"].strip() == RUSSIAN_REPLY
    assert "Это наше первое письмо" not in event.data["text"]  # the quoted original is not the reply
    assert box.lead_state("olga@example.com") == ("replied", None, ["exited", "exited"])
    assert {e.exit_reason for e in n.enrollments(Enrollment.lead_id == event.lead_id)} == {"replied"}
    assert {m.status for m in n.messages(Message.id.in_([m.id for m in queued]))} == {"cancelled"}
    assert box.lead_state("john@example.net") == ("active", None, ["active", "active"])
    (row,) = n.all(select(InboundMail))
    assert (row.kind, row.source, row.matched_by, row.lead_id) == ("reply", "imap", "references", event.lead_id)
    n.work()  # the worker sends nothing to her
    assert "olga@example.com" not in n.smtp.rcpt_log[2 * 2:]


def test_inbox_poll_command_processes_the_mailbox(inbox):
    box, n = inbox, inbox.n
    box.append(samples.reply("John Smith <john@example.net>", "sales@nurture.example.com",
                             "Sounds good, call me on Thursday.", in_reply_to=box.message_id("john@example.net"),
                             subject="Re: Links, John"))
    proc = n.cli("inbox", "poll")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert [e.kind for e in box.events("john@example.net")] == ["reply"]
    assert box.lead_state("john@example.net") == ("replied", None, ["exited", "exited"])
    assert PROCESSED in box.flags()[0]


def test_an_out_of_office_pauses_the_lead_until_its_return_date_without_exiting(inbox):
    box, n = inbox, inbox.n
    box.append(samples.out_of_office("olga@example.com", "sales@nurture.example.com", "16 March 2026",
                                     in_reply_to=box.message_id("olga@example.com")))
    assert box.poll().processed == 1
    (event,) = box.events("olga@example.com")
    assert (event.kind, event.data["return_date"]) == ("auto_reply", "2026-03-16")
    back = datetime(2026, 3, 16, 9, 0, tzinfo=MOSCOW)
    olga = n.lead("olga@example.com")
    assert (olga.status, olga.paused_until) == ("paused", back)
    assert box.lead_state("olga@example.com")[1:] == (None, ["active", "active"])
    # the calendar runs on: john gets his follow-ups on day 2-3, olga nothing until she is back
    drive(n, until=datetime(2026, 3, 20, tzinfo=timezone.utc))
    olga_sent = n.messages(Message.lead_id == olga.id, Message.status == "sent")
    john_sent = n.messages(Message.lead_id == n.lead("john@example.net").id, Message.status == "sent")
    assert len(john_sent) == 4 and all(m.sent_at < datetime(2026, 3, 7, tzinfo=timezone.utc) for m in john_sent)
    follow_ups = [m for m in olga_sent if m.sent_at > box.first["olga@example.com"].sent_at + timedelta(hours=1)]
    assert len(olga_sent) == 4 and len(follow_ups) == 2, [(m.status, m.sent_at) for m in n.messages(Message.lead_id == olga.id)]
    assert all(back <= m.sent_at < back + timedelta(days=1) for m in follow_ups), [m.sent_at for m in follow_ups]
    assert n.lead("olga@example.com").status == "active"


def test_a_dsn_hard_bounce_suppresses_the_address_and_stops_its_sequences(inbox):
    box, n = inbox, inbox.n
    box.append(samples.dsn("olga@example.com", "5.1.1", box.message_id("olga@example.com")))
    assert box.poll().processed == 1
    assert box.lead_state("olga@example.com") == ("bounced", "bounce_hard", ["exited", "exited"])
    (event,) = box.events("olga@example.com")
    assert (event.kind, event.data["status"], event.message_id) == ("bounce_hard", "5.1.1", box.first["olga@example.com"].id)
    assert n.scalar(select(Message.status).where(Message.id == box.first["olga@example.com"].id)) == "bounced"
    assert box.lead_state("john@example.net") == ("active", None, ["active", "active"])


def test_three_soft_bounces_suppress_the_address_on_the_third(inbox):
    box, n = inbox, inbox.n
    for attempt in (1, 2, 3):
        box.append(samples.dsn("john@example.net", "4.2.2", box.message_id("john@example.net"),
                               diagnostic="452 4.2.2 <{rcpt}>: Mailbox full"))
        assert box.poll().processed == 1
        kinds = [e.kind for e in box.events("john@example.net")]
        assert kinds == ["bounce_soft"] * attempt
        if attempt < 3:
            assert box.lead_state("john@example.net") == ("active", None, ["active", "active"])
    assert box.lead_state("john@example.net") == ("bounced", "bounce_hard", ["exited", "exited"])


def test_the_soft_bounce_limit_is_configurable(inbox):
    box, n = inbox, inbox.n
    n.settings = replace(n.settings, soft_bounce_limit=1)
    box.append(samples.dsn("john@example.net", "4.2.2", box.message_id("john@example.net"),
                           diagnostic="452 4.2.2 <{rcpt}>: Mailbox full"))
    box.poll()
    assert box.lead_state("john@example.net")[1] == "bounce_hard"


def test_an_arf_complaint_suppresses_the_address(inbox):
    box, n = inbox, inbox.n
    box.append(samples.arf("john@example.net", box.message_id("john@example.net")))
    assert box.poll().processed == 1
    assert box.lead_state("john@example.net") == ("complained", "complaint", ["exited", "exited"])
    assert [e.kind for e in box.events("john@example.net")] == ["complaint"]


def test_a_reply_without_references_is_matched_by_the_reply_to_token(nurture, mailbox, imap_server, event_stream):
    n = nurture
    n.monkeypatch.setenv("NURTURE_REPLY_ADDRESS", "replies@example.com")  # the worker reads its environment
    n.settings = replace(n.settings, reply_address="replies@example.com")
    first = start_links(n)
    box = Inbox(n, imap_server, mailbox, first)
    got = received_by(n)["olga@example.com"][0]
    reply_to = got["Reply-To"].addresses[0].addr_spec
    assert reply_to.startswith("replies+") and reply_to.endswith("@example.com")
    # forwarded from her personal mailbox: no In-Reply-To, another sender, only the Reply-To address
    box.append(samples.reply("Olga <olga.home@yandex.ru>", reply_to, "Ответила с личной почты: интересно!",
                             subject="Re: Ссылки, Ольга"))
    assert box.poll().processed == 1
    (row,) = n.all(select(InboundMail))
    assert (row.kind, row.matched_by, row.message_id) == ("reply", "reply_token", first["olga@example.com"].id)
    assert box.lead_state("olga@example.com") == ("replied", None, ["exited"])


def test_a_reply_without_references_from_the_leads_address_is_matched_by_sender(inbox):
    box, n = inbox, inbox.n
    box.append(samples.reply("John Smith <John@Example.NET>", "sales@nurture.example.com", "Let's talk next week.",
                             subject="Re: Links, John"))
    assert box.poll().processed == 1
    (row,) = n.all(select(InboundMail))
    assert (row.kind, row.matched_by) == ("reply", "sender")
    assert box.lead_state("john@example.net") == ("replied", None, ["exited", "exited"])


def test_a_reply_with_a_20_mb_attachment_is_processed(inbox):
    box, n = inbox, inbox.n
    raw = samples.reply("olga@example.com", "sales@nurture.example.com", "Прикладываю презентацию.",
                        in_reply_to=box.message_id("olga@example.com"),
                        attachment=samples.big_attachment(20 * 1024 * 1024))
    assert len(raw) > 20 * 1024 * 1024
    box.append(raw)
    assert box.poll().processed == 1
    (event,) = box.events("olga@example.com")
    assert event.kind == "reply" and event.data["text"].strip() == "Прикладываю презентацию."
    assert box.lead_state("olga@example.com")[0] == "replied"


def test_a_message_without_message_id_delivered_twice_is_processed_once(inbox):
    box, n = inbox, inbox.n
    raw = samples.reply("olga@example.com", "sales@nurture.example.com", "Да, давайте.",
                        in_reply_to=box.message_id("olga@example.com"), message_id=None)
    assert b"Message-ID" not in raw
    box.append(raw)
    box.append(raw)
    report = box.poll()
    assert (report.found, report.processed, report.duplicates) == (2, 1, 1)
    assert [e.kind for e in box.events("olga@example.com")] == ["reply"]
    (row,) = n.all(select(InboundMail))
    assert row.dedupe_key.startswith("sha256:")


# --- how the mailbox is read ---------------------------------------------------------------------

def test_polling_twice_processes_nothing_twice_and_leaves_messages_unseen(inbox):
    box, n = inbox, inbox.n
    box.append(samples.reply("olga@example.com", "sales@nurture.example.com", "Да.",
                             in_reply_to=box.message_id("olga@example.com")))
    box.append(samples.reply("john@example.net", "sales@nurture.example.com", "Yes, already read by a rep.",
                             in_reply_to=box.message_id("john@example.net")), flags=(b"\\Seen",))
    assert box.poll().processed == 2  # a message a rep already read is still picked up
    flags = box.flags()
    assert all(PROCESSED in f for f in flags)
    assert "\\Seen" not in flags[0]  # read with BODY.PEEK[]: still unread for the rep
    assert "\\Seen" in flags[1]
    again = box.poll()
    assert (again.found, again.processed) == (0, 0)
    # the keyword lost (another client, a crash before STORE): read again, recognised, not applied twice
    with box.server.client() as client:
        client.select_folder(box.folder)
        client.remove_flags(client.search("ALL"), [PROCESSED])
    third = box.poll()
    assert (third.found, third.processed, third.duplicates) == (2, 0, 2)
    assert n.count(Event, Event.kind == "reply") == 2
    assert n.count(InboundMail) == 2
    assert all(FAILED not in f for f in box.flags())


def test_the_scheduler_polls_the_mailbox_on_its_tick(inbox):
    box, n = inbox, inbox.n
    box.append(samples.arf("olga@example.com", box.message_id("olga@example.com")))
    n.settings = replace(n.settings, imap_poll_seconds=3600)
    periodic = Periodic(n.settings, n.redis)
    with n.session() as session:
        assert periodic.run(session) == ["inbox: processed 1, failed 0"]
    assert box.lead_state("olga@example.com")[1] == "complaint"
    box.append(samples.arf("john@example.net", box.message_id("john@example.net")))
    with n.session() as session:
        assert periodic.run(session) == []  # not due again for an hour
    assert box.lead_state("john@example.net")[1] is None


def test_a_mailbox_outage_does_not_stop_the_tick(inbox):
    box, n = inbox, inbox.n
    n.settings = replace(n.settings, imap_url=f"imap://test:secret@127.0.0.1:{free_port()}/INBOX")
    with n.session() as session:
        assert Periodic(n.settings, n.redis).run(session) == []


def test_a_message_that_fails_processing_is_flagged_and_does_not_block_the_others(inbox, monkeypatch):
    box, n = inbox, inbox.n
    from nurture import imap_poll

    real = imap_poll.process_raw

    def fails_on_poison(session, settings, raw, source, now):
        if b"POISON" in raw:
            session.add(Event(lead_id=n.lead("olga@example.com").id, kind="reply", occurred_at=now))
            session.flush()  # half done when it fails: nothing of it may stay
            raise RuntimeError("cannot process this one")
        return real(session, settings, raw, source, now)

    monkeypatch.setattr(imap_poll, "process_raw", fails_on_poison)
    box.append(samples.reply("olga@example.com", "sales@nurture.example.com", "Да.", subject="Re: POISON",
                             in_reply_to=box.message_id("olga@example.com")))
    box.append(samples.reply("john@example.net", "sales@nurture.example.com", "Fine, call me.",
                             in_reply_to=box.message_id("john@example.net")))
    report = box.poll()
    assert (report.found, report.processed, report.failed) == (2, 1, 1)
    first, second = box.flags()
    assert FAILED in first and PROCESSED not in first
    assert PROCESSED in second
    assert n.count(Event, Event.kind == "reply") == 1
    assert box.lead_state("olga@example.com")[0] == "active" and box.lead_state("john@example.net")[0] == "replied"
    assert box.poll().found == 0  # the failed one is not retried for ever
