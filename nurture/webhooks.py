"""POST notifications to chat and to other systems: Slack-compatible and signed generic JSON webhooks.

HTTP goes through ``httpx``: explicit timeouts on every request by default,
no hidden retries (RQ owns retrying, with backoff), and a well-kept, typed API.

The generic webhook is signed the way Stripe and GitHub sign theirs, so
receivers can reuse what they know::

    X-Nurture-Timestamp: 1767258000
    X-Nurture-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>." + raw body, keyed with NURTURE_WEBHOOK_SECRET>
    X-Nurture-Delivery: <notification id>

The timestamp is inside the signed text, so a captured request cannot be
replayed later: ``verify_signature`` refuses one older than five minutes.
``X-Nurture-Delivery`` lets a receiver drop a retried delivery it already has.

The Slack message is worded in the notice's ``language`` (the rep's), with the
email's subject as its title (``rep_mail``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import httpx

from .errors import NurtureError
from .rep_mail import event_kind, mail_language, subject_for

TIMEOUT_SECONDS = 10.0
REPLAY_WINDOW_SECONDS = 300
SIGNATURE_HEADER = "X-Nurture-Signature"
TIMESTAMP_HEADER = "X-Nurture-Timestamp"
DELIVERY_HEADER = "X-Nurture-Delivery"
SLACK_WORDS = {
    "en": {"no_why": "no breakdown yet", "machine": "machine", "no_events": "no events yet", "stage": "Stage",
           "probability": "Probability", "email": "Email", "rep": "Rep", "unassigned": "unassigned",
           "last_events": "Last events", "open": "Open the lead"},
    "ru": {"no_why": "разбивки пока нет", "machine": "автоматически", "no_events": "событий пока нет", "stage": "Этап",
           "probability": "Вероятность сделки", "email": "Email", "rep": "Менеджер", "unassigned": "не назначен",
           "last_events": "Последние события", "open": "Открыть карточку лида"},
}


class WebhookError(NurtureError):
    """A delivery failed; ``permanent`` when sending it again cannot help (e.g. 404, 400)."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The value of ``X-Nurture-Signature`` for this body sent at ``timestamp`` (Unix seconds)."""
    digest = hmac.new(secret.encode("utf-8"), str(timestamp).encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def verify_signature(secret: str, timestamp: str, body: bytes, given: str, now: float | None = None) -> bool:
    """What a receiver checks: the signature matches and the request is no older than the replay window."""
    try:
        sent_at = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - sent_at) > REPLAY_WINDOW_SECONDS:
        return False
    return hmac.compare_digest(signature(secret, sent_at, body), given or "")


def encode(payload: dict) -> bytes:
    """The exact bytes sent (and signed): compact UTF-8 JSON, Cyrillic kept as is."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> str:
    """POST ``body`` as JSON; return a short description of the answer or raise ``WebhookError``."""
    try:
        response = httpx.post(url, content=body, timeout=TIMEOUT_SECONDS,
                              headers={"Content-Type": "application/json; charset=utf-8", **(headers or {})})
    except httpx.HTTPError as exc:
        raise WebhookError(f"POST {_safe(url)}: {type(exc).__name__}: {exc}") from None
    answer = f"{response.status_code} {response.text[:200]}".strip()
    if response.is_success:
        return answer
    # 408 timeout, 429 rate limit and 5xx are worth another try; any other 4xx will answer the same again
    permanent = 400 <= response.status_code < 500 and response.status_code not in (408, 425, 429)
    raise WebhookError(f"POST {_safe(url)}: {answer}", permanent=permanent)


def post_signed(url: str, secret: str, payload: dict, delivery_id: str) -> str:
    """POST the generic JSON webhook with its signature and timestamp headers.

    The timestamp is the wall clock's, not nurture's (possibly simulated) clock:
    it is about this HTTP request, which the receiver checks against its own time.
    """
    body = encode(payload)
    timestamp = int(time.time())
    return post(url, body, {SIGNATURE_HEADER: signature(secret, timestamp, body), TIMESTAMP_HEADER: str(timestamp),
                            DELIVERY_HEADER: delivery_id})


def _safe(url: str) -> str:
    """The URL without its path: Slack webhook paths are secrets and must not land in logs or the database."""
    parts = httpx.URL(url)
    return f"{parts.scheme}://{parts.host}{':' + str(parts.port) if parts.port else ''}/…"


def slack_escape(text: str) -> str:
    """Slack's three control characters: a lead named ``<!channel>`` must not ping everyone."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(payload: dict) -> dict:
    """A warm-up notice as a Slack incoming-webhook body: ``text`` (the fallback) plus Block Kit blocks."""
    language = mail_language(payload.get("language"))
    words = SLACK_WORDS[language]
    lead = payload["lead"]
    percent = f"{lead['probability'] * 100:.0f}%"
    title = subject_for("warm_up", payload, language)
    why = "\n".join(f"• {slack_escape(line)}" for line in lead["why"]) or f"• {words['no_why']}"
    events = "\n".join(
        f"{event['at'][:16].replace('T', ' ')} {event_kind(event['kind'], language)}"
        + (f" ({words['machine']})" if event["machine"] else "")
        + (f": {slack_escape(event['subject'])}" if event["subject"] else "")
        for event in payload.get("timeline", [])[-5:]
    ) or words["no_events"]
    rep = payload.get("rep")
    return {
        "text": slack_escape(f"{title}: {payload['reason']}"),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title[:150], "emoji": True}},
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{slack_escape(payload['reason'])}*\n{why}"}},
            {"type": "section", "fields": [
                {"type": "mrkdwn", "text": f"*{words['stage']}*\n{slack_escape(lead['stage'])}"},
                {"type": "mrkdwn", "text": f"*{words['probability']}*\n{percent}"},
                {"type": "mrkdwn", "text": f"*{words['email']}*\n{slack_escape(lead['email'])}"},
                {"type": "mrkdwn",
                 "text": f"*{words['rep']}*\n{slack_escape(rep['name'] or rep['email']) if rep else words['unassigned']}"},
            ]},
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{words['last_events']}*\n{events}"}},
            {"type": "actions", "elements": [
                {"type": "button", "text": {"type": "plain_text", "text": words["open"]}, "url": lead["url"]},
            ]},
        ],
    }
