"""Classify one inbound email: human reply, auto-reply, bounce, complaint, or unknown.

Contract: ``classify(raw, now=None) -> Verdict`` looks at the raw bytes of one message as it
arrived and says what it is, for whom, and why. It never raises: whatever the input (garbage
bytes, no headers, a bad charset, a 20 MB attachment), the worst answer is ``kind="unknown"``.

The work is bounded so that a big message costs no more than a small one: long base64 bodies
are cut before parsing (attachments are never decoded), the message is capped at 1 MB,
and only text parts and report parts are read, each capped in size.

Decision order, first match wins:

1. ARF (RFC 5965) feedback report -> ``complaint``.
2. RFC 3464 delivery-status report with failed or delayed recipients -> ``bounce_hard`` /
   ``bounce_soft``; a report that only says "delivered" is ``unknown``.
3. A message that looks like a bounce (sender MAILER-DAEMON/postmaster, a bounce subject,
   ``X-Failed-Recipients``) and names a failed recipient, by flufl.bounce's detectors or by
   the SMTP texts of common MTAs -> bounce.
4. RFC 3834 / vendor auto-reply headers, an out-of-office subject, or an out-of-office
   statement in the visible text -> ``auto_reply`` (with the return date when it is named).
5. A message that answers something (In-Reply-To/References, or a "Re:"-like subject) ->
   ``reply`` with the visible reply text.

Hard versus soft: a failure is hard when the *address* cannot receive mail (unknown user, no
such domain, the address moved, a 5.x.x with no other explanation). A refusal for a reason
that is not the address's fault (mailbox full, quota, rate limits, greylisting, blocks for
spam/reputation/policy/authentication, disabled accounts, expired retries) is soft, even
with a 5.x.x code, so that one bad day with a provider never suppresses its leads for good.
The DSN status is reported as given, so a caller can still apply a stricter rule. When a
server gave only a basic SMTP code, the status is its class ("550" -> "5.0.0"), as MTAs do.

Details of the contract beyond the field comments:

- A complaint's recipients are the complaining addresses (Original-Rcpt-To, else the reported
  message's To) as ``FailedRecipient(address, hard=True, status="", diagnostic="Feedback-Type:
  abuse")``: a complaint is a permanent "do not mail". Original-Mail-From is our own sender.
- A delivery report that only says "delivered" is ``unknown``, with the original's Message-ID
  in ``references``.
- ``to_addresses`` also reads Envelope-To and X-Envelope-To (exim/qmail spell Delivered-To so).
- ``reasons`` always says which signal decided, for the operator reading a lead's history.

A leaf module: stdlib, flufl.bounce, mail-parser-reply and dateparser only.
"""

from __future__ import annotations

import email
import logging
import re
from dataclasses import dataclass
from datetime import date, datetime, time
from email import policy
from email.header import Header, decode_header
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses
from html.parser import HTMLParser
from typing import Iterator

log = logging.getLogger(__name__)
# flufl.bounce logs (and swallows) a traceback whenever one of its detectors meets
# an 8-bit header; the outcome is the same, so keep those out of operators' logs.
logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)

KINDS = ("reply", "auto_reply", "bounce_hard", "bounce_soft", "complaint", "unknown")
"""Every value of ``Verdict.kind``."""

# Bounds on the work done for one message.
MAX_MESSAGE_BYTES = 1_000_000
"""The message is cut to this size after long base64 bodies were shortened."""
BASE64_LINES_KEPT = 512
"""Of a run of base64 lines (an attachment), this many are kept: enough for any text part."""
MAX_PART_CHARS = 200_000
"""Text read from one part."""
MAX_REPLY_CHARS = 60_000
"""Text searched for the visible reply: the reply is at the top, history below."""
MAX_DIAGNOSTIC_CHARS = 500
MAX_BOUNCE_TEXT_CHARS = 50_000
"""The bounce's own explanation searched for failed addresses (the quoted original excluded)."""
MAX_RECIPIENTS = 100
"""Failed recipients reported for one bounce; we send one recipient per message."""
MAX_FLUFL_BYTES = 200_000
"""flufl.bounce reads every line of every part, so it only sees messages up to this size."""


@dataclass(frozen=True)
class FailedRecipient:
    address: str  # lower-cased
    hard: bool  # permanent (5.x.x / unknown user / ...) vs soft (4.x.x / mailbox full / ...)
    status: str  # DSN status like "5.1.1", "" if unknown
    diagnostic: str = ""  # the server's text, trimmed to 500 chars


@dataclass(frozen=True)
class Verdict:
    kind: str  # "reply" | "auto_reply" | "bounce_hard" | "bounce_soft" | "complaint" | "unknown"
    recipients: tuple[FailedRecipient, ...]
    reply_text: str
    return_date: date | None
    references: tuple[str, ...]
    to_addresses: tuple[str, ...]
    from_address: str
    reasons: tuple[str, ...]


def classify(raw: bytes, now: date | None = None) -> Verdict:
    """Say what one inbound message is; never raises (worst case ``kind="unknown"``)."""
    today = now or date.today()
    try:
        return _classify(raw, today)
    except Exception as exc:  # the contract: a bad message is "unknown", never a crash
        log.warning("classification failed: %r", exc)
        return Verdict("unknown", (), "", None, (), (), "", (f"unreadable message ({type(exc).__name__})",))


# --------------------------------------------------------------------------------------------
# The decision


def _classify(raw: bytes, today: date) -> Verdict:
    msg, size = _parse(raw)
    from_address = _first_address(msg, ("From", "Sender"))
    to_addresses = _addresses(
        msg, ("To", "Cc", "Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To")
    )
    subject = _header(msg, "Subject")
    own_refs = _message_ids(msg, ("In-Reply-To", "References"))
    parts = list(_walk(msg))

    feedback = [p for p, inside in parts if not inside and p.get_content_type() == "message/feedback-report"]
    report_type = (msg.get_param("report-type", "", header="content-type") or "")
    report_type = report_type.lower() if isinstance(report_type, str) else ""
    if feedback or report_type == "feedback-report":
        return _complaint(msg, parts, feedback, own_refs, to_addresses, from_address)

    bounce_reasons = _bounce_signals(msg, subject, from_address)
    dsn_parts = [p for p, inside in parts if not inside and p.get_content_type() == "message/delivery-status"]
    if dsn_parts:
        verdict = _dsn_bounce(msg, size, parts, dsn_parts, own_refs, to_addresses, from_address, bounce_reasons)
        if verdict is not None:
            return verdict
    elif bounce_reasons:
        verdict = _text_bounce(msg, size, parts, own_refs, to_addresses, from_address, bounce_reasons)
        if verdict is not None:
            return verdict

    body = _main_text(parts)
    visible, quotes_history = _split_reply(body)
    auto_reasons = _auto_reply_signals(msg, subject, visible, quotes_history)
    if auto_reasons:
        back = _return_date(subject, visible, today)
        if back is not None:
            auto_reasons.append(f"return date {back.isoformat()}")
        return Verdict("auto_reply", (), "", back, own_refs, to_addresses, from_address, tuple(auto_reasons))

    reply_reasons = _reply_signals(msg, subject)
    if reply_reasons:
        return Verdict("reply", (), visible, None, own_refs, to_addresses, from_address, tuple(reply_reasons))
    return Verdict("unknown", (), "", None, own_refs, to_addresses, from_address, ("no reply, bounce or auto-reply signal",))


# --------------------------------------------------------------------------------------------
# Parsing, bounded

# Anchored and bounded (base64 lines are at most 76 characters) so that a long line that is
# not base64 costs linear time, not quadratic.
_BASE64_RUN = re.compile(
    rb"^((?:[A-Za-z0-9+/=]{16,100}\r?\n){%d})(?:[A-Za-z0-9+/=]{16,100}\r?\n)+" % BASE64_LINES_KEPT, re.M
)


