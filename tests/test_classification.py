"""The inbound classifier on messages written for one behaviour each (pure: no fixtures)."""

from __future__ import annotations

import base64
import os
import random
import time
from datetime import date
from email.message import EmailMessage

from nurture.classification import FailedRecipient, classify

TODAY = date(2026, 11, 27)  # a Friday


def message(body: str = "", subtype: str = "plain", **headers: str) -> bytes:
    """A message built the way mail clients build it; header names use underscores for dashes."""
    msg = EmailMessage()
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body, subtype=subtype)
    return msg.as_bytes()


def dsn(action: str, status: str, diagnostic: str, recipient: str = "lead@client.example") -> bytes:
    return f"""\
From: Mail Delivery System <MAILER-DAEMON@mx.nurture.example>
To: bounce+42@nurture.example
Subject: Undelivered Mail Returned to Sender
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

I'm sorry to have to inform you that your message could not be delivered.

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.nurture.example

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: {action}
Status: {status}
Diagnostic-Code: smtp; {diagnostic}

--B
Content-Type: message/rfc822

From: Anna <anna@nurture.example>
To: {recipient}
Subject: Quick question
Message-ID: <seq-7-step-1@nurture.example>

Hi!
--B--
""".encode()


def test_russian_reply_keeps_only_what_the_lead_wrote():
    raw = message(
        "Добрый день! Интересно, давайте созвонимся.\n\n"
        "27 нояб. 2026 г., в 10:00, Анна <a@example.com> написал(а):\n"
        "> Здравствуйте, Иван! Предлагаем обсудить пилот.\n",
        From="Иван Петров <Ivan@Client.ru>",
        To="Anna <reply+tok123@nurture.example>",
        Subject="Re: Пилот",
        In_Reply_To="<seq-1-step-1@nurture.example>",
        Message_ID="<r1@client.ru>",
    )
    verdict = classify(raw, now=TODAY)
    assert verdict.kind == "reply"
    assert verdict.reply_text == "Добрый день! Интересно, давайте созвонимся."
    assert verdict.references == ("<seq-1-step-1@nurture.example>",)
    assert verdict.to_addresses == ("reply+tok123@nurture.example",)
    assert verdict.from_address == "ivan@client.ru"


def test_russian_out_of_office_names_the_day_she_is_back():
    raw = message(
        "Здравствуйте! Я в отпуске, вернусь 15 декабря. По срочным вопросам пишите Ольге.",
        From="anna@client.ru",
        To="hello@nurture.example",
        Subject="Автоответ: Пилот",
        Auto_Submitted="auto-replied",
    )
    verdict = classify(raw, now=TODAY)
    assert verdict.kind == "auto_reply"
    assert verdict.return_date == date(2026, 12, 15)
    assert "header Auto-Submitted: auto-replied" in verdict.reasons


def test_english_out_of_office_names_the_day_he_is_back():
    raw = message(
        "Thank you for your email. I am out of the office with limited access to email.\n"
        "I will be back on Monday, December 7.\n\nJohn",
        From="john@client.com",
        To="hello@nurture.example",
        Subject="Out of Office: Quick question",
    )
    verdict = classify(raw, now=TODAY)
    assert verdict.kind == "auto_reply"
    assert verdict.return_date == date(2026, 12, 7)


def test_out_of_office_without_headers_is_found_by_its_wording():
    raw = message(
        "Hi, I'm currently out of the office until Friday, December 11 and will reply when I'm back.",
        From="john@client.com",
        Subject="Re: Quick question",
        In_Reply_To="<seq-1-step-1@nurture.example>",
    )
    verdict = classify(raw, now=TODAY)
    assert verdict.kind == "auto_reply"
    assert verdict.return_date == date(2026, 12, 11)
    assert verdict.references == ("<seq-1-step-1@nurture.example>",)


def test_out_of_office_that_names_no_date_has_no_return_date():
    raw = message("I'm away with limited access to email.", From="a@client.com", Subject="Automatic reply: Hello")
    verdict = classify(raw, now=TODAY)
    assert (verdict.kind, verdict.return_date) == ("auto_reply", None)


