"""An audio file as a source: in real time (a `file:` room) or as fast as it is consumed (replay, eval)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from monitor.audio.base import CaptureStats, SourceError
from monitor.audio.convert import Converter
from monitor.audio.ringbuffer import RingBuffer
from monitor.errors import first_line

log = logging.getLogger(__name__)


class FileSource:
    """An audio file at any rate and channel count, in real time or as fast as it is consumed.

    libsndfile reads WAV/FLAC/OGG (and MP3 where it is built with it); what it cannot open —
    phone recordings: M4A/AAC, 3GP/AMR, CAF/ALAC — is decoded by FFmpeg (PyAV) through the same
    interface, so replay and eval take the recordings users actually have.
    """

    def __init__(self, path: str | Path, ring: RingBuffer, realtime: bool = True, block_seconds: float = 0.1,
                 start_time: float | None = None):
        """`start_time`: wall-clock time of the first sample (epoch seconds); default: when it starts."""
        import soundfile

        self.path = Path(path)
        self.ring = ring
        self.live = realtime
        self.capture = False
        self.stats = CaptureStats()
        if not self.path.exists():
            raise SourceError(f"audio.source: file not found: {self.path}")
        if self.path.is_dir():
            raise SourceError(f"audio.source: {self.path} is a folder; name an audio file (WAV, FLAC, OGG, M4A, MP3, ...)")
        self.decoder = "libsndfile"
        """Which library reads the file: `libsndfile` or `ffmpeg`."""
        try:
            self._file: Any = soundfile.SoundFile(str(self.path))
        except Exception as exc:  # noqa: BLE001 - libsndfile reports corrupt and unknown formats alike: let FFmpeg try
            self._file = self._open_with_ffmpeg(exc)
            self.decoder = "ffmpeg"
        self.rate = self._file.samplerate
        self.channels = self._file.channels
        self.duration = self._file.frames / self.rate if self._file.frames > 0 else 0.0
        self._block = max(1, int(block_seconds * self.rate))
        self._convert = Converter(self.rate, ring.sample_rate)
        self._lock = threading.Lock()  # fast mode: the consumer thread reads; realtime: the pacer thread
        self._eof = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_time = start_time
        self._t0 = start_time if start_time is not None else ring.clock()

    def _open_with_ffmpeg(self, sndfile_error: Exception) -> Any:
        from monitor.audio.decode import AvFile, DecodeError, ffmpeg_available

        first = first_line(sndfile_error, with_type=False)
        reason = first.replace(f"Error opening {str(self.path)!r}: ", "")
        if not ffmpeg_available():
            raise SourceError(f"audio.source: cannot decode {self.path} ({reason}); WAV, FLAC and OGG work, "
                              "other formats need FFmpeg: pip install av") from None
        try:
            return AvFile(self.path)
        except DecodeError as exc:
            raise SourceError(f"audio.source: cannot decode {self.path} (libsndfile: {reason}; FFmpeg: {exc}); "
                              "expected an audio file (WAV, FLAC, OGG, M4A, MP3, 3GP, CAF, ...)") from None

    @property
    def finished(self) -> bool:
        return self._eof

    def start(self) -> None:
        self._t0 = self._start_time if self._start_time is not None else self.ring.clock()
        self.stats.state = "running"
        if self.live:
            self._thread = threading.Thread(target=self._pace, name="file-source", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.stats.state = "stopped"
        self.ring.close()

    def _read_block(self) -> bool:
        """Read, convert and write one block; False at end of file."""
        with self._lock:
            if self._eof:
                return False
            try:
                data = self._file.read(self._block, dtype="float32", always_2d=True)
            except Exception as exc:
                log.error("audio.source: %s stopped decoding at %.1fs (%s); treating it as the end", self.path, self.ring.written / self.ring.sample_rate, exc)
                data = np.zeros((0, self.channels), dtype=np.float32)
            out = self._convert(data) if len(data) else np.zeros(0, dtype=np.float32)
            done = len(data) < self._block
            if done:
                out = np.concatenate([out, self._convert.flush()])
            if len(out):
                self.ring.write(out, wall_time=self._t0 + (self.ring.written + len(out)) / self.ring.sample_rate)
                self.stats.callbacks += 1
                self.stats.first_audio.set()
            if done:
                self._eof = True
                self.stats.state = "finished"
                self._file.close()
                self.ring.close()
            return not done

    def _pace(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set() and self._read_block():
            due = start + self.ring.written / self.ring.sample_rate
            self._stop.wait(max(0.0, due - time.monotonic()))

    def wait_for(self, index: int, timeout: float) -> bool:
        if self.live:
            return self.ring.wait_for(index, timeout)
        while self.ring.written < index:
            if self._stop.is_set() or not self._read_block():
                return self.ring.written >= index
        return True
