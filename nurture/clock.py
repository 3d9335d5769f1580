"""The one clock nurture reads time from.

Every time-dependent decision takes a ``Clock`` argument instead of calling
``datetime.now``. Three kinds exist, chosen by settings:

- the system clock (production);
- a fixed instant (``NURTURE_NOW`` / ``--now``), so operators and tests can run
  "as of" a moment;
- a sped-up clock (``NURTURE_CLOCK_START`` + ``NURTURE_CLOCK_SPEED`` +
  ``NURTURE_CLOCK_ANCHOR``), used by the demo: every process started with the
  same three values reads the same simulated time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone

from .errors import ConfigError


def parse_instant(text: str, what: str = "time") -> datetime:
    """An ISO-8601 instant as an aware UTC datetime; naive input is taken as UTC."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{what}: {text!r} is not an ISO-8601 time such as 2026-03-02T09:30:00+03:00") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


@dataclass(frozen=True)
class Clock:
    """Simulated or real time: ``start + (wall - anchor) * speed``, or the wall clock."""

    start: datetime | None = None
    anchor: float = 0.0
    speed: float = 1.0

    def now(self) -> datetime:
        if self.start is None:
            return datetime.now(timezone.utc)
        if self.speed == 0:
            return self.start
        from datetime import timedelta

        return self.start + timedelta(seconds=(time.time() - self.anchor) * self.speed)

    @classmethod
    def system(cls) -> "Clock":
        return cls()

    @classmethod
    def fixed(cls, instant: datetime) -> "Clock":
        return cls(start=instant, speed=0)

    @classmethod
    def sped_up(cls, start: datetime, speed: float, anchor: float | None = None) -> "Clock":
        return cls(start=start, speed=speed, anchor=time.time() if anchor is None else anchor)
