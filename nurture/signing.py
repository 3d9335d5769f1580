"""Signed tokens for links in emails: short, URL-safe and case-insensitive.

A token is ``<id>-<24 hex digits of HMAC-SHA256(secret, purpose:id)>``: lower
case only, so it also survives in the local part of a mailto address
(``unsubscribe+TOKEN@domain``) whatever the receiving server does with case.
Tokens do not expire: an unsubscribe link must work for as long as the mail
exists. A forged, truncated or tampered token verifies to ``None``.
"""

from __future__ import annotations

import hashlib
import hmac

DIGEST_CHARS = 24


def _digest(secret: str, purpose: str, value: int) -> str:
    return hmac.new(secret.encode(), f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()[:DIGEST_CHARS]


def sign(secret: str, purpose: str, value: int) -> str:
    return f"{value}-{_digest(secret, purpose, value)}"


def verify(secret: str, purpose: str, token: str) -> int | None:
    """The signed id, or None for anything that is not a valid token for ``purpose``."""
    value, _, digest = token.strip().lower().partition("-")
    if not value.isdigit() or len(value) > 18 or len(digest) != DIGEST_CHARS:
        return None
    number = int(value)
    return number if hmac.compare_digest(digest, _digest(secret, purpose, number)) else None
