"""Evidence clips: the audio that turned a rule ON, kept as WAV files for a person to check.

A clip is the window that decided, `pre_roll` seconds before it and `post_roll` after it: the
cry after the thud. The alarm does not wait for the post-roll: the clip is written at once
(window and pre-roll) and completed, rewritten aside and renamed, once the room has heard the
post-roll (`complete`, each turn of the main loop). A post-roll that a mute began in, or that
the ring no longer holds, is left out: the clip stays as first written.

Retention by age and total size, oldest first, never deleting a clip that an event still
waiting in the MQTT outbox refers to (a hub may fetch it once the event arrives). Saving,
completing and pruning all run on the daemon's control thread, so they never race each other.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from monitor.audio.ringbuffer import Overwritten, RingBuffer
from monitor.config import ClipSettings
from monitor.events import Event

log = logging.getLogger(__name__)

PARTIAL = ".part"  # a clip being written; renamed into place when complete
NOTE = ".json"  # beside a clip: what is known of it (its incident: the rooms, the description); goes with it
KNOWN = 1000  # clips whose window's place in them is remembered (for labels)
PENDING = 100  # clips waiting for their post-roll, at most


@dataclass(frozen=True)
class _Pending:
    """A clip waiting for its post-roll: samples [first, end) of the ring are in it, [first, until) will be."""

    path: Path
    first: int
    end: int
    until: int


class ClipStore:
    """Writes and prunes clips in one folder (owned by the daemon's control thread)."""

    def __init__(self, folder: Path, settings: ClipSettings, clock: Callable[[], float] = time.time):
        self.folder = Path(folder)
        self.settings = settings
        self.clock = clock
        self.saved = 0
        self.deleted = 0
        self.completed = 0
        self._warned = False
        self._pending: list[_Pending] = []
        self._windows: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def wants(self, event: Event, rule_kind: str) -> bool:
        """Whether this event gets a clip: ON events, and text/match events only when allowed.

        Speech is the most private thing a microphone hears, so transcripts get no audio unless
        `clips.text_rules` says so.
        """
        if not self.settings.enabled:
            return False
        if event.kind == "on":
            return True
        return event.kind in ("text", "match") and self.settings.text_rules and rule_kind in ("text", "match")

    def save(self, event: Event, ring: RingBuffer, start: int, end: int) -> Path | None:
        """Save samples [start - pre_roll, end) of the ring; None (logged) when it cannot.

        The pre-roll is cut short where the ring no longer holds it (or before the first sample),
        and where a mute ended: audio from while it was muted is never saved. The post-roll is
        added by `complete` once heard.
        """
        first = max(ring.oldest, start - int(round(self.settings.pre_roll * ring.sample_rate)), 0)
        if ring.private_end <= start:
            first = max(first, ring.private_end)
        try:
            audio = ring.read(first, min(end, ring.written))
        except (Overwritten, LookupError) as exc:
            log.warning("clip for %s not saved: the audio is no longer in memory (%s)", event.rule_id, exc)
            return None
        stamp = datetime.fromtimestamp(event.ts).strftime("%Y%m%d-%H%M%S")
        path = self.folder / f"{stamp}_{event.rule_id}_{event.id[:8]}.wav"
        if not self._write(path, audio, ring.sample_rate):
            return None
        self.saved += 1
        rate = ring.sample_rate
        self._windows[str(path)] = ((start - first) / rate, (end - first) / rate)
        while len(self._windows) > KNOWN:
            self._windows.popitem(last=False)
        post = int(round(self.settings.post_roll * rate))
        if post > 0:
            self._pending.append(_Pending(path, first, end, end + post))
            del self._pending[:-PENDING]  # a room that stopped hearing leaves them waiting: the oldest go
        return path

    def window_in(self, clip: str | Path) -> tuple[float, float] | None:
        """Where the window that decided lies in a clip saved since the start: (start, end) seconds from its start."""
        return self._windows.get(str(clip))

    def complete(self, ring: RingBuffer, muted: bool) -> int:
        """Add the post-roll to the clips whose post-roll the room has heard; how many were completed.

        Left as first written: a clip whose post-roll a mute began in (or that is muted now), or
        whose samples the ring no longer holds. Never raises for a clip that cannot be rewritten.
        """
        if not self._pending:
            return 0
        done = 0
        waiting = []
        for pending in self._pending:
            if muted or ring.private_end > pending.end:
                continue  # nothing heard while muted is saved: the clip stays as first written
            if ring.written < pending.until:
                waiting.append(pending)
                continue
            if not pending.path.is_file():
                continue  # pruned meanwhile: it stays gone
            try:
                audio = ring.read(pending.first, pending.until)
            except (Overwritten, LookupError) as exc:
                log.debug("clips: %s kept without its post-roll (%s)", pending.path.name, exc)
                continue
            if self._write(pending.path, audio, ring.sample_rate):
                done += 1
        self._pending = waiting
        self.completed += done
        return done

    def _write(self, path: Path, audio: np.ndarray, rate: int) -> bool:
        """Write a clip aside and rename it into place: a hub never fetches, and retention never counts, half a file."""
        partial = path.with_name(path.name + PARTIAL)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            sf.write(partial, np.clip(audio, -1.0, 1.0), rate, subtype="PCM_16", format="WAV")
            os.replace(partial, path)
        except (OSError, sf.LibsndfileError) as exc:
            if not self._warned:
                log.error("clips: cannot write %s (%s); check that state_dir is writable and not full", path, exc)
                self._warned = True
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            return False
        return True

    def save_note(self, clip: str | Path, note: dict[str, Any]) -> None:
        """Keep `note` beside a clip of this folder (`NAME.json`), replacing the last one; logged when it cannot."""
        path = Path(clip).with_suffix(NOTE)
        if path.parent.resolve() != self.folder.resolve() or not Path(clip).is_file():
            return  # not one of this folder's clips, or deleted already
        partial = path.with_name(path.name + PARTIAL)
        try:
            partial.write_text(json.dumps(note, ensure_ascii=False, indent=1), encoding="utf-8")
            os.replace(partial, path)
        except OSError as exc:
            log.warning("clips: cannot write %s (%s); check that state_dir is writable and not full", path, exc)
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)

    def prune(self, keep: Iterable[str] = ()) -> list[Path]:
        """Delete clips past max_age, then the oldest until under max_total_mb; never those in `keep`.

        `keep` holds the clip paths of events not yet delivered (`Publisher.pending_clips()`).
        A protected clip still counts towards the size, so younger unprotected ones go instead.
        """
        if not self.folder.is_dir():
            return []
        protected = {_key(Path(p)) for p in keep}
        clips = []
        for path in self.folder.iterdir():
            if path.name.endswith(PARTIAL):  # left by a crash mid-write (saving runs on this thread)
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
                continue
            if path.suffix != ".wav":
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            clips.append((st.st_mtime, path.name, path, st.st_size))
        clips.sort()  # oldest first (name breaks ties: it starts with the time)
        now = self.clock()
        total = sum(size for *_, size in clips)
        limit = self.settings.max_total_mb * 1024 * 1024
        deleted = []
        for mtime, _name, path, size in clips:
            too_old = now - mtime > self.settings.max_age
            too_big = total > limit
            if not (too_old or too_big):
                break  # sorted by age: the rest are younger, and the size is within bounds
            if _key(path) in protected:
                continue
            try:
                path.unlink()
            except OSError as exc:
                log.warning("clips: cannot delete %s (%s)", path, exc)
                continue
            with contextlib.suppress(OSError):
                path.with_suffix(NOTE).unlink(missing_ok=True)  # its note goes with it
            total -= size
            deleted.append(path)
        if deleted:
            log.info("clips: deleted %d old clip(s); %d kept, %.1f MB", len(deleted), len(clips) - len(deleted),
                     total / (1024 * 1024))
        self.deleted += len(deleted)
        return deleted


def _key(path: Path) -> str:
    """One spelling per file: the outbox may hold a path written differently (relative, with `..`)."""
    try:
        return str(path.resolve())
    except OSError:
        return str(path.absolute())