def _parse(raw: bytes) -> tuple[Message, int]:
    """The message, with its long base64 bodies cut, and the size of what was parsed."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    raw = bytes(raw)
    if len(raw) > 256_000:
        # Attachments are long runs of base64 lines; keep their start (MIME stays intact) and
        # drop the rest, so parsing a 20 MB message costs what parsing a small one does.
        raw = _BASE64_RUN.sub(rb"\1", raw)
    raw = raw[:MAX_MESSAGE_BYTES]
    return email.message_from_bytes(raw, policy=policy.compat32), len(raw)


def _walk(msg: Message, inside: bool = False, depth: int = 0) -> Iterator[tuple[Message, bool]]:
    """Every part with a flag saying whether it sits inside an attached message."""
    yield msg, inside
    if depth > 30:
        return
    ctype = msg.get_content_type()
    if ctype in ("message/delivery-status", "message/feedback-report"):
        return  # their "sub-parts" are report field blocks, not MIME parts
    payload = msg.get_payload()
    if not isinstance(payload, list):
        return
    attached = inside or msg.get_content_maintype() == "message"
    for sub in payload:
        if isinstance(sub, Message):
            yield from _walk(sub, attached, depth + 1)


def _decode_bytes(data: bytes, charset: str | None) -> str:
    for candidate in (charset, "utf-8"):
        if not candidate:
            continue
        try:
            return data.decode(candidate)
        except (LookupError, UnicodeDecodeError, ValueError):
            continue
    try:
        return data.decode(charset or "utf-8", "replace")
    except (LookupError, ValueError):
        return data.decode("utf-8", "replace")


def _part_text(part: Message, limit: int = MAX_PART_CHARS) -> str:
    try:
        data = part.get_payload(decode=True)
    except Exception:
        data = None
    if data is None:
        payload = part.get_payload()
        if isinstance(payload, list):
            return "\n\n".join(_part_text(p, limit) for p in payload if isinstance(p, Message))[:limit]
        if not isinstance(payload, str):
            return ""
        data = payload.encode("utf-8", "surrogateescape")
    try:
        charset = part.get_content_charset()
    except Exception:
        charset = None
    return _decode_bytes(data[: limit * 2], charset)[:limit]


def _decode_header_value(value: object) -> str:
    try:
        chunks = decode_header(value if isinstance(value, (str, Header)) else str(value))
    except Exception:
        chunks = [(str(value), None)]
    out = []
    for chunk, charset in chunks:
        if isinstance(chunk, bytes):
            out.append(_decode_bytes(chunk, None if charset in (None, "unknown-8bit") else charset))
        else:
            out.append(chunk)
    text = "".join(out)
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return " ".join(text.split())


def _header(msg: Message, name: str) -> str:
    try:
        value = msg.get(name)
    except Exception:
        return ""
    return "" if value is None else _decode_header_value(value)


def _raw_headers(msg: Message, names: tuple[str, ...]) -> list[str]:
    values: list[str] = []
    for name in names:
        try:
            values.extend(str(v) for v in msg.get_all(name, []))
        except Exception:
            continue
    return values


_ADDRESS = r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)+"
_ADDRESS_RX = re.compile(_ADDRESS)


def _clean_address(value: str) -> str:
    value = value.strip().strip("<>\"' ").lower()
    match = _ADDRESS_RX.fullmatch(value)
    return value if match else ""


def _addresses(msg: Message, names: tuple[str, ...]) -> tuple[str, ...]:
    found: list[str] = []
    for _, addr in getaddresses(_raw_headers(msg, names)):
        addr = _clean_address(addr)
        if addr and addr not in found:
            found.append(addr)
    return tuple(found)


def _first_address(msg: Message, names: tuple[str, ...]) -> str:
    for name in names:
        found = _addresses(msg, (name,))
        if found:
            return found[0]
    return ""


_MESSAGE_ID = re.compile(r"<([^<>\s\"]{1,900})>")


def _ids_in(value: str) -> list[str]:
    ids = [f"<{m}>" for m in _MESSAGE_ID.findall(value)]
    if not ids:
        bare = value.strip()
        if "@" in bare and " " not in bare and len(bare) < 900:
            ids = [f"<{bare.strip('<>')}>"]
    return ids


def _message_ids(msg: Message, names: tuple[str, ...]) -> tuple[str, ...]:
    found: list[str] = []
    for value in _raw_headers(msg, names):
        for mid in _ids_in(value):
            if mid not in found:
                found.append(mid)
    return tuple(found)


def _merge(*groups: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    out: list[str] = []
    for group in groups:
        for item in group:
            if item and item not in out:
                out.append(item)
    return tuple(out)


# --------------------------------------------------------------------------------------------
# The attached original (bounces and complaints)


@dataclass(frozen=True)
class _Original:
    message_ids: tuple[str, ...]
    to: tuple[str, ...]
    sender: tuple[str, ...]


_INLINE_MESSAGE_ID = re.compile(r"^[ \t>]*Message-ID:[ \t]*(<[^<>\s]{1,900}>)", re.I | re.M)
_INLINE_TO = re.compile(r"^[ \t>]*To:[ \t]*(.+)$", re.I | re.M)
_INLINE_FROM = re.compile(r"^[ \t>]*(?:From|Return-Path):[ \t]*(.+)$", re.I | re.M)


def _original(parts: list[tuple[Message, bool]], own_text: str, tail_text: str) -> _Original:
    """What the returned or reported message was: its Message-ID, To and From."""
    ids: list[str] = []
    to: list[str] = []
    sender: list[str] = []
    for part, inside in parts:
        ctype = part.get_content_type()
        headers: Message | None = None
        if ctype in ("message/rfc822", "message/global") and not inside:
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                headers = payload[0]
            elif isinstance(payload, str):
                headers = HeaderParser().parsestr(payload[:MAX_PART_CHARS], headersonly=True)
        elif ctype in ("text/rfc822-headers", "message/rfc822-headers", "text/rfc822-header") and not inside:
            headers = HeaderParser().parsestr(_part_text(part), headersonly=True)
        if headers is None:
            continue
        ids.extend(_message_ids(headers, ("Message-ID",)))
        to.extend(_addresses(headers, ("To", "Cc")))
        sender.extend(_addresses(headers, ("From", "Return-Path")))
    # Bounces that quote the original inline ("--- Below this line is a copy of the message.").
    for text in (tail_text, own_text):
        ids.extend(_INLINE_MESSAGE_ID.findall(text))
    if not to and tail_text:
        for line in _INLINE_TO.findall(tail_text)[:3]:
            to.extend(_clean_address(a) for _, a in getaddresses([line]))
        for line in _INLINE_FROM.findall(tail_text)[:3]:
            sender.extend(_clean_address(a) for _, a in getaddresses([line]))
    return _Original(_merge(ids), _merge(to), _merge(sender))


# --------------------------------------------------------------------------------------------
# Complaints (RFC 5965)


def _complaint(msg, parts, feedback, own_refs, to_addresses, from_address) -> Verdict:
    fields: dict[str, list[str]] = {}
    for part in feedback:
        for block in _field_blocks(part):
            for key, values in block.items():
                fields.setdefault(key, []).extend(values)
    feedback_type = (fields.get("feedback-type") or ["abuse"])[0].strip().lower()
    original = _original(parts, "", "")
    complainers: list[str] = []
    for value in fields.get("original-rcpt-to", []) + fields.get("removal-recipient", []):
        addr = _clean_address(value.split(";")[-1])
        if addr and addr not in complainers:
            complainers.append(addr)
    source = "Original-Rcpt-To"
    if not complainers:
        complainers = [a for a in original.to if a not in to_addresses]
        source = "the reported message's To"
    reasons = [f"ARF feedback report ({feedback_type})"]
    if complainers:
        reasons.append(f"complainer from {source}")
    recipients = tuple(
        FailedRecipient(addr, True, "", f"Feedback-Type: {feedback_type}") for addr in complainers
    )
    return Verdict(
        "complaint", recipients, "", None, _merge(own_refs, original.message_ids),
        to_addresses, from_address, tuple(reasons),
    )


def _field_blocks(part: Message) -> list[dict[str, list[str]]]:
    """The "Name: value" blocks of a delivery-status or feedback-report part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        lines: list[str] = []
        for block in payload:
            if isinstance(block, Message):
                lines.extend(f"{k}: {v}" for k, v in block.items())
                lines.append("")
        text = "\n".join(lines)
    else:
        text = _part_text(part)
    blocks: list[dict[str, list[str]]] = []
    current: dict[str, list[str]] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
            current, last = {}, ""
            continue
        if line[0] in " \t" and last:
            current[last][-1] += " " + line.strip()
            continue
        match = re.match(r"([A-Za-z][A-Za-z0-9-]*)[ \t]*:[ \t]*(.*)", line)
        if match:
            last = match.group(1).lower()
            current.setdefault(last, []).append(match.group(2).strip())
    if current:
        blocks.append(current)
    return blocks


