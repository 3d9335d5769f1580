"""What a template knows about a refusal: the ``refusal`` variable, in the lead's language.

A leaf module (no database). ``refusal.on_lost`` stores the facts on the
enrollment (``Enrollment.context``: the lost reason key, its labels in every
language, the date of the last conversation, the stage before lost);
``refusal_variables`` turns them into what a template reads:

- ``refusal.reason``: the reason key (``price``), "" outside a refusal sequence;
- ``refusal.reason_label``: its label in the lead's language ("Цена");
- ``refusal.last_conversation``: the day of the last conversation in the
  lead's time zone, spelt out in its language ("12 марта", "12 March");
- ``refusal.stage_before``: the stage the lead was lost from.

Every key is always present (empty outside a refusal), so a template that
uses them renders for any lead and is checked at load time like any other.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from babel.dates import format_date

SAMPLE = {"reason": "price", "reason_label": "Price", "last_conversation": "12 March", "stage_before": "proposal"}


def refusal_variables(context: dict | None, language: str, tz: ZoneInfo) -> dict:
    """The ``refusal`` template variable from an enrollment's ``context``."""
    context = context or {}
    labels = context.get("lost_reason_label") or {}
    if isinstance(labels, str):
        labels = {language: labels}
    reason = str(context.get("lost_reason") or "")
    last = context.get("last_conversation_at")
    spelt = ""
    if last:
        day = datetime.fromisoformat(last).astimezone(tz).date()
        spelt = format_date(day, "d MMMM", locale=language)
    return {
        "reason": reason,
        "reason_label": labels.get(language) or labels.get("en") or reason,
        "last_conversation": spelt,
        "stage_before": str(context.get("stage_before") or ""),
    }
