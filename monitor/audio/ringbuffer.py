"""A fixed-memory ring of mono float32 samples addressed by absolute sample index.

One writer (the capture side) and any number of readers, without a lock: the writer copies
samples in and then publishes the new total; a reader copies out and then checks that the
writer did not lap the range while it was copying. Asking for samples that are gone raises
`Overwritten`: a reader gets the audio it asked for or an error, never stale data.

Two facts about the audio are kept at the write side, where every sample passes once:

- Mute. While `muted`, the writer stores zeros instead of what was captured, so audio heard
  while muted never enters the buffer, whoever reads it later. `private_end` is one past the
  last sample written while muted: windows and clips start at or after it.
- Digital silence. `silent_samples` counts the samples since the last write that held anything
  but exact zeros: a microphone that delivers only zeros has stopped hearing.
- Lost audio. `write_gap` moves the index on over audio that was never captured (a device or
  stream outage of any length) while storing at most a ring's worth of zeros; `gaps` remembers
  the latest such ranges, so that windows over them count as lost, not as skipped.

Sample indices are the audio's own clock; `time_of` maps them onto the wall clock through the
latest anchor, read from `clock` (injectable, so tests can step it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import ClassVar

import numpy as np


class Overwritten(LookupError):
    """The requested samples were already overwritten by newer audio."""


class NotYetWritten(LookupError):
    """The requested samples have not been captured yet."""


class RingBuffer:
    """Single-writer ring buffer; absolute indices start at 0 with the first sample ever written."""

    GAPS_KEPT: ClassVar[int] = 32  # lost ranges remembered (older ones are long out of the ring)

    def __init__(self, capacity: int, sample_rate: int, clock: Callable[[], float] = time.time):
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = int(capacity)
        self.sample_rate = int(sample_rate)
        self.clock = clock
        """The wall clock sources stamp their audio with (epoch seconds)."""
        self._data = np.zeros(self.capacity, dtype=np.float32)
        self._written = 0  # published total; only the writer assigns it
        self._reserved = 0  # total the writer is about to reach (set before it copies)
        self._anchor = (0, clock())  # (absolute index, wall time of that sample)
        self._new_data = threading.Event()
        self._muted = False  # any thread sets it; the writer applies it
        self._private_end = 0  # one past the last sample written while muted
        self._last_sound = 0  # one past the last write that held a non-zero sample
        self._gaps: tuple[tuple[int, int], ...] = ()  # replaced whole by the writer: readers need no lock
        self.closed = False

    @property
    def written(self) -> int:
        """Total samples ever written: the absolute index one past the newest sample."""
        return self._written

    @property
    def oldest(self) -> int:
        """The oldest absolute index still held."""
        return max(0, self._written - self.capacity)

    @property
    def muted(self) -> bool:
        return self._muted

    def set_muted(self, muted: bool) -> None:
        """From any thread: from the next write on, store zeros instead of the captured audio (or stop)."""
        self._muted = bool(muted)

    @property
    def private_end(self) -> int:
        """One past the last sample written while muted (0 if never muted): nothing before it may be heard."""
        return self._private_end

    @property
    def silent_samples(self) -> int:
        """Samples written since the last one that was not an exact zero (muted writes count as sound)."""
        return self._written - self._last_sound

    def write(self, samples: np.ndarray, wall_time: float | None = None) -> None:
        """Append samples (writer thread only). `wall_time`: when the last sample was captured."""
        n = len(samples)
        if n == 0:
            return
        muted = self._muted
        sound = muted or bool(np.any(samples))
        if n > self.capacity:  # only the newest capacity samples can survive anyway
            self._reserved = self._written + n
            self._written += n - self.capacity
            samples = samples[-self.capacity :]
            n = self.capacity
        self._reserved = self._written + n
        start = self._written % self.capacity
        first = min(n, self.capacity - start)
        if muted:  # what was captured while muted is never stored
            self._data[start : start + first] = 0.0
            self._data[: n - first] = 0.0
        else:
            self._data[start : start + first] = samples[:first]
            if first < n:
                self._data[: n - first] = samples[first:]
        total = self._written + n
        if wall_time is not None:
            self._anchor = (total, wall_time)
        if muted:
            self._private_end = total
        if sound:
            self._last_sound = total
        self._written = total
        self._new_data.set()

    def write_gap(self, n: int, wall_time: float | None = None) -> None:
        """Move on past `n` samples that were never captured (writer thread only).

        Sample indices keep tracking time across an outage of any length, so rule time (hold,
        cooldown: sample counts) stays true; yet only what the ring can hold is stored (zeros),
        in constant memory and time. The gap counts as silence and is remembered in `gaps`.
        `wall_time`: when the gap's last sample would have been captured.
        """
        n = int(n)
        if n <= 0:
            return
        start = self._written
        total = start + n
        self._reserved = total  # readers of anything older than total - capacity now get Overwritten
        stored = min(n, self.capacity)
        i = (total - stored) % self.capacity
        first = min(stored, self.capacity - i)
        self._data[i : i + first] = 0.0
        self._data[: stored - first] = 0.0
        if wall_time is not None:
            self._anchor = (total, wall_time)
        if self._muted:
            self._private_end = total
            self._last_sound = total
        gaps = self._gaps
        if gaps and gaps[-1][1] == start:  # one outage filled in steps is one gap
            gaps = (*gaps[:-1], (gaps[-1][0], total))
        else:
            gaps = (*gaps[-(self.GAPS_KEPT - 1):], (start, total))
        self._gaps = gaps
        self._written = total
        self._new_data.set()

    @property
    def gaps(self) -> tuple[tuple[int, int], ...]:
        """The latest ranges [start, end) of audio that was never captured (`write_gap`), oldest first."""
        return self._gaps

    def read(self, start: int, end: int, out: np.ndarray | None = None) -> np.ndarray:
        """Copy of samples [start, end); raises Overwritten or NotYetWritten."""
        if end < start:
            raise ValueError(f"end {end} before start {start}")
        written = self._written
        if end > written:
            raise NotYetWritten(f"samples up to {end} requested, only {written} written")
        if start < written - self.capacity or start < 0:
            raise Overwritten(f"samples from {start} requested, oldest held is {max(0, written - self.capacity)}")
        n = end - start
        buf = np.empty(n, dtype=np.float32) if out is None else out[:n]
        i = start % self.capacity
        first = min(n, self.capacity - i)
        buf[:first] = self._data[i : i + first]
        if first < n:
            buf[first:] = self._data[: n - first]
        # The writer may have lapped us while we copied: then part of buf is newer audio.
        if start < self._reserved - self.capacity:
            raise Overwritten(f"samples from {start} were overwritten while being read")
        return buf

    def time_of(self, index: int) -> float:
        """Wall-clock time (epoch seconds) of an absolute sample index."""
        anchor_index, anchor_time = self._anchor
        return anchor_time - (anchor_index - index) / self.sample_rate

    def wait_for(self, index: int, timeout: float) -> bool:
        """Block until `index` samples exist (True), or timeout / close (False)."""
        deadline = time.monotonic() + timeout
        while self._written < index:
            if self.closed:
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._new_data.clear()
            if self._written >= index:
                break
            self._new_data.wait(min(remaining, 0.25))
        return True

    def close(self) -> None:
        """No more data will come: wake every waiter."""
        self.closed = True
        self._new_data.set()
