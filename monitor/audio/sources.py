"""Audio sources that fill the 16 kHz ring buffer: a live microphone, a file, a camera or network stream.

All end in the same place — `RingBuffer.write` of mono float32 at the model rate — so the
windows, gates, engine and rules downstream cannot tell them apart. `make_source` picks one
from an `audio:` section; the shared types live in `monitor.audio.base`, each source in its
own module (`mic`, `file`, `stream`).
"""

from __future__ import annotations

from typing import Any

from monitor.audio.base import AudioSource, CaptureStats, SourceError, fill_gap
from monitor.audio.file import FileSource
from monitor.audio.mic import MicSource
from monitor.audio.portaudio import DeviceNotFound, resolve_device
from monitor.audio.ringbuffer import RingBuffer
from monitor.audio.stream import StreamSource

__all__ = ["AudioSource", "CaptureStats", "DeviceNotFound", "FileSource", "MicSource", "SourceError", "StreamSource",
           "fill_gap", "make_source", "resolve_device"]


def make_source(audio: Any, ring: RingBuffer, start_time: float | None = None, name: str = "capture") -> AudioSource:
    """The source named by an `audio:` config section (`start_time`: a file's first sample, epoch seconds;
    `name`: the room, for a microphone's log lines).

    A stream URL gives a `StreamSource`; it is opened in its own thread, so an unreachable
    camera is retried there rather than failing here."""
    if audio.file_path is not None:
        return FileSource(audio.file_path, ring, realtime=audio.realtime, block_seconds=max(audio.block, 0.1),
                          start_time=start_time)
    if audio.stream_url is not None:
        return StreamSource(audio.stream_url, ring)
    return MicSource(ring, device=audio.device, sample_rate=audio.sample_rate, channels=audio.channels,
                     block_seconds=audio.block, name=name)
