"""Sliding windows over the ring buffer: every `hop`, the newest `length` seconds.

Each window carries its absolute sample range, wall-clock times, RMS level, the webrtcvad
speech frames inside it, and the speech utterances that ended since the previous window (so a
transcript is made once per utterance, not once per overlapping window).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from monitor.audio.base import AudioSource
from monitor.audio.levels import VAD_FRAME, SpeechFrames, dbfs
from monitor.audio.ringbuffer import Overwritten

log = logging.getLogger(__name__)


def frames_within(start: int, end: int) -> tuple[int, int]:
    """The 30 ms VAD frames lying wholly inside samples [start, end): (first, one past the last)."""
    return -(-start // VAD_FRAME), end // VAD_FRAME


@dataclass(frozen=True)
class Utterance:
    """A VAD-bounded stretch of speech, [start, end) in absolute samples."""

    start: int
    end: int


@dataclass(frozen=True, eq=False)
class Window:
    """One window of audio and what was measured on it."""

    seq: int
    start: int  # absolute sample index of the first sample: the audio's own clock
    end: int  # one past the last sample
    sample_rate: int
    t_start: float  # wall-clock (epoch seconds) of the first sample: for schedules and time stamps only
    t_end: float
    audio: np.ndarray = field(repr=False)  # mono float32, end - start samples
    dbfs: float
    speech_ratio: float  # fraction of 30 ms frames webrtcvad calls speech
    speech: np.ndarray = field(repr=False)  # bool per 30 ms frame fully inside the window
    utterances: tuple[Utterance, ...] = ()  # utterances that ended in this hop, clipped to the window
    final: bool = False  # the last window of a finite source

    @property
    def duration(self) -> float:
        return (self.end - self.start) / self.sample_rate

    @property
    def offset(self) -> float:
        """Seconds from the start of the source to the window's start."""
        return self.start / self.sample_rate

    @property
    def audio_end(self) -> float:
        """Seconds of audio from the start of the source to the window's end.

        The clock of rule time (patience, hold, cooldown): it counts samples, so a step of the
        wall clock (NTP, a person setting the time) cannot stretch or cut a hold.
        """
        return self.end / self.sample_rate

    def segment(self, start: int, end: int) -> np.ndarray:
        """Audio of [start, end) (absolute indices) that lies inside this window."""
        lo, hi = max(start, self.start) - self.start, min(end, self.end) - self.start
        return self.audio[lo:hi]

    def speech_between(self, start: int, end: int) -> float:
        """Fraction of speech among this window's VAD frames that lie inside [start, end)."""
        first = frames_within(self.start, self.end)[0]
        a, b = frames_within(start, end)
        flags = self.speech[max(0, a - first): max(0, b - first)]
        return float(flags.mean()) if len(flags) else 0.0


class UtteranceTracker:
    """Turns per-frame speech flags into utterances, bridging pauses shorter than `hangover` frames."""

    def __init__(self, hangover_frames: int = 10, min_frames: int = 10, max_frames: int | None = None):
        self.hangover = hangover_frames
        self.min_frames = min_frames
        self.max_frames = max_frames
        self._start: int | None = None  # frame where the open utterance began
        self._last_speech = -1  # last speech frame of the open utterance

    def feed(self, first_frame: int, flags: np.ndarray) -> list[tuple[int, int]]:
        """Feed consecutive frames; returns closed utterances as (first_frame, end_frame)."""
        done: list[tuple[int, int]] = []
        for k, speech in enumerate(flags):
            frame = first_frame + k
            if speech:
                if self._start is None:
                    self._start = frame
                self._last_speech = frame
            elif self._start is not None and frame - self._last_speech > self.hangover:
                self._close(done)
            if self._start is not None and self.max_frames and frame + 1 - self._start >= self.max_frames:
                self._last_speech = frame
                self._close(done)
        return done

    def flush(self) -> list[tuple[int, int]]:
        done: list[tuple[int, int]] = []
        if self._start is not None:
            self._close(done)
        return done

    def _close(self, done: list[tuple[int, int]]) -> None:
        assert self._start is not None
        end = self._last_speech + 1
        if end - self._start >= self.min_frames:
            done.append((self._start, end))
        self._start = None


