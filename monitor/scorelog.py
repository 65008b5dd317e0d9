"""Per-window scores as JSON lines: what replay writes and what the daemon can record live.

One line per window: its times, level, speech ratio, and each rule's score, lift and text.
The same sink (`ScoreLogSink`) writes it for `audio-monitor replay` and for the daemon's
`scores_log`, so a recording replayed and the same audio heard live can be compared line by line.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import IO, Any

from monitor.engine.api import Result
from monitor.events import Event
from monitor.sinks import RoomState, Status

log = logging.getLogger(__name__)


def window_record(result: Result) -> dict[str, Any]:
    w = result.window
    rules: dict[str, dict[str, Any]] = {}
    for key, s in result.scores.items():
        rules[key] = {"score": round(s.score, 6), "lift": round(s.lift, 6), "baseline": round(s.baseline, 6)}
    for t in result.texts:
        entry = rules.setdefault(t.key, {})
        entry.setdefault("texts", []).append({"text": t.text, "start": round(t.start / w.sample_rate, 3),
                                              "end": round(t.end / w.sample_rate, 3)})
    record: dict[str, Any] = {
        "seq": w.seq,
        "start": round(w.offset, 3),  # seconds from the start of the source
        "end": round(w.end / w.sample_rate, 3),
        "t_start": round(w.t_start, 3),
        "t_end": round(w.t_end, 3),
        "dbfs": round(w.dbfs, 2),
        "speech": round(w.speech_ratio, 3),
        "rules": rules,
    }
    if result.source:
        record["source"] = result.source
    if result.error is not None:
        record["error"] = result.error
    return record


class ScoreLog:
    """Appends one JSON line per window to a file (opened lazily, flushed per line)."""

    def __init__(self, path: Path, mode: str = "a"):
        self.path = Path(path)
        self.mode = mode
        self._fh: IO[str] | None = None
        self._failed = False

    def write(self, result: Result) -> None:
        if self._failed:
            return
        try:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = self.path.open(self.mode, encoding="utf-8")
            self._fh.write(json.dumps(window_record(result), ensure_ascii=False) + "\n")
            self._fh.flush()
        except OSError as exc:
            self._failed = True
            log.error("scores_log: cannot write %s (%s); per-window scores are no longer recorded", self.path, exc.strerror)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class ScoreLogSink:
    """Every window's level, speech ratio and scores as JSON lines; the rest is not its business."""

    def __init__(self, scorelog: ScoreLog):
        self.scorelog = scorelog

    def window(self, room: str, result: Result) -> None:
        self.scorelog.write(result)

    def event(self, room: str, event: Event) -> None:
        pass

    def room_state(self, room: str, state: RoomState) -> None:
        pass

    def status(self, status: Status) -> None:
        pass