# --------------------------------------------------------------------------------------------
# Bounces

_BOUNCE_SENDER = re.compile(
    r"^(?:mailer[-_.]?daemon|mail[-_.]?daemon|post[-_.]?master|mail[-_.]?delivery[-_.]?(?:system|subsystem)?|"
    r"bounces?|mdaemon|mmdf)$",
    re.I,
)
_BOUNCE_SENDER_NAME = re.compile(r"mail(?:er)?[- ]?daemon|mail delivery (?:system|subsystem)|postmaster", re.I)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|not (?:be )?delivered|non[- ]?deliver|delivery (?:status|failure|failed|"
    r"has failed|problem|notification|report|incomplete|delayed|error)|failure notice|"
    r"returned mail|mail delivery (?:failed|failure|problem|error|system|subsystem)|failed mail|mail failure|returning message|"
    r"could not (?:be )?deliver|delivery notification|message (?:not delivered|delivery failed|"
    r"could not|was not|blocked|rejected)|mail (?:system error|could not)|warning: (?:could not|message)|"
    r"\bNDN\b|\bNDR\b|returned to sender|delivery unsuccessful|permanent (?:delivery )?(?:failure|error)|"
    r"unzustellbar|nicht zustellbar|non remis|échec de (?:la )?remise|no entregado|"
    r"недоставлен|не доставлен|не удалось доставить|ошибка доставки",
    re.I,
)


def _bounce_signals(msg: Message, subject: str, from_address: str) -> list[str]:
    reasons = []
    local = from_address.split("@")[0]
    display = _header(msg, "From")
    if _BOUNCE_SENDER.match(local) or _BOUNCE_SENDER_NAME.search(display):
        reasons.append(f"sender {from_address or display} is a mail system")
    # "Re: Delivery report for Q3" is a person answering; mail systems do not prefix "Re:".
    if subject and _BOUNCE_SUBJECT.search(subject) and not _REPLY_SUBJECT.match(subject):
        reasons.append("bounce subject")
    if msg.get("X-Failed-Recipients"):
        reasons.append("header X-Failed-Recipients")
    return reasons


_ENHANCED_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d]|\.\d)")
_SMTP_CODE = re.compile(r"(?<![\d.#-])([245][0-5]\d)(?:[ \-]|$)(?!\d)", re.M)


def _find_status(text: str, last: bool = False) -> str:
    """The most specific enhanced status code in text ("5.1.1" beats "5.0.0").

    ``last`` picks the last one: in a diagnostic the remote server's words come last.
    """
    found = [".".join(m) for m in _ENHANCED_STATUS.findall(text or "")]
    if not found:
        return ""
    specific = [s for s in found if not s.endswith(".0.0")] or found
    return specific[-1] if last else specific[0]


def _find_smtp_code(text: str) -> str:
    match = _SMTP_CODE.search(text or "")
    return match.group(1) if match else ""


def _rx(*patterns: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.I)


# Reasons a recipient was refused, each hard (the address is dead) or soft (it is not the
# address's fault). The DSN status alone decides only when no reason is recognised.
_SENDER_REFUSED = _rx(
    r"sender (?:address|domain)? ?(?:rejected|refused|denied|blocked|verify|verification|unknown|not allowed)",
    r"domain of sender", r"unverified sender", r"sender verify", r"envelope sender",
    r"mail from (?:address )?(?:rejected|refused|denied)", r"sender is not allowed",
)
_MAILBOX_FULL = _rx(
    r"mailbox (?:is |was )?full", r"over ?quota", r"quota (?:exceeded|exceed|full)", r"exceed\w* (?:\w+ ){0,3}quota",
    r"insufficient (?:system )?storage", r"out of (?:storage|space)", r"storage (?:space|limit|quota)",
    r"mailbox (?:size )?limit", r"disk (?:is )?full", r"not enough (?:disk )?space", r"mail ?box (?:has )?exceeded",
    r"(?:mail ?folder|mail ?box|inbox|mail ?drop) (?:is |was )?(?:full|over)", r"too much mail",
    r"переполнен", r"превышен\w* (?:\w+ )?(?:квот|лимит|размер)",
)
_TRY_AGAIN = _rx(
    r"try (?:again|later)", r"temporar", r"greylist", r"graylist", r"defer", r"rate limit", r"at a rate",
    r"failing for a long time", r"retry time(?:out)? (?:exceeded|reached)", r"aborted after \d", r"повторите",
)
_MAILBOX_DISABLED = _rx(
    r"(?:account|mailbox|user|address|recipient)\b[^.\n]{0,40}\b(?:is |has been |was )?(?:disabled|suspended|deactivated|inactive|locked|frozen|closed|expired|on hold)\b",
    r"(?:disabled|suspended|inactive|deactivated|locked) (?:account|mailbox|user|address)",
    r"temporarily (?:disabled|deactivated)", r"заблокирован", r"отключен",
)
_ADDRESS_UNKNOWN = _rx(
    r"user(?:name)? (?:is )?unknown", r"unknown (?:user|recipient|mailbox|address|local[- ]?part|alias|e-?mail)",
    r"no such (?:user|mailbox|recipient|address|account|person|local user|e-?mail)",
    r"(?:user|mailbox|recipient|address|account|e-?mail|person|addressee)\b[^.\n]{0,40}?\b(?:does not|doesn'?t|dosn'?t|did not|do not|not) exists?",
    r"(?:user|mailbox|recipient|account|addressee)s? (?:\w+ ){0,2}(?:not found|unknown|invalid|not valid|unavailable|not listed)",
    r"invalid (?:recipient|mailbox|address|user|e-?mail|account)",
    r"not a (?:valid|known) (?:user|mailbox|recipient|address)", r"no mailbox (?:here )?by that name",
    r"unrouteable address", r"(?:address|mailbox|recipient|account)\b[^.\n]{0,30}(?:no longer|not) (?:a )?(?:valid|active|in use)",
    r"has (?:been )?(?:moved|changed address)", r"no longer (?:with|at|employed)",
    r"not our customer", r"mailbox not found", r"recipient address rejected: access denied", r"does not have an? (?:account|mailbox)",
    r"addressee unknown", r"bad (?:destination )?(?:mailbox|recipient|address)",
    r"нет такого", r"не существует", r"не найден", r"неизвестн\w* (?:пользовател|адрес|получател)",
    r"benutzer unbekannt", r"empfänger unbekannt", r"utilisateur inconnu", r"n'existe pas", r"usuario desconocido", r"no existe",
)
_DOMAIN_UNKNOWN = _rx(
    r"host (?:or domain name )?not found", r"(?:domain|host) (?:name )?(?:not found|unknown|does not exist|doesn'?t exist)",
    r"no such (?:domain|host)", r"unrouteable (?:mail )?domain", r"name service error", r"unknown (?:domain|host)",
    r"does not accept (?:e-?)?mail", r"null ?mx", r"no (?:mx|valid mx|mail exchanger)", r"domain (?:is )?(?:invalid|not valid)",
    r"host unknown", r"unable to route", r"(?:could not|couldn'?t|unable to) find (?:a |any )?mail exchanger",
)
_NOT_THE_ADDRESS = _rx(
    r"spam", r"blacklist", r"black list", r"blocklist", r"block list", r"denylist", r"\bblocked\b", r"reputation",
    r"\bpolicy\b", r"policies", r"\bspf\b", r"\bdkim\b", r"\bdmarc\b", r"authenticat", r"not authori[sz]ed",
    r"relay(?:ing)? (?:access )?(?:denied|not permitted|not allowed|prohibited)", r"(?:not permitted|unable|denied) to relay",
    r"too (?:large|big)", r"size (?:limit|exceed)", r"exceeds? (?:the )?(?:\w+ )?(?:size|limit)", r"message (?:length|size)",
    r"rate limit", r"at a rate", r"too many", r"try (?:again|later)", r"temporar", r"greylist", r"graylist", r"defer",
    r"timed? ?out", r"timeout", r"connection (?:refused|reset|lost|closed|dropped)", r"lost connection", r"refused to talk",
    r"mail loop", r"loops? back", r"hop count", r"too many hops", r"expired", r"retry (?:time|timeout)", r"giving up",
    r"could not be delivered (?:within|for)", r"starttls", r"\btls\b", r"\bptr\b", r"reverse (?:dns|lookup)", r"\brdns\b",
    r"syntax error", r"not compliant", r"rfc ?(?:5322|2822|822)", r"malformed", r"virus", r"malware", r"content",
    r"system error", r"mailer error", r"command (?:died|failed)", r"local error", r"violation", r"\bip\b",
    r"not allowed", r"not implemented", r"not permitted", r"access denied", r"permission",
)
_RULES: list[tuple[re.Pattern[str], bool, str]] = [
    (_SENDER_REFUSED, False, "sender refused"),
    (_MAILBOX_FULL, False, "mailbox full"),
    (_TRY_AGAIN, False, "temporary refusal"),
    (_MAILBOX_DISABLED, False, "mailbox disabled"),
    (_ADDRESS_UNKNOWN, True, "unknown recipient"),
    (_DOMAIN_UNKNOWN, True, "domain does not receive mail"),
    (_NOT_THE_ADDRESS, False, "refused for a reason other than the address"),
]
_ADDRESS_STATUSES = ("5.1.0", "5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10", "5.4.4")


