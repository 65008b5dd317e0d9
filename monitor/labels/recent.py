"""The alerts a label may still name, kept across restarts: a bounded journal under state_dir.

A phone notification outlives the daemon that sent it: "false alarm" pressed after a restart, an
upgrade or a crash must still find the alert's clip, score and question. Each ON event of a
yes/no rule is appended as one JSON line to `state_dir/recent-alerts.jsonl` (flushed, not fsynced:
losing the last line in a power cut loses one alert's label, never the file); the newest
`limit` are read back at start. When the file holds twice that, it is rewritten with the newest
`limit` only (written aside and renamed). A line that cannot be read (cut short by a crash) is
skipped with one warning; a file that cannot be written (full disk, read-only) is said once, the
alerts are still remembered in memory, and the next alert tries the file again.

One owner: the daemon's main thread (the labeller).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

FILE = "recent-alerts.jsonl"
LIMIT = 500  # alerts remembered (older ones: "not known")


@dataclass(frozen=True)
class Heard:
    """What is kept of one alert, to label it later."""

    event: str
    room: str
    rule: str
    time: float
    clip: str | None
    score: float | None  # what the rule compares with its threshold (score or lift)
    question: str | None
    window_s: float  # the window's length
    window_at: float | None = None  # where the window starts in the clip, seconds (None: it ends the clip)


_TEXT, _NUMBER = (str,), (int, float)
_TYPES = {"event": _TEXT, "room": _TEXT, "rule": _TEXT, "time": _NUMBER, "clip": _TEXT + (type(None),),
          "score": _NUMBER + (type(None),), "question": _TEXT + (type(None),), "window_s": _NUMBER,
          "window_at": _NUMBER + (type(None),)}  # what a line's fields may hold: one entry per field of Heard
assert set(_TYPES) == {f.name for f in fields(Heard)}


def _heard(data: object) -> Heard:
    """One line's alert; ValueError when it is not one (hand-edited, or from a newer version gone back)."""
    if not isinstance(data, dict):
        raise ValueError("not an object")
    known = {k: v for k, v in data.items() if k in _TYPES}
    for name, value in known.items():
        if not isinstance(value, _TYPES[name]) or isinstance(value, bool):
            raise ValueError(f"{name} is {type(value).__name__}")
    return Heard(**known)


class RecentAlerts:
    """The newest `limit` alerts by event id, in memory and in `folder/recent-alerts.jsonl`."""

    def __init__(self, folder: Path, limit: int = LIMIT):
        self.path = Path(folder) / FILE
        self.limit = limit
        self._alerts: collections.OrderedDict[str, Heard] = collections.OrderedDict()
        self._lines = 0  # lines in the file (kept or dropped), to know when to rewrite it
        self._file: IO[str] | None = None
        self._failed = False
        self._load()

    def __len__(self) -> int:
        return len(self._alerts)

    def get(self, event: str) -> Heard | None:
        return self._alerts.get(event)

    def add(self, heard: Heard) -> None:
        self._alerts[heard.event] = heard
        self._alerts.move_to_end(heard.event)
        while len(self._alerts) > self.limit:
            self._alerts.popitem(last=False)
        if self._lines + 1 > 2 * self.limit:
            self._rewrite()
        else:
            self._append(heard)

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    # ------------------------------------------------------------------ the file

    def _load(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("labels: cannot read %s (%s); alerts from before this start cannot be labelled", self.path, exc)
            return
        bad = 0
        for line in text.splitlines():
            self._lines += 1
            try:
                heard = _heard(json.loads(line))
            except (ValueError, TypeError):
                bad += 1
                continue
            self._alerts[heard.event] = heard
            self._alerts.move_to_end(heard.event)
        while len(self._alerts) > self.limit:
            self._alerts.popitem(last=False)
        if bad:
            log.warning("labels: skipped %d unreadable line(s) of %s (cut short by a crash, or edited); the other %d alerts "
                        "can still be labelled", bad, self.path, len(self._alerts))

    def _append(self, heard: Heard) -> None:
        try:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open, closed by close()
            self._file.write(json.dumps(asdict(heard), ensure_ascii=False) + "\n")
            self._file.flush()
            self._lines += 1
        except OSError as exc:
            self._give_up(exc)
        else:
            self._written()

    def _rewrite(self) -> None:
        """The newest `limit` alerts only, written aside and renamed into place."""
        self.close()
        partial = self.path.with_name(self.path.name + ".part")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(partial, "w", encoding="utf-8") as out:
                for heard in self._alerts.values():
                    out.write(json.dumps(asdict(heard), ensure_ascii=False) + "\n")
            os.replace(partial, self.path)
            self._lines = len(self._alerts)
        except OSError as exc:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            self._give_up(exc)
        else:
            self._written()

    def _give_up(self, exc: OSError) -> None:
        """Said once; the next alert tries again (the disk may have room by then)."""
        self.close()
        if not self._failed:
            log.error("labels: cannot write %s (%s); the alerts until it can be written again can be labelled until "
                      "the daemon stops, not after a restart: check that state_dir is writable and not full",
                      self.path, exc.strerror or exc)
        self._failed = True

    def _written(self) -> None:
        if self._failed:
            log.info("labels: %s is written again", self.path)
        self._failed = False