def test_auto_submitted_no_is_an_ordinary_reply():
    raw = message("Sounds good.", From="a@client.com", Subject="Re: Hello", Auto_Submitted="no", In_Reply_To="<m@n>")
    assert classify(raw, now=TODAY).kind == "reply"


def test_reply_with_a_20_mb_attachment_is_classified_in_well_under_a_second():
    msg = EmailMessage()
    msg["From"] = "lead@client.example"
    msg["To"] = "reply+t@nurture.example"
    msg["Subject"] = "Re: Contract"
    msg["In-Reply-To"] = "<seq-1-step-3@nurture.example>"
    msg.set_content("Signed contract attached.\n\nOn Mon, Nov 23, 2026 at 10:00 AM Anna <a@nurture.example> wrote:\n> Please sign.\n")
    msg.add_attachment(os.urandom(15 * 1024 * 1024), maintype="application", subtype="pdf", filename="contract.pdf")
    raw = msg.as_bytes()
    assert len(raw) > 20_000_000
    started = time.perf_counter()
    verdict = classify(raw, now=TODAY)
    elapsed = time.perf_counter() - started
    assert verdict.kind == "reply"
    assert verdict.reply_text == "Signed contract attached."
    assert elapsed < 0.5


def test_message_without_message_id_is_still_classified():
    raw = message("Yes, please send the deck.", From="lead@client.example", Subject="RE: Deck")
    verdict = classify(raw, now=TODAY)
    assert (verdict.kind, verdict.reply_text, verdict.references) == ("reply", "Yes, please send the deck.", ())


def test_garbage_bytes_are_unknown_and_never_raise():
    rng = random.Random(7)
    samples = [b"", b"\x00\xff\xfe\x89PNG\r\n\x1a\n", bytes(rng.randrange(256) for _ in range(5000)), b"From:\r\n\r\n", b":::\n\n\n"]
    samples += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))) for _ in range(200)]
    for raw in samples:
        verdict = classify(raw, now=TODAY)
        assert verdict.kind in ("unknown", "reply", "auto_reply", "bounce_hard", "bounce_soft", "complaint")
    assert classify(b"\x00\xff\xfe\x89PNG\r\n\x1a\n" + os.urandom(2000)).kind == "unknown"


def test_broken_mime_and_bad_charsets_do_not_raise():
    raw = (
        b"From: lead@client.example\r\nSubject: Re: =?x-unknown?B?0J/RgNC40LLQtdGC?=\r\nIn-Reply-To: <m1@n>\r\n"
        b"Content-Type: multipart/alternative; boundary=\"never-seen\"\r\n\r\n"
        b"--wrong\r\nContent-Type: text/plain; charset=no-such-charset\r\n\r\n\xd0\x94\xd0\xb0, \xff\xfe ok\r\n"
    )
    verdict = classify(raw, now=TODAY)
    assert verdict.kind == "reply"
    assert "ok" in verdict.reply_text


def test_gmail_reply_without_in_reply_to_is_linked_by_references():
    raw = message(
        "Sure, Tuesday works.\n\nOn Tue, Nov 24, 2026 at 9:00 AM Anna <anna@nurture.example> wrote:\n\n> Do you have 15 minutes?\n>\n",
        From="Lead <lead@gmail.com>",
        To="Anna <reply+abc@nurture.example>",
        Subject="Quick question",
        References="<seq-1-step-2@nurture.example>",
        Message_ID="<CAx@mail.gmail.com>",
    )
    verdict = classify(raw, now=TODAY)
    assert verdict.kind == "reply"
    assert verdict.reply_text == "Sure, Tuesday works."
    assert verdict.references == ("<seq-1-step-2@nurture.example>",)