def _assess(status: str, text: str, default_hard: bool) -> tuple[bool, str]:
    """Decide hard (the address is dead) or soft, and say why."""
    # Addresses are masked first: "dmarc@..." is not a DMARC failure, and their dots would
    # break "user x@y.com does not exist" in two.
    text = _ADDRESS_RX.sub("<@>", text)
    code = _find_smtp_code(text)
    if status.startswith("4") or (not status and code.startswith("4")):
        return False, f"temporary status {status or code}"
    if status in _ADDRESS_STATUSES:
        # An address status is explicit; only a reason that blames something else overrides it.
        if not (_ADDRESS_UNKNOWN.search(text) or _DOMAIN_UNKNOWN.search(text)):
            for rx, hard, label in _RULES:
                if not hard and rx.search(text):
                    return False, label
        return True, f"status {status}"
    for rx, hard, label in _RULES:
        if rx.search(text):
            return hard, label
    if status[:4] in ("5.2.", "5.3.", "5.5.", "5.6.", "5.7."):
        return False, f"status {status} is not about the address"
    if code in ("500", "501", "502", "503", "504", "552"):
        return False, f"SMTP {code} is not about the address"
    if status.startswith("5") or code.startswith("5"):
        return True, f"permanent status {status or code}"
    return default_hard, "permanent failure" if default_hard else "temporary failure"


def _recipient(address: str, status: str, text: str, default_hard: bool, forced_soft: bool = False) -> tuple[FailedRecipient, str]:
    """One failed recipient, judged on the same trimmed text the caller gets as its diagnostic."""
    diagnostic = " ".join(text.split())[:MAX_DIAGNOSTIC_CHARS]
    if forced_soft:
        return FailedRecipient(address, False, status, diagnostic), "delivery delayed"
    hard, why = _assess(status, diagnostic, default_hard)
    return FailedRecipient(address, hard, status, diagnostic), why


def _bounce_verdict(recipients, why, extra_reasons, own_refs, original, to_addresses, from_address, message_hard) -> Verdict:
    if recipients:
        hard = any(r.hard for r in recipients)
    else:
        hard = message_hard
    reasons = list(extra_reasons)
    for r in recipients:
        reasons.append(f"{r.address}: {'hard' if r.hard else 'soft'}" + (f" (DSN status {r.status})" if r.status else "") + f", {why[r.address]}")
    return Verdict(
        "bounce_hard" if hard else "bounce_soft", tuple(recipients), "", None,
        _merge(own_refs, original.message_ids), to_addresses, from_address, tuple(reasons),
    )


def _dsn_addr(values: list[str] | None) -> str:
    for value in values or []:
        addr = _clean_address(value.split(";", 1)[-1])
        if addr:
            return addr
    return ""


def _dsn_bounce(msg, size, parts, dsn_parts, own_refs, to_addresses, from_address, bounce_reasons) -> Verdict | None:
    own_text, tail_text = _bounce_text(parts)
    original = _original(parts, own_text, tail_text)
    recipients: list[FailedRecipient] = []
    why: dict[str, str] = {}
    delivered = 0
    for part in dsn_parts:
        for block in _field_blocks(part):
            if len(recipients) >= MAX_RECIPIENTS:
                break
            address = _dsn_addr(block.get("original-recipient")) or _dsn_addr(block.get("final-recipient")) or _dsn_addr(block.get("x-actual-recipient"))
            if not address:
                continue
            action = (block.get("action") or [""])[0].strip().lower()
            raw_status = (block.get("status") or [""])[0]
            diagnostic = " ".join(block.get("diagnostic-code", []))
            diagnostic = re.sub(r"^\s*(?:smtp|x-[\w-]+)\s*;\s*", "", diagnostic, flags=re.I)
            # The remote server's own code (in the diagnostic) is more precise than the status the
            # reporting MTA mapped it to ("5.1.0 Unknown address error 550 5.2.2 Mailbox full").
            status = _find_status(raw_status)
            remote = _find_status(diagnostic, last=True)
            if remote and (not status or status.endswith(".0.0") or remote[0] == status[0]):
                status = remote
            status = status or _class_status(_find_smtp_code(diagnostic))
            if action.startswith(("delivered", "deliverable", "relayed", "expanded")) or status.startswith("2"):
                delivered += 1
                continue
            if address in why:
                continue
            text = diagnostic or _segment(own_text, address)
            delayed = action.startswith("delayed")
            recipient, reason = _recipient(address, status, text, True, forced_soft=delayed)
            recipients.append(recipient)
            why[address] = reason
    if recipients:
        return _bounce_verdict(
            recipients, why, ["RFC 3464 delivery-status report", *bounce_reasons],
            own_refs, original, to_addresses, from_address, True,
        )
    if delivered:
        return Verdict(
            "unknown", (), "", None, _merge(own_refs, original.message_ids), to_addresses, from_address,
            ("RFC 3464 report of successful delivery",),
        )
    # A report part without usable recipient blocks: read it like any other bounce.
    return _text_bounce(msg, size, parts, own_refs, to_addresses, from_address, ["delivery-status part", *bounce_reasons])


