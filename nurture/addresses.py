"""The one way nurture spells an email address for storing and comparing.

email-validator's normalised form (IDN domains in Unicode, so
``ivan@xn--e1afmkfd.xn--p1ai`` and ``ivan@пример.рф`` are the same), lower-cased.
Addresses that do not validate (say, a bounce report's odd spelling) are only
trimmed and lower-cased, so lookups still work.
"""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email


def normalise(address: str) -> str:
    address = address.strip()
    try:
        return validate_email(address, check_deliverability=False).normalized.lower()
    except EmailNotValidError:
        return address.lower()
