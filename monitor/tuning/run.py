"""What one replay heard and decided: the record `replay_file` fills, and plots and `eval` read.

Kept apart from `monitor.tuning.replay`, which drives the pipeline, so that what draws or
scores a replay needs only the record, never the code that made it.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from monitor.engine.api import Result
from monitor.events import Event
from monitor.windows import Window

_NO_AUDIO = np.zeros(0, dtype=np.float32)
_NO_FLAGS = np.zeros(0, dtype=bool)


def light(window: Window) -> Window:
    """The window without its audio and per-frame speech flags (all the rule engine needs to decide again)."""
    return dataclasses.replace(window, audio=_NO_AUDIO, speech=_NO_FLAGS)


@dataclass
class ReplayRun:
    """What one replay heard and decided."""

    path: Path
    duration: float  # seconds of audio in the file
    results: list[Result] = field(default_factory=list)  # in window order, windows without audio
    events: list[tuple[Event, Window]] = field(default_factory=list)  # each with the window that decided it
    wall_s: float = 0.0  # from the first window to the last result

    @property
    def windows(self) -> int:
        return len(self.results)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.results if r.error is not None)

    @property
    def t0(self) -> float:
        """Wall-clock time the pipeline gave the file's first sample (offsets are relative to it)."""
        if not self.results:
            return 0.0
        w = self.results[0].window
        return w.t_start - w.start / w.sample_rate

    def offset(self, ts: float) -> float:
        """Seconds from the start of the file of a wall-clock time stamped by the pipeline."""
        return round(ts - self.t0, 3)

    @property
    def speed(self) -> float:
        """Seconds of audio replayed per second of wall time."""
        return self.duration / self.wall_s if self.wall_s > 0 else float("inf")

    def event_counts(self) -> dict[str, Counter[str]]:
        """rule id -> Counter of event kinds."""
        out: dict[str, Counter[str]] = {}
        for event, _window in self.events:
            out.setdefault(event.rule_id, Counter())[event.kind] += 1
        return out