# Where a bounce starts quoting the returned message.
_ORIGINAL_MARKER = re.compile(
    r"^[ \t>|*=_-]*(?:"
    r"(?:below this line is |this is )?(?:a )?copy of (?:the |your )?(?:original )?message|"
    r"(?:the )?header(?:s)? of (?:the )?original message|message (?:headers?|body|text) follows|"
    r"unsent message below|returned mail contents|копия (?:исходного )?сообщения"
    r")[^\n]*$|"
    r"^[ \t>|*=_-]*(?:(?:the )?(?:original|returned|unsent|undelivered|attached) message(?: (?:follows|below|headers?|text|body|is attached))?|"
    r"original (?:message )?headers|исходное сообщение|оригинал(?:ьное)? сообщение|ursprüngliche nachricht)[ \t:.=_-]*$",
    re.I | re.M,
)
_HEADER_BLOCK_START = re.compile(
    r"^(?:Received|Return-Path|DKIM-Signature|X-Received|ARC-Seal|Authentication-Results|Message-I[dD]|MIME-Version):[ \t]",
    re.I | re.M,
)


def _text_type(part: Message) -> str:
    """The part's content type, as "text/plain" for a multipart whose boundary never came."""
    ctype = part.get_content_type()
    if part.get_content_maintype() == "multipart" and isinstance(part.get_payload(), str):
        return "text/plain"
    return ctype


def _bounce_text(parts: list[tuple[Message, bool]]) -> tuple[str, str]:
    """The bounce's own human-readable text, and what follows it (the quoted original)."""
    texts = []
    for part, inside in parts:
        if inside or part.is_multipart():
            continue
        ctype = _text_type(part)
        if ctype == "text/plain" or (ctype == "text/html" and not texts):
            text = _part_text(part)
            texts.append(_html_to_text(text) if ctype == "text/html" else text)
    text = "\n\n".join(texts).replace("\r\n", "\n")[: MAX_BOUNCE_TEXT_CHARS * 4]
    cut = min(len(text), MAX_BOUNCE_TEXT_CHARS)
    for rx in (_ORIGINAL_MARKER, _HEADER_BLOCK_START):
        match = rx.search(text)
        if match and match.start() < cut:
            cut = match.start()
    return text[:cut], text[cut:]


_SEGMENT_STOP = re.compile(r"\n[ \t]*\n[ \t]*\n")


def _segment(text: str, address: str) -> str:
    """The lines of bounce text about one recipient: its line and the paragraph that follows."""
    low = text.lower()
    pos = low.find(address)
    if pos < 0:
        return ""
    start = low.rfind("\n", 0, pos) + 1
    end = min(len(text), pos + 800)
    stop = _SEGMENT_STOP.search(text, pos, end)
    if stop:
        end = stop.start()
    lines = text[start:end].split("\n")
    kept = [lines[0]]
    for line in lines[1:]:
        other = _ADDRESS_RX.search(line)
        if other and other.group(0).lower() != address and _RECIPIENT_LINE.match(line):
            break  # the next recipient's paragraph
        kept.append(line)
    return "\n".join(kept)


_RECIPIENT_LINE = re.compile(r"^[ \t*-]*<?" + _ADDRESS + r">?(?:[ \t:.(,;]|$)", re.M)
_RECIPIENT_PATTERNS = [
    re.compile(r"^[ \t*-]*(?:\"[^\"\n]{0,80}\"[ \t]*)?<?(" + _ADDRESS + r")>?(?:[ \t:.(,;]|$)", re.M),
    re.compile(r"^[ \t]*(?:original|final)-recipient:[ \t]*rfc822;[ \t]*<?(" + _ADDRESS + ")", re.I | re.M),
    re.compile(r"rcpt to:?[ \t]*<(" + _ADDRESS + ")>", re.I),
    re.compile(
        r"(?:deliver(?:ed|ing|y)?|sen[dt]|message|mail|e-?mail|failed|rejected|bounced|address(?:es)?)\b[^\n<>@]{0,60}?"
        r"\b(?:to|for|recipient)[: \t]+<?\"?(" + _ADDRESS + ")",
        re.I,
    ),
    re.compile(r"^[ \t]*(?:recipient(?: address)?|address|failed recipient|получатель|empfänger|destinataire)[ \t]*:[ \t]*<?(" + _ADDRESS + ")", re.I | re.M),
    re.compile(r"<(" + _ADDRESS + r")>[ \t]*(?:\.\.\.|:|\(|was|is|has|could)", re.I),
]
_ID_CONTEXT = re.compile(r"(?:message-id|msgid|message id|in-reply-to|references)[ \t]*[:=]?[ \t]*<([^<>\s]+)>", re.I)


def _text_recipients(own_text: str) -> list[str]:
    ids = {m.lower() for m in _ID_CONTEXT.findall(own_text)}
    found: list[tuple[int, str]] = []
    for rx in _RECIPIENT_PATTERNS:
        for match in rx.finditer(own_text):
            addr = _clean_address(match.group(1))
            if addr and addr not in ids:
                found.append((match.start(1), addr))
    found.sort()
    out: list[str] = []
    for _, addr in found:
        if addr not in out:
            out.append(addr)
    return out[:50]


def _flufl_failures(msg: Message) -> tuple[set[str], set[str]]:
    try:
        from flufl.bounce import all_failures

        temporary, permanent = all_failures(msg)
    except Exception as exc:  # a detector choking on odd input is no reason to give up
        log.debug("flufl.bounce failed: %r", exc)
        return set(), set()

    def clean(values) -> set[str]:
        out = set()
        for value in values:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
            addr = _clean_address(text)
            if addr:
                out.add(addr)
        return out

    return clean(temporary), clean(permanent)


_SYSTEM_LOCAL = re.compile(r"^(?:mailer[-_.]?daemon|post[-_.]?master|mail[-_.]?daemon|abuse|hostmaster|root|nobody|noreply|no-reply|do-not-reply|donotreply)$", re.I)
_TEMPORARY_WORDING = re.compile(
    r"temporar|will (?:be )?retr|will (?:try|keep trying)|still trying|delay(?:ed)?\b|not yet been delivered|"
    r"has not been delivered yet|no action is required|will continue|до сих пор|повтор",
    re.I,
)
_FINAL_WORDING = re.compile(r"permanent|fatal|gave up|given up|giving up|not (?:going to|be) (?:try|retr)", re.I)
_FAILURE_WORDING = re.compile(
    r"(?:could not|couldn'?t|cannot|can'?t|unable to|wasn'?t able to|was not|wasn'?t|failed to|not|did not) (?:be )?(?:deliver|reach)|"
    r"error (?:while )?deliver|delivery (?:has )?failed|failed permanently|permanent(?:ly)? (?:error|failure|fatal)|undeliverable|"
    r"returned to sender|not delivered|could not be reached|не (?:может быть |удалось |было )?доставлен",
    re.I,
)


