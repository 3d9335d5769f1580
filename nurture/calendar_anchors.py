"""Calendar-anchored steps: "K business days before the next quarter (or month) starts, or a date".

Pure functions, no database. A step anchored to the calendar is not timed from
the enrollment but from the lead's own calendar (its IANA time zone):

- ``quarter_start``: the next 1 January, 1 April, 1 July or 1 October, on or
  after the lead's local today;
- ``month_start``: the next first day of a month, on or after today;
- ``date``: one fixed date.

The target day is the K-th send day of the sequence's window counted back from
the anchor (K = 0: the anchor day itself, or the first send day after it). The
moment is spread over that day's send hours by the same per-lead seed as
day-window steps, and never before ``earliest`` (the previous touch plus the gap).

When the anchor is too close (the quarter starts in 3 days but K = 5), the rule is:

1. the target day is later than today: send on it;
2. the target day is today and today's send hours are not over: send today,
   in what is left of them ("send now");
3. otherwise the moment has passed: roll to the following period (the quarter
   or month after) and apply the rule again. A fixed date has no following
   period: it goes out at the lead's next business moment instead, late rather
   than never.

Business days are the sequence's send days; public holidays are not known.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Iterator
from zoneinfo import ZoneInfo

from .send_window import SendWindow, local_midnight, pick_between, pick_send_time

CALENDAR_ANCHORS = ("quarter_start", "month_start", "date")
MAX_BUSINESS_DAYS_BEFORE = 60  # about a quarter of working days: more is a typo
_MAX_ROLLS = 40  # periods tried before giving up (only reachable with a window without send days)


@dataclass(frozen=True)
class Anchor:
    """Where a step is pinned: ``kind`` is one of CALENDAR_ANCHORS; ``on`` is the date of a ``date`` anchor."""

    kind: str
    business_days_before: int = 0
    on: date | None = None

    def __post_init__(self) -> None:
        if self.kind not in CALENDAR_ANCHORS:
            raise ValueError(f"unknown anchor {self.kind!r}; use one of {', '.join(CALENDAR_ANCHORS)}")
        if (self.kind == "date") != (self.on is not None):
            raise ValueError("a date anchor needs its date, and only a date anchor has one")
        if not 0 <= self.business_days_before <= MAX_BUSINESS_DAYS_BEFORE:
            raise ValueError(f"business_days_before must be between 0 and {MAX_BUSINESS_DAYS_BEFORE}")


def _add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def anchor_days(anchor: Anchor, today: date) -> Iterator[date]:
    """The anchor dates to try, in order: the first on or after ``today``, then the following periods."""
    if anchor.kind == "date":
        yield anchor.on  # type: ignore[misc]
        return
    months = 3 if anchor.kind == "quarter_start" else 1
    first = date(today.year, (today.month - 1) // months * months + 1, 1)
    if first < today:
        first = _add_months(first, months)
    for period in range(_MAX_ROLLS):
        yield _add_months(first, period * months)


def target_day(window: SendWindow, anchor_day: date, business_days_before: int) -> date:
    """The K-th send day before ``anchor_day`` (K = 0: the anchor day or the first send day after it)."""
    day = anchor_day
    if business_days_before == 0:
        while day.weekday() not in window.days:
            day += timedelta(days=1)
        return day
    counted = 0
    while counted < business_days_before:
        day -= timedelta(days=1)
        counted += day.weekday() in window.days
    return day


def anchored_send_time(window: SendWindow, tz: ZoneInfo, anchor: Anchor, earliest: datetime, fraction: float) -> datetime:
    """The UTC moment to send an anchored step, not before ``earliest``; see the module docstring for the rule."""
    if not window.days:
        raise ValueError("the send window has no send days")
    today = earliest.astimezone(tz).date()
    for anchor_day in anchor_days(anchor, today):
        day = target_day(window, anchor_day, anchor.business_days_before)
        if day < today:
            continue
        lo = max(earliest, local_midnight(day, tz)).timestamp()
        moment = pick_between(window, tz, lo, local_midnight(day + timedelta(days=1), tz).timestamp(), fraction)
        if moment is not None:
            return datetime.fromtimestamp(moment, timezone.utc)
    # A fixed date whose moment has passed: the next business moment.
    return pick_send_time(window, tz, earliest, 0, 0, earliest, fraction)