def test_html_only_reply_is_read_as_text_without_the_quote():
    html = (
        "<html><body><div>Yes, let's talk on Monday.</div><div><br></div>"
        '<div class="gmail_quote"><div>On Tue, Nov 24, 2026 at 9:00 AM Anna &lt;anna@nurture.example&gt; wrote:<br></div>'
        "<blockquote>Do you have 15 minutes?</blockquote></div></body></html>"
    )
    raw = message(html, subtype="html", From="lead@client.example", Subject="Re: Call", In_Reply_To="<m1@n>")
    assert classify(raw, now=TODAY).reply_text == "Yes, let's talk on Monday."


def test_outlook_reply_stops_at_the_from_sent_block():
    raw = message(
        "Please call me tomorrow.\n\nBest regards,\nPeter\n\n"
        "From: Anna <anna@nurture.example>\nSent: Tuesday, November 24, 2026 9:00 AM\nTo: Peter\nSubject: Call\n\nHello Peter!\n",
        From="peter@client.example",
        Subject="RE: Call",
    )
    assert classify(raw, now=TODAY).reply_text == "Please call me tomorrow.\n\nBest regards,\nPeter"


def test_unknown_user_dsn_is_a_hard_bounce_linked_to_the_original():
    verdict = classify(dsn("failed", "5.1.1", "550 5.1.1 <lead@client.example>: Recipient address rejected: User unknown"), now=TODAY)
    assert verdict.kind == "bounce_hard"
    assert [(r.address, r.hard, r.status) for r in verdict.recipients] == [("lead@client.example", True, "5.1.1")]
    assert "User unknown" in verdict.recipients[0].diagnostic
    assert verdict.references == ("<seq-7-step-1@nurture.example>",)
    assert verdict.to_addresses == ("bounce+42@nurture.example",)


def test_delayed_dsn_is_a_soft_bounce():
    verdict = classify(dsn("delayed", "4.4.1", "421 4.4.1 Connection timed out"), now=TODAY)
    assert verdict.kind == "bounce_soft"
    assert verdict.recipients[0] == FailedRecipient("lead@client.example", False, "4.4.1", "421 4.4.1 Connection timed out")


def test_full_mailbox_is_soft_even_with_a_permanent_code():
    verdict = classify(dsn("failed", "5.2.2", "552 5.2.2 The recipient's inbox is out of storage space"), now=TODAY)
    assert verdict.kind == "bounce_soft"


def test_spam_block_is_soft_so_a_bad_day_suppresses_nobody():
    verdict = classify(dsn("failed", "5.7.1", "550 5.7.1 Message rejected due to the low reputation of the sending domain"), now=TODAY)
    assert verdict.kind == "bounce_soft"
    assert verdict.recipients[0].status == "5.7.1"


def test_unexplained_permanent_failure_is_hard():
    assert classify(dsn("failed", "5.0.0", "550 Requested action not taken"), now=TODAY).kind == "bounce_hard"


def test_successful_delivery_report_is_not_a_bounce():
    verdict = classify(dsn("delivered", "2.0.0", "250 2.0.0 OK"), now=TODAY)
    assert (verdict.kind, verdict.recipients) == ("unknown", ())


def test_plain_text_bounce_names_the_recipient_only_in_its_text():
    raw = message(
        "Hi. This is the qmail-send program at mx.example.net.\n"
        "I'm afraid I wasn't able to deliver your message to the following addresses.\n"
        "This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
        "<lead@client.example>:\n203.0.113.5 does not like recipient.\nRemote host said: 550 5.1.1 No such user\n\n"
        "--- Below this line is a copy of the message.\n\n"
        "From: anna@nurture.example\nTo: lead@client.example\nMessage-ID: <seq-9-step-2@nurture.example>\nSubject: Hi\n\nHello\n",
        From="MAILER-DAEMON@mx.example.net",
        To="anna@nurture.example",
        Subject="failure notice",
    )
    verdict = classify(raw, now=TODAY)
    assert verdict.kind == "bounce_hard"
    assert [(r.address, r.status) for r in verdict.recipients] == [("lead@client.example", "5.1.1")]
    assert verdict.references == ("<seq-9-step-2@nurture.example>",)