def _text_bounce(msg, size, parts, own_refs, to_addresses, from_address, bounce_reasons) -> Verdict | None:
    own_text, tail_text = _bounce_text(parts)
    original = _original(parts, own_text, tail_text)
    ours = set(_addresses(msg, ("To", "Cc"))) | set(original.sender) | {from_address}
    not_addresses = {m.strip("<>").lower() for m in original.message_ids}

    def usable(addr: str) -> bool:
        if not addr or addr in ours or addr in not_addresses:
            return False
        # "please write to postmaster@..." is advice, unless that was whom we wrote to.
        return addr in original.to or not _SYSTEM_LOCAL.match(addr.split("@")[0])

    header_failed = [a for a in _addresses(msg, ("X-Failed-Recipients",)) if usable(a)]
    temporary, permanent = _flufl_failures(msg) if size <= MAX_FLUFL_BYTES else (set(), set())
    text_found = [a for a in _text_recipients(own_text) if usable(a)]
    candidates = _merge(header_failed, sorted(a for a in permanent | temporary if usable(a)), text_found)[:MAX_RECIPIENTS]
    reasons = list(bounce_reasons)
    if permanent or temporary:
        reasons.append("flufl.bounce detected failed addresses")
    if not candidates:
        fallback = [a for a in original.to if usable(a)]
        if fallback and len(fallback) <= 3:
            candidates = tuple(fallback)
            reasons.append("failed recipient taken from the returned message's To")

    head = own_text[:5000]
    whole_status = _find_status(head) or _class_status(_find_smtp_code(head))
    message_temporary = bool(_TEMPORARY_WORDING.search(head)) and not _FINAL_WORDING.search(head)
    worded = bool(_FAILURE_WORDING.search(head)) or bool(whole_status) or any(
        rx.search(head) for rx in (_SENDER_REFUSED, _MAILBOX_FULL, _MAILBOX_DISABLED, _ADDRESS_UNKNOWN, _DOMAIN_UNKNOWN)
    )
    sender_and_subject = len([r for r in bounce_reasons if r.startswith(("sender", "bounce subject"))]) >= 2
    if not (candidates or worded or sender_and_subject or header_failed):
        return None

    recipients: list[FailedRecipient] = []
    why: dict[str, str] = {}
    for addr in candidates:
        segment = _segment(own_text, addr)
        status = _find_status(segment) or _class_status(_find_smtp_code(segment))
        if not status and len(candidates) == 1:
            status = whole_status
        text = segment
        if len(candidates) == 1 and len(segment) < 60:
            text = head
        default_hard = not (addr in temporary and addr not in permanent) and not message_temporary
        if message_temporary and not status.startswith("5"):
            recipient, _ = _recipient(addr, status, text, False, forced_soft=True)
            reason = "the bounce says delivery is delayed or will be retried"
        else:
            recipient, reason = _recipient(addr, status, text, default_hard)
        recipients.append(recipient)
        why[addr] = reason
    message_hard = False
    if not recipients:
        message_hard, why_message = _assess(whole_status, head, not message_temporary)
        reasons.append(f"no failed address found in the bounce ({'hard' if message_hard else 'soft'}: {why_message})")
    return _bounce_verdict(recipients, why, reasons, own_refs, original, to_addresses, from_address, message_hard)


def _class_status(code: str) -> str:
    """An SMTP reply code as the matching DSN class ("550" -> "5.0.0"), as MTAs report it."""
    return f"{code[0]}.0.0" if code[:1] in ("4", "5") else ""


# --------------------------------------------------------------------------------------------
# Auto-replies (RFC 3834 and the usual vendor headers)

_OOO_SUBJECT = re.compile(
    r"out of (?:the )?office|\bOOO\b|automatic reply|auto[- ]?reply|autoreply|auto[- ]?response|autoresponse|"
    r"auto[- ]?respond|automated (?:reply|response)|away from (?:the |my )?(?:office|desk)|"
    r"abwesenheit|automatische antwort|r[ée]ponse automatique|absent(?:e)? du bureau|respuesta autom[áa]tica|"
    r"fuera de la oficina|risposta automatica|fuori ufficio|automatisch antwoord|"
    r"отсутствую|отсутствие (?:в офисе|на рабочем месте)|автоответ|автоматическ\w* ответ|вне офиса|нет в офисе|не в офисе",
    re.I,
)
# Words that name an absence but also a topic ("Re: Vacation rentals"): only without "Re:".
_AWAY_SUBJECT = re.compile(r"\baway until\b|\bon (?:vacation|holiday|leave)\b|\bvacation\b|\babwesend\b|afwezig|в отпуске", re.I)
_OOO_BODY = re.compile(
    r"\b(?:i am|i'm|i will be|i'll be|i shall be)\s+(?:currently\s+|now\s+)?(?:out of (?:the )?office|away from (?:the |my )?(?:office|desk|e-?mail)|"
    r"on (?:vacation|holiday|holidays|annual leave|leave|maternity leave|paternity leave|parental leave|sick leave|a business trip|business travel)|"
    r"(?:currently )?(?:out|away|travell?ing)\b[^.\n]{0,40}\b(?:until|till|through|returning)\b|"
    r"out of the country|on the road with limited)|"
    r"this is an? auto(?:matic|mated)?(?:ally generated)?[- ]?(?:reply|response|message|generated)|"
    r"auto(?:matic|mated)?(?:ally)? (?:generated )?(?:reply|response)\b|limited access to (?:my )?e-?mail|"
    r"(?:я|сейчас)\s+(?:\w+\s+){0,2}(?:в отпуске|в командировке|на больничном|отсутствую|вне офиса|не в офисе)|"
    r"(?:нахожусь|буду) (?:\w+ ){0,2}(?:в отпуске|в командировке|на больничном|вне офиса)|"
    r"это автоматическ\w+ (?:ответ|сообщение|уведомление)|автоматический ответ|отсутствую (?:в офисе|на работе|до)|"
    r"bin (?:ich )?(?:derzeit |zurzeit )?(?:nicht im büro|abwesend|im urlaub)|je suis (?:actuellement )?absent",
    re.I,
)


def _auto_reply_signals(msg: Message, subject: str, visible: str, quotes_history: bool) -> list[str]:
    reasons = []
    auto_submitted = _header(msg, "Auto-Submitted").lower()
    if auto_submitted and not auto_submitted.startswith("no"):
        reasons.append(f"header Auto-Submitted: {auto_submitted}")
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder", "X-AutoReply-From", "X-Mail-Autoreply",
                 "X-MS-Exchange-Inbox-Rules-Loop", "X-Vacation", "X-Auto-Reply"):
        value = _header(msg, name)
        if value and value.lower() not in ("no", "false", "0"):
            reasons.append(f"header {name}: {value[:60]}")
    for name, wanted in (("X-Autogenerated", "reply"), ("X-Apple-Action", "vacation")):
        value = _header(msg, name)
        if value.lower().startswith(wanted):
            reasons.append(f"header {name}: {value[:60]}")
    post = _header(msg, "X-POST-MessageClass")
    if "autorespond" in post.lower():
        reasons.append(f"header X-POST-MessageClass: {post[:60]}")
    precedence = _header(msg, "Precedence").lower()
    ooo_subject = bool(subject) and bool(
        _OOO_SUBJECT.search(subject) or (_AWAY_SUBJECT.search(subject) and not _REPLY_SUBJECT.match(subject))
    )
    if precedence.startswith("auto_reply"):
        reasons.append("header Precedence: auto_reply")
    elif precedence in ("bulk", "junk") and ooo_subject:
        reasons.append(f"header Precedence: {precedence} with an out-of-office subject")
    if ooo_subject:
        reasons.append(f"out-of-office subject: {subject[:80]}")
    elif not reasons and not quotes_history:
        # People quote what they answer; autoresponders mostly do not.
        match = _OOO_BODY.search(visible[:1500])
        if match:
            reasons.append(f"out-of-office wording: {match.group(0)[:60]!r}")
    return reasons


