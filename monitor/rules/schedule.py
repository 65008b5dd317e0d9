"""When a rule is active: time-of-day ranges in local wall-clock time, optionally on some days.

A schedule entry is one short string, the way people write opening hours:

    "22:00-07:00"            every day, across midnight
    "mon-fri 08:00-18:00"    weekdays only
    "sat,sun"                whole days
    "weekends 09:00-12:00"

A range that crosses midnight belongs to the day it starts on ("fri 22:00-06:00" runs from
Friday 22:00 to Saturday 06:00). Ranges are half-open: 22:00 is inside "22:00-07:00", 07:00 is
not. Times are compared on the wall clock of the given zone, so a range keeps meaning the same
local hours across a daylight-saving change (on the short night it simply lasts an hour less).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, PlainValidator

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL = {name: i for i, name in enumerate(("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"))}
_GROUPS = {"daily": range(7), "weekdays": range(5), "weekends": range(5, 7), "weekend": range(5, 7)}
_RANGE = re.compile(r"(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_DAY_SPAN = 24 * 3600
_EXAMPLE = 'write it like "22:00-07:00", "mon-fri 08:00-18:00" or "sat,sun"'


def _day(text: str) -> int:
    if text in DAYS:
        return DAYS.index(text)
    if text in _FULL:
        return _FULL[text]
    raise ValueError(f"{text!r} is not a day; use {', '.join(DAYS)} (or weekdays, weekends, daily)")


def _days(text: str) -> frozenset[int]:
    out: set[int] = set()
    for item in re.split(r"[\s,]+", text.strip()):
        if not item:
            continue
        if item in _GROUPS:
            out.update(_GROUPS[item])
            continue
        first, sep, last = item.partition("-")
        if not sep:
            out.add(_day(item))
            continue
        a, b = _day(first), _day(last)
        k = a
        while True:  # wraps around the week: fri-mon is fri, sat, sun, mon
            out.add(k)
            if k == b:
                break
            k = (k + 1) % 7
    return frozenset(out)


def _clock(hours: str, minutes: str, *, end: bool) -> int:
    h, m = int(hours), int(minutes)
    if m > 59 or h > 24 or (h == 24 and (m or not end)):
        limit = "24:00" if end else "23:59"
        raise ValueError(f"{hours}:{minutes} is not a time of day (00:00 to {limit})")
    return (h * 60 + m) * 60


@dataclass(frozen=True)
class Span:
    """One schedule entry: [start, end) seconds after local midnight on `days` (0 = Monday)."""

    days: frozenset[int]
    start: int
    end: int  # may be <= start: the range runs past midnight into the next day
    text: str

    def active(self, local: datetime) -> bool:
        """True if the wall-clock time `local` falls inside this span."""
        tod = local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6
        day = local.weekday()
        if self.start < self.end:
            return day in self.days and self.start <= tod < self.end
        return (day in self.days and tod >= self.start) or ((day - 1) % 7 in self.days and tod < self.end)

    def __str__(self) -> str:
        return self.text


def parse_span(value: Any) -> Span:
    """Parse one schedule entry; ValueError says what is wrong and how to write it."""
    if isinstance(value, Span):
        return value
    if isinstance(value, bool) or not isinstance(value, str):
        if isinstance(value, int):  # YAML 1.1 reads an unquoted 20:00 as the number 1200
            raise ValueError(f"got the number {value}: put the range in quotes, {_EXAMPLE}")
        raise ValueError(f"expected a string, {_EXAMPLE}")
    text = " ".join(value.lower().split())
    if not text:
        raise ValueError(f"empty schedule entry; {_EXAMPLE}")
    m = _RANGE.search(text)
    if m:
        day_text = text[: m.start()].strip()
        start = _clock(m.group(1), m.group(2), end=False)
        end = _clock(m.group(3), m.group(4), end=True)
        if start == end:
            raise ValueError(f"{value!r} is empty (it starts when it ends); for a whole day write 00:00-24:00")
    else:
        if ":" in text:
            raise ValueError(f"{value!r} has no valid HH:MM-HH:MM range; {_EXAMPLE}")
        day_text, start, end = text, 0, _DAY_SPAN
    days = _days(day_text) if day_text else frozenset(range(7))
    if not days:
        raise ValueError(f"{value!r} names no day; {_EXAMPLE}")
    return Span(days, start, end, text)


def _as_list(value: Any) -> Any:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and not value:
        raise ValueError("an empty schedule would never be active; remove the key to be active at all times")
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a list of time ranges, {_EXAMPLE}")
    return value


ScheduleEntry = Annotated[Span, PlainValidator(parse_span), PlainSerializer(str, when_used="json")]

Schedule = Annotated[tuple[ScheduleEntry, ...], BeforeValidator(_as_list)]
"""A rule's `schedule:`: one entry or a list of them; the rule is active when any entry is."""


def local_time(t: float, tz: tzinfo | None) -> datetime:
    """Epoch seconds -> wall-clock time in `tz` (None: the machine's local zone)."""
    return datetime.fromtimestamp(t, tz) if tz is not None else datetime.fromtimestamp(t).astimezone()


def is_active(spans: tuple[Span, ...] | None, t: float, tz: tzinfo | None) -> bool:
    """True if a rule with these spans is active at epoch time `t` (no schedule: always)."""
    if not spans:
        return True
    local = local_time(t, tz)
    return any(span.active(local) for span in spans)
