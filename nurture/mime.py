"""Build the bytes of an outgoing email directly.

The standard library's ``EmailMessage`` costs about 3 ms per message to build
and serialise; writing the same MIME by hand costs a few dozen microseconds,
which matters at thousands of messages per second. The output is ordinary
RFC 5322 / MIME (the tests parse it back with the standard library):
multipart/alternative with a text and an HTML part, RFC 2047 encoded words for
non-ASCII display names and subjects, quoted-printable for ASCII bodies and
base64 for others, CRLF line ends, and the RFC 8058 unsubscribe headers.
"""

from __future__ import annotations

import binascii
import secrets
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime, formataddr


@dataclass(frozen=True)
class Envelope:
    """What the SMTP transaction needs besides the bytes."""

    sender: str
    recipient: str


def ascii_address(address: str) -> str:
    """The address with its domain in IDNA (punycode) form, as SMTP needs it."""
    local, _, domain = address.rpartition("@")
    try:
        domain.encode("ascii")
        return address
    except UnicodeEncodeError:
        return f"{local}@{domain.encode('idna').decode('ascii')}"


def _encoded_header(name: str, value: str) -> str:
    """ASCII as it is (when short enough); anything else as RFC 2047 base64 encoded words.

    Each word carries at most 45 bytes (60 characters of base64, under the 75
    an encoded word may have) and never splits a UTF-8 character; words are
    folded one per line. email.header.Header does the same at ten times the cost.
    """
    value = " ".join(value.split())
    if value.isascii() and len(value) + len(name) + 2 <= 78:
        return value
    data, words, start = value.encode("utf-8"), [], 0
    while start < len(data):
        end = min(start + 45, len(data))
        while end < len(data) and (data[end] & 0xC0) == 0x80:  # do not cut inside a character
            end -= 1
        words.append("=?utf-8?b?" + binascii.b2a_base64(data[start:end], newline=False).decode("ascii") + "?=")
        start = end
    return "\r\n ".join(words)


def _address(name: str, address: str) -> str:
    name = " ".join(name.split())
    return formataddr((name, ascii_address(address)), charset="utf-8") if name else ascii_address(address)


def _body(content: str, subtype: str) -> bytes:
    data = content.replace("\r\n", "\n").encode("utf-8")
    if data.isascii():
        encoded = binascii.b2a_qp(data, istext=True).replace(b"\n", b"\r\n")
        encoding = b"quoted-printable"
    else:
        encoded = b"".join(binascii.b2a_base64(data[i:i + 57]) for i in range(0, len(data), 57)).replace(b"\n", b"\r\n")
        encoding = b"base64"
    return (b"Content-Type: text/" + subtype.encode() + b'; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: " + encoding + b"\r\n\r\n" + encoded)


def build_message(
    *,
    from_name: str,
    from_address: str,
    to_name: str,
    to_address: str,
    subject: str,
    text: str,
    html: str,
    message_id: str,
    date: datetime,
    unsubscribe_url: str,
    unsubscribe_mailto: str,
    reply_to: str | None = None,
) -> bytes:
    boundary = "=_nurture_" + secrets.token_hex(12)
    headers = [
        ("From", _address(from_name, from_address)),
        ("To", _address(to_name, to_address)),
        ("Subject", _encoded_header("Subject", subject)),
        ("Date", format_datetime(date)),
        ("Message-ID", message_id),
        ("MIME-Version", "1.0"),
        ("List-Unsubscribe", f"<{unsubscribe_url}>, <{unsubscribe_mailto}>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ]
    if reply_to:
        headers.append(("Reply-To", ascii_address(reply_to)))
    headers.append(("Content-Type", f'multipart/alternative; boundary="{boundary}"'))
    head = "".join(f"{name}: {value}\r\n" for name, value in headers).encode("ascii")
    marker = b"--" + boundary.encode("ascii")
    return (head + b"\r\n" + marker + b"\r\n" + _body(text, "plain") + b"\r\n" + marker + b"\r\n"
            + _body(html, "html") + b"\r\n" + marker + b"--\r\n")