_BACK_WORDS = re.compile(
    r"\b(?:back|return(?:ing|s)?|re-?turn|will be in|in the office|reachable|available again|resume)\b|"
    r"вернусь|вернуться|возвращаюсь|выйду|буду (?:на связи|в офисе|доступ)|zurück|de retour|je serai",
    re.I,
)
_UNTIL_WORDS = re.compile(r"\b(?:until|till|til|through|thru|by|after)\b|\b(?:до|по|после)\b|\bbis\b|\bjusqu", re.I)
_DATE_WORD = re.compile(
    r"\d|monday|tuesday|wednesday|thursday|friday|saturday|sunday|january|february|march|april|june|july|"
    r"august|september|october|november|december|\b(?:jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec)\b|tomorrow|next week|"
    r"понедельник|вторник|сред[уа]|четверг|пятниц|суббот|воскресень|январ|феврал|март|апрел|ма[йя]\b|июн|июл|август|"
    r"сентябр|октябр|ноябр|декабр|завтра|послезавтра|следующ",
    re.I,
)
_SENTENCE_SPLIT = re.compile(r"\n\s*\n|(?<=[.!?])\s+(?=[A-ZА-ЯЁ])|\n(?=\s*[-*•])")


def _return_date(subject: str, visible: str, today: date) -> date | None:
    """The date the person is back, when the auto-reply names one (English or Russian)."""
    text = f"{subject}.\n\n{visible[:3000]}"
    sentences = [" ".join(s.split()) for s in _SENTENCE_SPLIT.split(text) if s and s.strip()]
    for keywords in (_BACK_WORDS, _UNTIL_WORDS):
        dates = []
        for sentence in sentences:
            for match in keywords.finditer(sentence):
                window = sentence[match.end(): match.end() + 60]
                found = _search_date(window, today)
                if found is not None:
                    dates.append(found)
        if dates:
            return min(dates)
    return None


def _search_date(window: str, today: date) -> date | None:
    if not _DATE_WORD.search(window):
        return None
    try:
        from dateparser.search import search_dates

        found = search_dates(
            window,
            languages=["en", "ru"],
            settings={
                "PREFER_DATES_FROM": "future",
                "RELATIVE_BASE": datetime.combine(today, time(0, 0)),
                "RETURN_AS_TIMEZONE_AWARE": False,
            },
        )
    except Exception as exc:
        log.debug("dateparser failed on %r: %r", window, exc)
        return None
    for text, when in found or []:
        if not _DATE_WORD.search(text):
            continue
        day = when.date()
        if day > today:
            return day
    return None


# --------------------------------------------------------------------------------------------
# Replies

_REPLY_SUBJECT = re.compile(
    r"^\s*(?:\[[^\]]{1,40}\]\s*)?(?:re|aw|sv|vs|antw|odp|rif|res|ynt|atb|ответ|отв)\s*(?:\[\d+\]|\(\d+\)|\^\d+)?\s*:",
    re.I,
)


def _reply_signals(msg: Message, subject: str) -> list[str]:
    reasons = []
    for name in ("In-Reply-To", "References"):
        if _raw_headers(msg, (name,)):
            reasons.append(f"header {name}")
    if subject and _REPLY_SUBJECT.match(subject):
        reasons.append(f"reply subject: {subject[:60]}")
    return reasons


def _main_text(parts: list[tuple[Message, bool]]) -> str:
    """The first text/plain part, or the first text/html part as text when there is none."""
    html = None
    for part, inside in parts:
        if inside or part.is_multipart():
            continue
        disposition = str(part.get("Content-Disposition") or "").lower()
        if disposition.startswith("attachment"):
            continue
        ctype = _text_type(part)
        if ctype == "text/plain":
            return _part_text(part, MAX_REPLY_CHARS * 2)
        if ctype == "text/html" and html is None:
            html = part
    if html is not None:
        return _html_to_text(_part_text(html, MAX_REPLY_CHARS * 4))
    return ""


