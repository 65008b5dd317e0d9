"""What every audio source shares: the contract the window scheduler relies on, its counters, its errors.

The sources themselves — a microphone (`mic`), a file (`file`), a camera or network stream
(`stream`) — build on this module and never on each other, so any of them can be added or
changed without the others being imported.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from monitor.audio.ringbuffer import RingBuffer

STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")
"""URL schemes a stream source reads (its audio track); `audio.source` takes them besides `mic` and `file:`."""


class SourceError(RuntimeError):
    """A source that cannot deliver audio; the message is one line saying what to do."""


@dataclass
class CaptureStats:
    """Counters a source keeps (read by metrics and status)."""

    state: str = "starting"  # starting | running | retrying | finished | stopped
    overflows: int = 0  # device overruns (PortAudio input_overflow) and internal overruns
    lost_seconds: float = 0.0  # audio replaced by silence after an overrun or a device outage
    restarts: int = 0
    callbacks: int = 0
    last_error: str = ""
    first_audio: threading.Event = field(default_factory=threading.Event)


class AudioSource(Protocol):
    """What the window scheduler needs from a source."""

    ring: RingBuffer
    stats: CaptureStats
    live: bool  # True: audio arrives on its own clock and stale windows are skipped
    capture: bool  # True: a device or stream that can fail or go dead (digital silence); False: a file

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def wait_for(self, index: int, timeout: float) -> bool: ...
    @property
    def finished(self) -> bool: ...


def fill_gap(ring: RingBuffer, stats: CaptureStats, seconds: float) -> None:
    """Account for `seconds` of audio a capture lost: the ring's index moves on by all of it (at most
    a ring's worth is stored, as silence), so sample indices — rule time — keep tracking time."""
    n = int(round(seconds * ring.sample_rate))
    if n > 0:
        stats.lost_seconds += n / ring.sample_rate
        ring.write_gap(n)