def test_vacation_reply_is_never_counted_as_a_bounce():
    raw = message(
        "I am on vacation and cannot read your message. It will not be delivered to anyone else until I return on December 14.",
        From="lead@client.example",
        To="anna@nurture.example",
        Subject="Away: Quick question",
        Auto_Submitted="auto-replied",
        Precedence="bulk",
    )
    verdict = classify(raw, now=TODAY)
    assert (verdict.kind, verdict.recipients, verdict.return_date) == ("auto_reply", (), date(2026, 12, 14))


def test_arf_complaint_names_the_complaining_recipient():
    raw = b"""\
From: feedback@fbl.mailbox.example
To: fbl@nurture.example
Subject: Complaint about message
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="F"

--F
Content-Type: text/plain

This is an email abuse report.

--F
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: SomeFBL/1.0
Version: 1
Original-Mail-From: <bounce+42@nurture.example>
Original-Rcpt-To: <Lead@Client.example>

--F
Content-Type: message/rfc822

From: anna@nurture.example
To: lead@client.example
Message-ID: <seq-7-step-2@nurture.example>
Subject: Offer

Hello
--F--
"""
    verdict = classify(raw, now=TODAY)
    assert verdict.kind == "complaint"
    assert [r.address for r in verdict.recipients] == ["lead@client.example"]
    assert verdict.references == ("<seq-7-step-2@nurture.example>",)


def test_all_recipient_headers_are_collected_for_token_lookup():
    raw = message(
        "Unsubscribe me",
        From="lead@client.example",
        To="Anna <anna@nurture.example>",
        Cc="unsubscribe+T0K3N@nurture.example",
        Delivered_To="reply+XYZ@nurture.example",
        X_Original_To="reply+XYZ@nurture.example",
        Subject="Re: Offer",
    )
    assert classify(raw, now=TODAY).to_addresses == (
        "anna@nurture.example",
        "unsubscribe+t0k3n@nurture.example",
        "reply+xyz@nurture.example",
    )


def test_message_that_answers_nothing_is_unknown():
    verdict = classify(message("Hello, I saw your website.", From="someone@client.example", Subject="Question"), now=TODAY)
    assert verdict.kind == "unknown"


def test_base64_text_part_of_a_reply_is_decoded():
    body = base64.b64encode("Да, давайте во вторник.\n\n> старое письмо\n".encode()).decode()
    raw = (
        "From: lead@client.ru\r\nSubject: Отв: Встреча\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n" + body + "\r\n"
    ).encode()
    verdict = classify(raw, now=TODAY)
    assert (verdict.kind, verdict.reply_text) == ("reply", "Да, давайте во вторник.")


def test_lead_answering_about_a_delivery_report_is_a_reply_not_a_bounce():
    raw = message(
        "Thanks! 3 items were not delivered, see the list:\n\nivan@client.example\n",
        From="ivan@client.example",
        Subject="Re: Delivery report for Q3",
        In_Reply_To="<seq-2-step-1@nurture.example>",
    )
    verdict = classify(raw, now=TODAY)
    assert verdict.kind == "reply"
    assert verdict.recipients == ()


def test_human_reply_that_mentions_being_away_is_still_a_reply():
    raw = message(
        "I'm on vacation this week, but yes, let's talk on Monday, December 7.\n\n"
        "On Tue, Nov 24, 2026 at 9:00 AM Anna <anna@nurture.example> wrote:\n> Do you have 15 minutes?\n",
        From="lead@client.example",
        Subject="Re: Vacation rentals for your team",
        In_Reply_To="<seq-3-step-1@nurture.example>",
    )
    verdict = classify(raw, now=TODAY)
    assert verdict.kind == "reply"
    assert verdict.reply_text == "I'm on vacation this week, but yes, let's talk on Monday, December 7."


def test_russian_subject_about_a_missing_feature_is_not_an_absence():
    raw = message("Отсутствие интеграции с 1С для нас критично.", From="lead@client.ru", Subject="Re: Отсутствие интеграции", In_Reply_To="<m@n>")
    assert classify(raw, now=TODAY).kind == "reply"
