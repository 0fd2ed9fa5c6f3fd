"""Quiet hours: the ``mute:`` windows of a rule or a channel, and when one ends.

A window names weekdays (``days: [sat, sun]`` or ``[mon-fri]``), a time of day
(``times: "22:00-07:00"``; crossing midnight is allowed), calendar dates (``dates:
["2026-12-21/2027-01-04"]``, each a day or a ``first/last`` range, both included) and
the ``time_zone`` they are read in. Every part given must hold; a window gives at
least one. A time range that crosses midnight belongs to the day it starts on: with
``days: [fri]`` and ``times: "22:00-07:00"``, Saturday 03:00 is inside (Friday's
night), Friday 03:00 is not.
"""

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["DuringMute", "MuteWindow", "Mutes", "Window", "compile_window"]

DuringMute = Literal["hold", "drop"]

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_TIMES = re.compile(r"(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})")
#: How far ahead the end of a window is looked for: a window that does not end
#: within this many days is treated as ending then.
HORIZON_DAYS = 800


def _day_number(name: str) -> int:
    name = name.strip().lower()
    if name in DAYS:
        return DAYS.index(name)
    if name in _FULL_DAYS:
        return _FULL_DAYS.index(name)
    raise ValueError(f"unknown day {name!r} (use {', '.join(DAYS)})")


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text.strip()!r} is not a date such as 2026-12-21") from None


class MuteWindow(BaseModel):
    """One quiet-hours window as written in the rules file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    days: list[str] = Field(default_factory=list, description="mon..sun, or ranges: mon-fri")
    times: str | None = Field(None, description='"HH:MM-HH:MM", may cross midnight')
    dates: list[str] = Field(default_factory=list, description='"2026-12-21/2027-01-04"')
    time_zone: str | None = Field(None, description="IANA zone; default defaults.time_zone, UTC")

    @field_validator("days")
    @classmethod
    def _check_days(cls, value: list[str]) -> list[str]:
        for item in value:
            first, _, last = str(item).partition("-")
            _day_number(first)
            if last:
                _day_number(last)
        return value

    @field_validator("times")
    @classmethod
    def _check_times(cls, value: str | None) -> str | None:
        if value is not None:
            _minutes(value)
        return value

    @field_validator("dates")
    @classmethod
    def _check_dates(cls, value: list[str]) -> list[str]:
        for item in value:
            first, _, last = str(item).partition("/")
            start = _date(first)
            if last and _date(last) < start:
                raise ValueError(f"{item!r}: the range ends before it starts")
        return value

    @field_validator("time_zone")
    @classmethod
    def _check_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    f"unknown time zone {value!r} (an IANA name such as 'America/New_York')"
                ) from None
        return value

    @model_validator(mode="after")
    def _says_something(self) -> "MuteWindow":
        if not (self.days or self.times or self.dates):
            raise ValueError("a mute window needs at least one of days, times, dates")
        return self


def _minutes(value: str) -> tuple[int, int]:
    """``"22:00-07:00"`` as minutes since midnight, (1320, 420); ``24:00`` ends a day."""
    match = _TIMES.fullmatch(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a time range such as 22:00-07:00")
    h1, m1, h2, m2 = map(int, match.groups())
    if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2):
        raise ValueError(f"{value!r}: hours run 00-23 (24:00 may end a range), minutes 00-59")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        raise ValueError(f"{value!r}: a range must not start where it ends (00:00-24:00 is a day)")
    return start, end


@dataclass(frozen=True)
class Window:
    """A compiled window: ``active(t)`` and ``end(t)`` for unix times."""

    zone: ZoneInfo
    days: frozenset[int]
    times: tuple[int, int] | None
    dates: tuple[tuple[dt.date, dt.date], ...]

    def _day_ok(self, day: dt.date) -> bool:
        return (not self.days or day.weekday() in self.days) and (
            not self.dates or any(first <= day <= last for first, last in self.dates)
        )

    def active(self, t: float) -> bool:
        """Whether the unix time ``t`` is inside the window."""
        local = dt.datetime.fromtimestamp(t, self.zone)
        day = local.date()
        if self.times is not None:
            start, end = self.times
            minute = local.hour * 60 + local.minute + local.second / 60
            if start < end:
                if not start <= minute < end:
                    return False
            elif minute < end:
                day -= dt.timedelta(days=1)  # the early hours of the previous day's night
            elif minute < start:
                return False
        return self._day_ok(day)

    def _at(self, day: dt.date, minute: int) -> float:
        moment = dt.datetime.combine(day, dt.time(), tzinfo=self.zone)
        if minute:
            moment = dt.datetime.combine(
                day, dt.time(minute // 60 % 24, minute % 60), tzinfo=self.zone
            ) + dt.timedelta(days=minute // 1440)
        return moment.timestamp()

    def _boundaries(self, day: dt.date) -> list[float]:
        """The instants where the window may open or close, on one local day."""
        found = [self._at(day, 0)]
        if self.times is not None:
            start, end = self.times
            found.append(self._at(day, start))
            found.append(self._at(day, end))
        return found

    def end(self, t: float) -> float:
        """The first instant after ``t`` outside the window (``t`` is inside it)."""
        day = dt.datetime.fromtimestamp(t, self.zone).date() - dt.timedelta(days=1)
        for offset in range(HORIZON_DAYS):
            here = day + dt.timedelta(days=offset)
            for instant in sorted(self._boundaries(here)):
                if instant > t and not self.active(instant):
                    return instant
        return t + HORIZON_DAYS * 86400.0


def compile_window(window: MuteWindow, default_zone: str | None) -> Window:
    """A window ready to evaluate, its zone defaulting to ``default_zone`` (else UTC)."""
    days: set[int] = set()
    for item in window.days:
        first, _, last = item.partition("-")
        a = _day_number(first)
        b = _day_number(last) if last else a
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    dates = []
    for item in window.dates:
        first, _, last = item.partition("/")
        dates.append((_date(first), _date(last or first)))
    return Window(
        zone=ZoneInfo(window.time_zone or default_zone or "UTC"),
        days=frozenset(days),
        times=_minutes(window.times) if window.times else None,
        dates=tuple(dates),
    )


@dataclass
class Mutes:
    """The windows of one rule or channel and what happens during them."""

    windows: Sequence[Window] = ()
    during_mute: DuringMute = "hold"
    _memo: tuple[float, float] | None = field(default=None, repr=False, compare=False)

    def until(self, t: float) -> float | None:
        """When the quiet period around ``t`` ends (windows that touch or overlap count
        as one), or None when no window holds at ``t``."""
        memo = self._memo
        if memo is not None and memo[0] <= t < memo[1]:
            return memo[1]  # the same quiet period as last asked: it has one end
        if not any(window.active(t) for window in self.windows):
            return None
        end = t
        limit = t + HORIZON_DAYS * 86400.0  # windows that never end (every day) stop here
        while end < limit:  # hop from window to window while one of them still holds
            holding = [window for window in self.windows if window.active(end)]
            if not holding:
                break
            end = min(limit, max(window.end(end) for window in holding))
        self._memo = (t, end)
        return end