class _HTMLText(HTMLParser):
    """HTML to plain text, keeping quotes visible as "> " lines so the text rules can cut them."""

    BLOCK = {"p", "div", "br", "tr", "li", "ul", "ol", "table", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "section", "article", "header", "footer", "dd", "dt"}
    SKIP = {"style", "script", "head", "title", "xml"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.current: list[str] = []
        self.depth = 0
        self.skipping = 0

    def _flush(self) -> None:
        text = " ".join("".join(self.current).replace("\xa0", " ").split())
        self.current = []
        self.lines.append(("> " * self.depth + text) if text or self.depth else "")

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skipping += 1
        elif tag == "blockquote":
            self._flush()
            self.depth += 1
        elif tag == "hr":
            self._flush()
            self.lines.append("> " * self.depth + "_" * 32)
        elif tag in self.BLOCK:
            self._flush()

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag == "blockquote":
            self._flush()
            self.depth = max(0, self.depth - 1)
        elif tag in self.BLOCK:
            self._flush()

    def handle_data(self, data):
        if not self.skipping:
            self.current.append(data)

    def text(self) -> str:
        self._flush()
        out: list[str] = []
        for line in self.lines:
            if not line.strip("> ") and out and not out[-1].strip("> "):
                continue  # one blank line is enough
            out.append(line.rstrip())
        return "\n".join(out).strip("\n")


def _html_to_text(html: str) -> str:
    parser = _HTMLText()
    try:
        parser.feed(html)
        parser.close()
    except Exception:
        pass
    return parser.text()


_REPLY_PARSER_LANGUAGES = ["en", "de", "fr", "es", "it", "nl", "sv", "da", "cs"]
_reply_header_regex: re.Pattern[str] | None = None


def _library_header_regex() -> re.Pattern[str] | None:
    """mail-parser-reply's quote-header pattern (On ... wrote:, From:/Sent: blocks, ...)."""
    global _reply_header_regex
    if _reply_header_regex is None:
        try:
            from mailparser_reply.parser import EmailMessage

            _reply_header_regex = EmailMessage(text="", languages=list(_REPLY_PARSER_LANGUAGES)).HEADER_REGEX
        except Exception as exc:
            log.debug("mail-parser-reply unavailable: %r", exc)
            return None
    return _reply_header_regex


_QUOTE = re.compile(r"^[ \t]*>")
_ATTRIBUTION_VERB = re.compile(
    r"(?:wrote|writes|said|написал(?:\(а\))?|написала|пишет|пише|писал|schrieb(?:\s+am\s.*)?|a écrit|escribió|escreveu|"
    r"ha scritto|napisał(?:\(a\))?|nadesłał|skrev|schreef|(?:het volgende )?geschreven|kirjoitti|írta|napsal(?:\(a\))?|"
    r"yazdı|έγραψε|写道)"
    r"\s*(?:[:：]|\s-{2,}|$)",
    re.I,
)
_DATE_OR_ADDRESS = re.compile(r"@|\d{1,4}[:.\-/]\d{1,2}|\d{4}|&lt;")
_SEPARATOR = re.compile(
    r"^[ \t>]*(?:-{2,}|_{2,}|={2,})\s*(?:original message|original|forwarded message|message d'origine|"
    r"ursprüngliche nachricht|weitergeleitete nachricht|mensaje original|mensaje reenviado|messaggio originale|"
    r"oorspronkelijk bericht|doorgestuurd bericht|originalmeddelande|oprindelig meddelelse|wiadomość oryginalna|"
    r"исходное сообщение|пересылаемое сообщение|пересланное сообщение|оригинальное сообщение)\s*(?:-{2,}|_{2,}|={2,})?\s*$"
    r"|^[ \t>]*begin forwarded message:?\s*$|^[ \t>]*начало переадресованного сообщения:?\s*$",
    re.I | re.M,
)
_FIELD = (
    r"from|sent|to|cc|subject|date|reply-to|von|gesendet|an|betreff|datum|de|envoyé|à|objet|"
    r"para|enviado|asunto|fecha|da|inviato|a|oggetto|data|van|verzonden|aan|onderwerp|från|skickat|till|ämne|"
    r"fra|sendt|til|emne|od|komu|předmět|od|wysłano|do|temat|"
    r"от|отправлено|кому|копия|тема|дата|отправитель|получатель"
)
_HEADER_LINE = re.compile(r"^[ \t>]*\*{0,2}(?:" + _FIELD + r")\*{0,2}[ \t]*:", re.I)
_FROM_LINE = re.compile(r"^[ \t>]*\*{0,2}(?:from|von|de|da|van|från|fra|od|от|отправитель)\*{0,2}[ \t]*:", re.I)
_SIGNATURE_DELIMITER = re.compile(r"^(?:-- ?|--|__)$")
_MOBILE_SIGNATURE = re.compile(
    r"^[ \t(<]*(?:sent (?:from|via|with|using) |get outlook for|envoyé (?:de|depuis) |von meinem |gesendet von |"
    r"enviado (?:desde|de) |inviato da |verzonden (?:met|vanaf) |skickat från |sendt fra |"
    r"отправлено (?:с|из) |отправлено с моего|diese nachricht wurde von meinem)",
    re.I,
)
_RULE_LINE = re.compile(r"^[ \t>]*[-_=*~]{3,}[ \t]*$")


def _visible_reply(body: str) -> str:
    """The reply the person wrote, without quoted history and signature."""
    return _split_reply(body)[0]


def _split_reply(body: str) -> tuple[str, bool]:
    """The visible reply, and whether the text quotes an earlier message."""
    if not body:
        return "", False
    text = body.replace("\r\n", "\n").replace("\r", "\n")[:MAX_REPLY_CHARS]
    lines = text.split("\n")
    quotes = any(_QUOTE.match(line) for line in lines)
    cut = _quote_header_line(lines)
    if cut is not None and cut == _first_content_line(lines):
        # Bottom-posting: the quote comes first, the reply after it.
        rest = _skip_leading_quote(lines, cut)
        if rest is not None:
            lines = lines[rest:]
            cut = _quote_header_line(lines)
    quotes = quotes or cut is not None
    if cut is not None:
        lines = lines[:cut]
    lines = _cut_signature(lines)
    lines = _drop_trailing_quote(lines)
    while lines and (not lines[-1].strip() or _RULE_LINE.match(lines[-1])):
        lines.pop()
    while lines and not lines[0].strip():
        lines.pop(0)
    return "\n".join(line.rstrip() for line in lines).strip(), quotes


def _first_content_line(lines: list[str]) -> int:
    for i, line in enumerate(lines):
        if line.strip():
            return i
    return 0


def _skip_leading_quote(lines: list[str], header: int) -> int | None:
    """After a leading quote header and its quoted block, where the reply begins (or None)."""
    i = header + 1
    # the header may be wrapped over a few lines ("On ..., X <x@y>\nwrote:")
    while i < len(lines) and i <= header + 2 and lines[i].strip() and not _QUOTE.match(lines[i]) and (
        _ATTRIBUTION_VERB.search(lines[i]) or lines[i].rstrip().endswith(":")
    ):
        i += 1
    saw_quote = False
    while i < len(lines) and (not lines[i].strip() or _QUOTE.match(lines[i])):
        saw_quote = saw_quote or bool(_QUOTE.match(lines[i]))
        i += 1
    if i >= len(lines):
        return None
    if not saw_quote and _SEPARATOR.match(lines[header]):
        return None  # a forwarded message: nothing written above it
    return i


def _quote_header_line(lines: list[str]) -> int | None:
    """Index of the first line that starts quoted history, or None."""
    best: int | None = None
    regex = _library_header_regex()
    if regex is not None:
        stripped = "\n".join(line.strip()[:300] for line in lines)
        for match in regex.finditer(stripped):
            start = match.start()
            while start < len(stripped) and stripped[start] == "\n":
                start += 1
            index = stripped.count("\n", 0, start)
            if index < len(lines) and lines[index].strip() and not _QUOTE.match(lines[index]):
                best = index
                break
    for i, line in enumerate(lines):
        if best is not None and i >= best:
            break
        if _QUOTE.match(line):
            continue
        if _SEPARATOR.match(line):
            best = i
            break
        if _FROM_LINE.match(line) and _header_block(lines, i):
            best = i
            break
        if _HEADER_LINE.match(line) and _header_block(lines, i) and _header_block_has_from(lines, i):
            best = i
            break
        attribution = _attribution_start(lines, i)
        if attribution is not None:
            best = attribution
            break
    return best


def _header_block(lines: list[str], i: int) -> bool:
    """At least two header-like lines ("From:", "Sent:", "От:", ...) among the next six."""
    return sum(1 for line in lines[i: i + 6] if _HEADER_LINE.match(line)) >= 2


def _header_block_has_from(lines: list[str], i: int) -> bool:
    return any(_FROM_LINE.match(line) for line in lines[i: i + 6])


def _attribution_start(lines: list[str], i: int) -> int | None:
    """An "On <date>, <name> wrote:" line (possibly wrapped over up to three lines)."""
    if not lines[i].strip() or _QUOTE.match(lines[i]):
        return None
    for span in (1, 2, 3):
        if i + span > len(lines):
            return None
        chunk = [lines[j].strip() for j in range(i, i + span)]
        if any(not c for c in chunk) or any(_QUOTE.match(lines[j]) for j in range(i, i + span)):
            return None
        joined = " ".join(chunk)
        if len(joined) > 400:
            return None
        if not _DATE_OR_ADDRESS.search(joined):
            continue
        matched = (_ATTRIBUTION_VERB.search(chunk[-1]) and _verb_at_end(joined)) or (
            _followed_by_quote(lines, i + span)
            and "@" in joined
            and (joined.endswith(":") or re.search(r"\d{1,2}[:.]\d{2}|\d{4}", joined))
        )
        if matched:
            if span > 1 and not _DATE_OR_ADDRESS.search(chunk[0]) and _attribution_start(lines, i + 1) is not None:
                return None  # it starts on the next line; this one is the reply's last sentence
            return i
    return None


def _verb_at_end(joined: str) -> bool:
    match = None
    for match in _ATTRIBUTION_VERB.finditer(joined):
        pass
    return match is not None and not joined[match.end():].strip(" -:：")


def _followed_by_quote(lines: list[str], j: int) -> bool:
    while j < len(lines) and not lines[j].strip():
        j += 1
    return j < len(lines) and bool(_QUOTE.match(lines[j]) or lines[j].lstrip().startswith("|"))


def _cut_signature(lines: list[str]) -> list[str]:
    for i, line in enumerate(lines):
        if i == 0:
            continue
        if _SIGNATURE_DELIMITER.match(line.rstrip()) or _SIGNATURE_DELIMITER.match(line.strip()):
            return lines[:i]
        if _MOBILE_SIGNATURE.match(line):
            return lines[:i]
    return lines


def _drop_trailing_quote(lines: list[str]) -> list[str]:
    """Quoted lines at the end (with nothing written after them) are history."""
    end = len(lines)
    while end > 0 and not lines[end - 1].strip():
        end -= 1
    start = end
    while start > 0 and (not lines[start - 1].strip() or _QUOTE.match(lines[start - 1])):
        start -= 1
    if start < end and any(_QUOTE.match(line) for line in lines[start:end]):
        return lines[:start]
    return lines