class WindowScheduler:
    """Cuts windows from a source's ring buffer; the caller iterates `windows()`.

    A live source is never waited on: if the consumer of `windows()` was away for more than a
    hop, the windows it missed are skipped (counted in `skipped`) and the newest one is cut.
    Windows passed over because their audio was never captured (a device or stream outage, see
    `RingBuffer.write_gap`) are counted in `lost` instead: nothing fell behind there.
    A file in fast mode is read exactly as far as the next window needs, so nothing is skipped
    and the result is deterministic.
    """

    def __init__(self, source: AudioSource, length: float, hop: float, vad_aggressiveness: int = 2,
                 min_utterance: float = 0.3, utterance_gap: float = 0.3):
        self.source = source
        self.ring = source.ring
        self.rate = self.ring.sample_rate
        self.length = int(round(length * self.rate))
        self.hop = int(round(hop * self.rate))
        if self.hop <= 0 or self.length <= 0 or self.length > self.ring.capacity:
            raise ValueError("window length and hop must be positive and fit the ring buffer")
        self._speech = SpeechFrames(vad_aggressiveness, self.ring.capacity // VAD_FRAME + 2)
        frame_s = VAD_FRAME / self.rate
        self._utterances = UtteranceTracker(
            hangover_frames=max(1, round(utterance_gap / frame_s)),
            min_frames=max(1, round(min_utterance / frame_s)),
            max_frames=self.length // VAD_FRAME,
        )
        self._pending: list[Utterance] = []
        self.skipped = 0  # windows passed over because the consumer fell behind real time
        self.lost = 0  # windows passed over that lie on audio never captured
        self.emitted = 0

    # -- per-frame speech, each frame classified once
    def _classify_until(self, index: int) -> None:
        frame = self._speech.next_frame
        last = index // VAD_FRAME
        if last <= frame:
            return
        oldest_frame = -(-self.ring.oldest // VAD_FRAME)
        if frame < oldest_frame:  # never classified before it was overwritten (consumer stalled, outage)
            self._speech.skip_to(oldest_frame)
            # non-speech closes an open utterance within the hangover; more frames change nothing
            # (and an outage can be hours of frames)
            closing = min(oldest_frame - frame, self._utterances.hangover + 2)
            self._utterances.feed(frame, np.zeros(closing, dtype=bool))
            frame = oldest_frame
        if last <= frame:
            return
        try:
            samples = self.ring.read(frame * VAD_FRAME, last * VAD_FRAME)
        except Overwritten:
            return
        self._speech.classify(samples, frame)
        for a, b in self._utterances.feed(frame, self._speech.flags(frame, last)):
            self._pending.append(Utterance(a * VAD_FRAME, b * VAD_FRAME))

    def _cut(self, start: int, end: int, final: bool = False) -> Window | None:
        try:
            audio = self.ring.read(start, end)
        except Overwritten:
            self.skipped += 1
            return None
        self._classify_until(end)
        if final:
            for a, b in self._utterances.flush():
                self._pending.append(Utterance(a * VAD_FRAME, min(b * VAD_FRAME, end)))
        first, last = frames_within(start, end)
        speech = self._speech.flags(first, last) if last > first else np.zeros(0, dtype=bool)
        utterances = tuple(Utterance(max(u.start, start), min(u.end, end)) for u in self._pending if u.end > start)
        self._pending.clear()
        t_start = self.ring.time_of(start)  # one anchor for both ends: the duration is exact
        window = Window(
            seq=self.emitted, start=start, end=end, sample_rate=self.rate,
            t_start=t_start, t_end=t_start + (end - start) / self.rate, audio=audio,
            dbfs=dbfs(audio), speech_ratio=float(speech.mean()) if len(speech) else 0.0, speech=speech,
            utterances=utterances, final=final,
        )
        self.emitted += 1
        return window

    def _over_gaps(self, first_end: int, count: int) -> int:
        """How many of the `count` windows ending at first_end, first_end + hop, ... hold lost audio."""
        # a window [end - length, end) meets a gap [a, b) when a < end < b + length
        spans = sorted((a, b + self.length) for a, b in self.ring.gaps)
        merged: list[list[int]] = []
        for a, b in spans:
            if merged and a < merged[-1][1]:  # open intervals: touching ones stay apart
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        lost = 0
        for a, b in merged:  # k with a < first_end + k*hop < b, 0 <= k < count
            lo = max(0, (a - first_end) // self.hop + 1)
            hi = min(count - 1, -(-(b - first_end) // self.hop) - 1)
            lost += max(0, hi - lo + 1)
        return lost

    def windows(self, stop: threading.Event | None = None) -> Iterator[Window]:
        """Yield windows until `stop` is set or a finite source ends.

        No window starts before the ring's `private_end`: after a mute, the first window starts
        where listening resumed, so no window holds audio from while it was muted.
        """
        stop = stop or threading.Event()
        next_end = self.length
        last_end = 0
        while not stop.is_set():
            floor = self.ring.private_end
            if next_end - self.length < floor:  # (still) muted: restart the grid where it ended
                next_end = floor + self.length
            if not self.source.wait_for(next_end, timeout=0.25):
                if self.source.finished or self.ring.closed:
                    total = self.ring.written
                    if total > max(last_end, floor) and not stop.is_set():  # the tail no window has covered yet
                        window = self._cut(max(0, floor, total - self.length), total, final=True)
                        if window is not None:
                            yield window
                    return
                continue
            if self.ring.private_end > floor:  # muted while waiting: those samples are private
                continue
            written = self.ring.written
            if self.source.live and written - next_end >= self.hop:
                behind = (written - next_end) // self.hop
                lost = self._over_gaps(next_end, behind)
                self.lost += lost
                self.skipped += behind - lost
                next_end += behind * self.hop
            if not self.source.live:  # peek one sample ahead: is this the file's last window?
                self.source.wait_for(next_end + 1, timeout=0)
            final = self.source.finished and self.ring.written == next_end
            window = self._cut(next_end - self.length, next_end, final=final)
            if window is not None:
                last_end = next_end
                yield window
            if final:
                return
            next_end += self.hop
