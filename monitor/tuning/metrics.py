"""Counting detections against labels: recall, precision, false alarms per hour, latency.

Pure functions of numbers (seconds from the start of a recording), so the definitions are
tested by hand-computed tables. For one rule on one recording, with `tol` = one window length:

- an ON event at time t (the end of the window that decided it) is *true* if a <= t <= b + tol
  for some labelled interval [a, b] of that rule, else a *false alarm*; the tolerance admits the
  windows that still hear the end of the sound;
- an interval [a, b] is *detected* if the rule is ON at some moment of [a, b + tol]: an ON span
  [on, off) with on <= b + tol and off > a (a match event, which has no span, must fall inside);
  its *latency* is max(0, on - a) for the earliest such span;
- *negative time* is the recording's duration minus the union of the [a, b + tol] ranges.

Summed over the recordings a rule is scored on: recall = detected / intervals, precision =
true ONs / all ONs, false alarms per hour = false alarms / hours of negative time, mean latency
over the detected intervals. A figure without a denominator (no intervals, no ON events, no
negative time) is None, not zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from monitor.events import Event
    from monitor.windows import Window

Span = tuple[float, float | None]  # (ON time, OFF time); OFF None = still ON at the end; (t, t) = an instant


def spans_of(changes: Sequence[tuple[str, float]]) -> list[Span]:
    """[(kind, t)] in time order -> ON spans; `match` events become instants (t, t)."""
    spans: list[Span] = []
    open_at: float | None = None
    for kind, t in changes:
        if kind == "on":
            if open_at is None:
                open_at = t
        elif kind == "off":
            if open_at is not None:
                spans.append((open_at, t))
                open_at = None
        elif kind == "match":
            spans.append((t, t))
    if open_at is not None:
        spans.append((open_at, None))
    return spans


def _covered(intervals: Sequence[tuple[float, float]], duration: float, tol: float) -> float:
    """Seconds of [0, duration] inside the union of [a, b + tol]."""
    ranges = sorted((max(0.0, a), min(duration, b + tol)) for a, b in intervals)
    total, end = 0.0, -math.inf
    for a, b in ranges:
        if b <= a:
            continue
        if a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def rule_spans(events: Sequence[tuple[Event, Window]], rule_id: str) -> list[Span]:
    """A rule's ON spans (match events: instants) in seconds from the start of the file.

    An event's time is the end of the window that decided it, taken in samples so that label
    edges compare exactly.
    """
    return spans_of([(e.kind, w.end / w.sample_rate) for e, w in events if e.rule_id == rule_id])


@dataclass
class Tally:
    """Counts for one rule at one setting, summed over recordings."""

    intervals: int = 0
    detected: int = 0
    latencies: list[float] = field(default_factory=list)
    on_events: int = 0
    true_on: int = 0
    false_alarms: int = 0
    negative_s: float = 0.0
    misses: list[dict[str, Any]] = field(default_factory=list)  # {file, start, end}
    false_at: list[dict[str, Any]] = field(default_factory=list)  # {file, at}

    def add_recording(self, spans: Sequence[Span], intervals: Sequence[tuple[float, float]], duration: float,
                      tol: float, name: str = "") -> None:
        """Count one recording: the rule's ON spans (or match instants) against its labelled intervals."""
        self.intervals += len(intervals)
        self.negative_s += max(0.0, duration - _covered(intervals, duration, tol))
        for on, _off in spans:
            self.on_events += 1
            if any(a <= on <= b + tol for a, b in intervals):
                self.true_on += 1
            else:
                self.false_alarms += 1
                self.false_at.append({"file": name, "at": round(on, 3)})
        for a, b in intervals:
            hit = None
            for on, off in spans:
                inside = (a <= on <= b + tol) if off == on else (on <= b + tol and (off is None or off > a))
                if inside:
                    hit = on if hit is None else min(hit, on)
            if hit is None:
                self.misses.append({"file": name, "start": a, "end": b})
            else:
                self.detected += 1
                self.latencies.append(max(0.0, hit - a))

    def metrics(self, details: bool = False) -> dict[str, Any]:
        """The figures of the module docstring; `details` adds the missed intervals and false alarm times."""
        hours = self.negative_s / 3600.0
        out: dict[str, Any] = {
            "intervals": self.intervals,
            "detected": self.detected,
            "recall": _ratio(self.detected, self.intervals),
            "on_events": self.on_events,
            "true_on": self.true_on,
            "false_alarms": self.false_alarms,
            "precision": _ratio(self.true_on, self.on_events),
            "negative_hours": round(hours, 6),
            "fa_per_hour": round(self.false_alarms / hours, 6) if hours > 0 else None,
            "mean_latency_s": round(sum(self.latencies) / len(self.latencies), 3) if self.latencies else None,
        }
        if details:
            out["misses"] = list(self.misses)
            out["false_alarms_at"] = list(self.false_at)
        return out


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 6) if den else None


def best_threshold(sweep: Sequence[dict[str, Any]], max_fa_per_hour: float) -> dict[str, Any] | None:
    """The sweep point with the highest recall whose false alarms per hour are within the target.

    Ties go to the fewer false alarms, then to the higher threshold (the more cautious setting).
    Points without a recall (no labelled intervals) or without a rate (no negative time) cannot
    be judged and are passed over; None when no point qualifies.
    """
    fit = [p for p in sweep if p["recall"] is not None and p["fa_per_hour"] is not None
           and p["fa_per_hour"] <= max_fa_per_hour]
    if not fit:
        return None
    return max(fit, key=lambda p: (p["recall"], -p["fa_per_hour"], p["threshold"]))
