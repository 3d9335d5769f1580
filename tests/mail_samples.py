"""Inbound mail as it arrives from real servers: replies, out-of-office, DSNs, ARF reports.

Each builder returns the raw bytes of one message (CRLF line ends), shaped like the
mail that Gmail, Outlook, Postfix and mailbox providers actually send, and built with
the standard library so the MIME structure is right.
"""

from __future__ import annotations

import email.policy
import os
import uuid
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from datetime import datetime, timezone

DATE = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
POLICY = email.policy.SMTP  # CRLF, 78-column folding


def _new(subject: str, sender: str, to: str, message_id: str | None = "auto") -> EmailMessage:
    m = EmailMessage(policy=POLICY)
    m["From"] = sender
    m["To"] = to
    m["Subject"] = subject
    m["Date"] = format_datetime(DATE)
    if message_id == "auto":
        m["Message-ID"] = make_msgid(idstring=uuid.uuid4().hex[:12], domain="mail.example.net")
    elif message_id:
        m["Message-ID"] = message_id
    return m


def reply(sender: str, to: str, text: str, in_reply_to: str | None = None, subject: str = "Re: Ваше письмо",
          message_id: str | None = "auto", quoted: str = "> Здравствуйте! Это наше первое письмо.",
          attachment: bytes | None = None) -> bytes:
    """A person's reply: their text on top, the quoted original below (as mail clients write it)."""
    m = _new(subject, sender, to, message_id)
    if in_reply_to:
        m["In-Reply-To"] = in_reply_to
        m["References"] = in_reply_to
    body = f"{text}\n\nПн, 2 мар. 2026 г. в 10:00, Отдел продаж <sales@nurture.example.com>:\n{quoted}\n"
    m.set_content(body)
    if attachment is not None:
        m.add_attachment(attachment, maintype="application", subtype="octet-stream", filename="presentation.bin")
    return m.as_bytes()


def out_of_office(sender: str, to: str, back: str, in_reply_to: str | None = None) -> bytes:
    m = _new("Automatic reply: Re: Ваше письмо", sender, to)
    m["Auto-Submitted"] = "auto-replied"
    m["X-Autoreply"] = "yes"
    if in_reply_to:
        m["In-Reply-To"] = in_reply_to
        m["References"] = in_reply_to
    m.set_content(f"Hello,\n\nI am out of the office with limited access to email. I will be back on {back}.\n"
                  f"For urgent matters please contact my colleague.\n\nBest regards\n")
    return m.as_bytes()


def _original_headers(original_message_id: str, recipient: str) -> str:
    return (f"From: =?utf-8?b?0J7RgtC00LXQuyDQv9GA0L7QtNCw0LY=?= <sales@nurture.example.com>\r\n"
            f"To: {recipient}\r\n"
            f"Subject: A quick question\r\n"
            f"Date: Mon, 02 Mar 2026 07:00:00 +0000\r\n"
            f"Message-ID: {original_message_id}\r\n"
            f"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")


def dsn(recipient: str, status: str, original_message_id: str, action: str = "failed",
        diagnostic: str = "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in virtual mailbox table") -> bytes:
    """An RFC 3464 delivery status notification from Postfix with the original's headers."""
    boundary = f"=_dsn_{uuid.uuid4().hex}"
    diagnostic = diagnostic.format(rcpt=recipient)
    verb = "could not be delivered" if action == "failed" else "is delayed"
    headers = (f"From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n"
               f"To: sales@nurture.example.com\r\n"
               f"Subject: Undelivered Mail Returned to Sender\r\n"
               f"Date: Mon, 02 Mar 2026 07:00:05 +0000\r\n"
               f"Message-ID: <{uuid.uuid4().hex}@mx.example.net>\r\n"
               f"Auto-Submitted: auto-replied\r\n"
               f"MIME-Version: 1.0\r\n"
               f"Content-Type: multipart/report; report-type=delivery-status;\r\n"
               f"\tboundary=\"{boundary}\"\r\n")
    human = (f"This is the mail system at host mx.example.net.\r\n\r\n"
             f"I'm sorry to have to inform you that your message {verb} to one or more recipients.\r\n\r\n"
             f"<{recipient}>: host mx.example.net said: {diagnostic}\r\n")
    status_part = (f"Reporting-MTA: dns; mx.example.net\r\n"
                   f"Arrival-Date: Mon,  2 Mar 2026 07:00:01 +0000 (UTC)\r\n\r\n"
                   f"Final-Recipient: rfc822; {recipient}\r\n"
                   f"Original-Recipient: rfc822;{recipient}\r\n"
                   f"Action: {action}\r\n"
                   f"Status: {status}\r\n"
                   f"Remote-MTA: dns; mx.example.net\r\n"
                   f"Diagnostic-Code: smtp; {diagnostic}\r\n")
    body = (f"--{boundary}\r\n"
            f"Content-Description: Notification\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{human}\r\n"
            f"--{boundary}\r\n"
            f"Content-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n{status_part}\r\n"
            f"--{boundary}\r\n"
            f"Content-Description: Undelivered Message Headers\r\nContent-Type: text/rfc822-headers\r\n\r\n"
            f"{_original_headers(original_message_id, recipient)}\r\n"
            f"--{boundary}--\r\n")
    return (headers + "\r\n" + body).encode("ascii")


def arf(complainer: str, original_message_id: str) -> bytes:
    """An RFC 5965 abuse report (as mailbox providers' feedback loops send it)."""
    boundary = f"=_arf_{uuid.uuid4().hex}"
    headers = (f"From: Feedback Loop <fbl@feedback.example.net>\r\n"
               f"To: abuse@nurture.example.com\r\n"
               f"Subject: Abuse report\r\n"
               f"Date: Mon, 02 Mar 2026 12:00:00 +0000\r\n"
               f"Message-ID: <{uuid.uuid4().hex}@feedback.example.net>\r\n"
               f"MIME-Version: 1.0\r\n"
               f"Content-Type: multipart/report; report-type=feedback-report;\r\n"
               f"\tboundary=\"{boundary}\"\r\n")
    original = (_original_headers(original_message_id, complainer)
                + "Content-Type: text/plain; charset=utf-8\r\n\r\nHello!\r\n")
    body = (f"--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
            f"This is an email abuse report for an email message received from IP 192.0.2.1.\r\n\r\n"
            f"--{boundary}\r\nContent-Type: message/feedback-report\r\n\r\n"
            f"Feedback-Type: abuse\r\nUser-Agent: ExampleFBL/1.0\r\nVersion: 1\r\n"
            f"Original-Mail-From: <bounces@nurture.example.com>\r\nOriginal-Rcpt-To: <{complainer}>\r\n"
            f"Arrival-Date: Mon, 02 Mar 2026 07:00:03 +0000\r\nSource-IP: 192.0.2.1\r\n\r\n"
            f"--{boundary}\r\nContent-Type: message/rfc822\r\nContent-Disposition: inline\r\n\r\n{original}\r\n"
            f"--{boundary}--\r\n")
    return (headers + "\r\n" + body).encode("ascii")


def unsubscribe_mail(sender: str, to: str) -> bytes:
    """What a mail client sends for the ``mailto:`` of List-Unsubscribe."""
    m = _new("unsubscribe", sender, to)
    m.set_content("unsubscribe\n")
    return m.as_bytes()


def big_attachment(size: int) -> bytes:
    return os.urandom(size)

