"""Schedules: parsing, range edges, ranges across midnight, days of the week, daylight-saving changes."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from test_rules_support import answer, window

from monitor.rules import RuleEngine, is_active, parse_rules, parse_span
from monitor.rules.schedule import DAYS

BERLIN = ZoneInfo("Europe/Berlin")

PARSE = [
    ("22:00-07:00", set(DAYS), "22:00", "07:00"),
    ("mon-fri 08:00-18:00", {"mon", "tue", "wed", "thu", "fri"}, "08:00", "18:00"),
    ("Sat,Sun", {"sat", "sun"}, "00:00", "24:00"),
    ("fri-mon 9:30-10:00", {"fri", "sat", "sun", "mon"}, "09:30", "10:00"),
    ("weekends 00:00-24:00", {"sat", "sun"}, "00:00", "24:00"),
    ("weekdays", {"mon", "tue", "wed", "thu", "fri"}, "00:00", "24:00"),
    ("tuesday thursday 20:00 - 21:15", {"tue", "thu"}, "20:00", "21:15"),
]


def _hhmm(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"


@pytest.mark.parametrize(("text", "days", "start", "end"), PARSE)
def test_parse(text: str, days: set[str], start: str, end: str) -> None:
    span = parse_span(text)
    assert {DAYS[d] for d in span.days} == days
    assert (_hhmm(span.start), _hhmm(span.end)) == (start, end)


BAD = [
    ("25:00-07:00", "not a time of day"),
    ("22:60-07:00", "not a time of day"),
    ("24:00-07:00", "not a time of day"),
    ("08:00-08:00", "is empty"),
    ("mon-fry 08:00-09:00", "'fry' is not a day"),
    ("22:00", "no valid HH:MM-HH:MM range"),
    ("nights", "'nights' is not a day"),
    ("", "empty schedule entry"),
    (1200, "put the range in quotes"),
    (None, "expected a string"),
]


@pytest.mark.parametrize(("value", "message"), BAD)
def test_malformed_entries_say_what_is_wrong(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_span(value)


def _at(day: int, hhmmss: str) -> datetime:
    """2026-03-02 is a Monday: day 0 = Monday."""
    h, m, s = (int(x) for x in (hhmmss + ":00")[:8].split(":"))
    return datetime(2026, 3, 2 + day, h, m, s)


EDGES = [
    ("22:00-07:00", _at(0, "21:59:59"), False),
    ("22:00-07:00", _at(0, "22:00"), True),  # start is inside
    ("22:00-07:00", _at(1, "00:00"), True),  # across midnight
    ("22:00-07:00", _at(1, "06:59:59"), True),
    ("22:00-07:00", _at(1, "07:00"), False),  # end is outside
    ("fri 22:00-06:00", _at(4, "23:00"), True),  # Friday night
    ("fri 22:00-06:00", _at(5, "05:59"), True),  # ... runs into Saturday morning
    ("fri 22:00-06:00", _at(5, "22:30"), False),  # but not Saturday night
    ("fri 22:00-06:00", _at(4, "05:00"), False),  # nor Friday morning (Thursday's night)
    ("sun 23:00-01:00", _at(0, "00:30"), True),  # Sunday's night wraps into Monday (next week day 0)
    ("mon-fri 08:00-18:00", _at(5, "09:00"), False),
    ("mon-fri 08:00-18:00", _at(4, "17:59:59"), True),
    ("00:00-24:00", _at(3, "23:59:59"), True),
    ("sat,sun", _at(6, "12:00"), True),
    ("sat,sun", _at(0, "00:00"), False),
    ("08:00-24:00", _at(2, "23:59:59"), True),
    ("08:00-24:00", _at(3, "00:00"), False),
]


@pytest.mark.parametrize(("text", "local", "active"), EDGES)
def test_range_edges(text: str, local: datetime, active: bool) -> None:
    assert parse_span(text).active(local) is active
    t = local.replace(tzinfo=timezone.utc).timestamp()
    assert is_active((parse_span(text),), t, timezone.utc) is active


def test_no_schedule_is_always_active() -> None:
    assert is_active(None, 0.0, timezone.utc) and is_active((), 1e9, timezone.utc)


def _active_local_span(spans, tz, start_utc: datetime, hours: int, step_min: int = 5) -> tuple[str, str, float]:
    """First and last active local time (HH:MM) and the active hours, sampling every step_min."""
    active = []
    for k in range(hours * 60 // step_min):
        t = (start_utc + timedelta(minutes=k * step_min)).timestamp()
        if is_active(spans, t, tz):
            active.append(t)
    first = datetime.fromtimestamp(active[0], tz).strftime("%H:%M")
    last = datetime.fromtimestamp(active[-1], tz).strftime("%H:%M")
    return first, last, (active[-1] - active[0] + step_min * 60) / 3600


DST = [
    # the night clocks go forward (2026-03-29 02:00 -> 03:00): 22:00-07:00 lasts 8 hours
    ("22:00-07:00", datetime(2026, 3, 28, 18, 0, tzinfo=timezone.utc), ("22:00", "06:55", 8.0)),
    # the night clocks go back (2026-10-25 03:00 -> 02:00): 22:00-07:00 lasts 10 hours
    ("22:00-07:00", datetime(2026, 10, 24, 18, 0, tzinfo=timezone.utc), ("22:00", "06:55", 10.0)),
    # 02:00-03:00 happens twice when clocks go back: active for two hours of real time
    ("02:00-03:00", datetime(2026, 10, 24, 18, 0, tzinfo=timezone.utc), ("02:00", "02:55", 2.0)),
]


@pytest.mark.parametrize(("text", "start", "expected"), DST)
def test_wall_clock_ranges_across_a_dst_change(text: str, start: datetime, expected: tuple[str, str, float]) -> None:
    assert _active_local_span((parse_span(text),), BERLIN, start, hours=16) == expected


def test_an_hour_that_does_not_exist_is_never_active() -> None:
    spans = (parse_span("02:00-03:00"),)
    night = datetime(2026, 3, 28, 22, 0, tzinfo=timezone.utc)  # 23:00 CET, Saturday
    assert not any(is_active(spans, (night + timedelta(minutes=m)).timestamp(), BERLIN) for m in range(0, 8 * 60, 5))


def test_engine_turns_on_and_off_at_local_times_across_dst() -> None:
    rules = parse_rules("""
rules:
  - id: night
    ask: Does this recording contain snoring? Answer yes or no.
    schedule: "22:00-07:00"
    hold: 2h
""")
    engine = RuleEngine(rules, tz=BERLIN)
    start = datetime(2026, 3, 28, 18, 0, tzinfo=timezone.utc)
    events = []
    for k in range(16 * 12):  # every 5 minutes for 16 hours, always "yes"
        t = (start + timedelta(minutes=5 * k)).timestamp()
        win = window(t, k)
        events += [(datetime.fromtimestamp(e.ts, BERLIN).strftime("%d %H:%M %Z"), e.kind)
                   for e in engine.update(win, answer(engine, win, 0.99))]
    assert events == [("28 22:00 CET", "on"), ("29 07:00 CEST", "off")]


def test_default_zone_is_the_machine_local_time(monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(time, "tzset"):
        pytest.skip("time.tzset is POSIX-only")
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        spans = (parse_span("09:00-10:00"),)
        nine_ny = datetime(2026, 7, 1, 9, 30, tzinfo=ZoneInfo("America/New_York")).timestamp()
        assert is_active(spans, nine_ny, None)
        assert not is_active(spans, nine_ny, timezone.utc)  # 13:30 UTC
    finally:
        monkeypatch.undo()
        time.tzset()
