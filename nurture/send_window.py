"""Business-time math: when inside a day window may a step be sent.

Pure functions, no database. A step's delay is a window of days after the
enrollment started ("day 2-3" is ``day_min=2, day_max=3``), counted on the
lead's local calendar. The moment chosen is spread uniformly over the business
time inside that window (send days, send hours, in the lead's IANA time zone,
DST-correct because each local day is converted on its own), by a seed that is
fixed per enrollment and step: 10,000 leads enrolled together do not fire in
the same minute, and re-computing gives the same answer. If the window holds no
business time (a weekend, or the moment is already past), the first business
day after it is used, spread the same way.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_DAY = 3650  # ten years: a larger window is a typo


@dataclass(frozen=True)
class SendWindow:
    """Send days (0 = Monday) and the local hours [start, end) of each."""

    days: frozenset[int]
    start: time
    end: time

    @classmethod
    def parse(cls, days: str, start: str, end: str) -> "SendWindow":
        """From ``"mon,tue,wed"`` and ``"09:00"``/``"18:00"``; ValueError says what is wrong."""
        names = [d.strip().lower() for d in days.split(",") if d.strip()]
        unknown = [d for d in names if d not in DAY_NAMES]
        if unknown or not names:
            raise ValueError(f"send days {days!r}: use names from {', '.join(DAY_NAMES)}")
        try:
            start_t, end_t = time.fromisoformat(start), time.fromisoformat(end)
        except ValueError:
            raise ValueError(f"send hours {start!r}-{end!r}: use HH:MM such as 09:00") from None
        if start_t >= end_t:
            raise ValueError(f"send hours {start}-{end}: the start must be before the end")
        return cls(frozenset(DAY_NAMES.index(d) for d in names), start_t, end_t)


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; ValueError names it when unknown."""
    try:
        return _zone(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"unknown time zone {name!r}") from None


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def seed_fraction(*parts: object) -> float:
    """A number in [0, 1) fixed by ``parts``: the same lead and step always get the same."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(timezone.utc)


@lru_cache(maxsize=4096)
def _business_time(window: SendWindow, tz: ZoneInfo, first: date, last: date) -> tuple[list[float], list[float], list[float]]:
    """Send hours of every send day from ``first`` to ``last``, as POSIX seconds.

    Returns (starts, ends, cumulative) where ``cumulative[k]`` is the business
    time before interval ``k``; cached, since leads share zones and days.
    """
    starts, ends, cumulative = [], [], [0.0]
    day = first
    while day <= last:
        if day.weekday() in window.days:
            start = datetime.combine(day, window.start, tzinfo=tz).timestamp()
            end = datetime.combine(day, window.end, tzinfo=tz).timestamp()
            if end > start:
                starts.append(start)
                ends.append(end)
                cumulative.append(cumulative[-1] + end - start)
        day += timedelta(days=1)
    return starts, ends, cumulative


def pick_between(window: SendWindow, tz: ZoneInfo, lo: float, hi: float, fraction: float) -> float | None:
    """The moment ``fraction`` of the way through the business time in [lo, hi), or None."""
    first = datetime.fromtimestamp(lo, tz).date()
    last = datetime.fromtimestamp(hi, tz).date()
    starts, ends, cumulative = _business_time(window, tz, first, last)
    i = bisect_right(ends, lo)  # first interval ending after lo
    j = bisect_left(starts, hi)  # first interval starting at or after hi
    if i >= j:
        return None
    head_cut = max(0.0, lo - starts[i])
    tail_cut = max(0.0, ends[j - 1] - hi)
    total = cumulative[j] - cumulative[i] - head_cut - tail_cut
    if total <= 0:
        return None
    target = cumulative[i] + head_cut + fraction * total
    k = min(bisect_right(cumulative, target, i, j + 1) - 1, j - 1)
    return starts[k] + (target - cumulative[k])


def pick_send_time(
    window: SendWindow,
    tz: ZoneInfo,
    origin: datetime,
    day_min: int,
    day_max: int,
    earliest: datetime,
    fraction: float,
) -> datetime:
    """The UTC moment to send a step whose window is days ``day_min..day_max`` after ``origin``.

    Never before ``earliest`` (now, when computed late). ``fraction`` in [0, 1)
    places the moment inside the window's business time.
    """
    origin_day = origin.astimezone(tz).date()
    lo = max(earliest, local_midnight(origin_day + timedelta(days=day_min), tz)).timestamp()
    hi = local_midnight(origin_day + timedelta(days=day_max + 1), tz).timestamp()
    moment = pick_between(window, tz, lo, hi, fraction) if lo < hi else None
    if moment is None:
        # No business time left in the window: spread over the next send day after it.
        after = max(lo, hi)
        day = datetime.fromtimestamp(after, tz).date()
        for _ in range(8):
            moment = pick_between(window, tz, after, local_midnight(day + timedelta(days=1), tz).timestamp(), fraction)
            if moment is not None:
                break
            day += timedelta(days=1)
            after = local_midnight(day, tz).timestamp()
    return datetime.fromtimestamp(moment, timezone.utc)


def inside(window: SendWindow, tz: ZoneInfo, moment: datetime) -> bool:
    """Whether ``moment`` falls in the send hours of a send day in ``tz``."""
    local = moment.astimezone(tz)
    return local.weekday() in window.days and window.start <= local.time() < window.end
