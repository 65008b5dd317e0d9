"""Audio sources that fill the 16 kHz ring buffer: a live microphone and a file.

Both end in the same place — `RingBuffer.write` of mono float32 at the model rate — so the
windows, gates, engine and rules downstream cannot tell them apart.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from monitor.audio.convert import Converter
from monitor.audio.portaudio import PORTAUDIO, DeviceNotFound, SourceError, resolve_device
from monitor.audio.ringbuffer import Overwritten, RingBuffer

log = logging.getLogger(__name__)

__all__ = ["AudioSource", "CaptureStats", "DeviceNotFound", "FileSource", "MicSource", "SourceError", "fill_gap",
           "make_source", "resolve_device"]


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


# ---------------------------------------------------------------------------- file


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

        first = str(sndfile_error).splitlines()[0] if str(sndfile_error) else type(sndfile_error).__name__
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


# ---------------------------------------------------------------------------- microphone


class MicSource:
    """A sounddevice InputStream that survives device errors, and never takes another room's with it.

    The PortAudio callback does one thing: average the channels into a preallocated scratch and
    copy it into a device-rate ring. A pump thread resamples from there into the 16 kHz ring and
    supervises the stream: when it fails, stalls, the device disappears or anything raises, the
    state says `retrying` with the reason (the room's hearing turns `capture_lost`) and the stream
    is reopened with a capped backoff, logging once per state change; the outage becomes lost
    audio (`fill_gap`) so that sample indices keep tracking time. PortAudio itself — its device
    list, when it may be re-read — belongs to `PORTAUDIO`, shared by every microphone.
    """

    STALL_SECONDS = 3.0
    RAW_SECONDS = 10.0
    _RESTART = "PortAudio restarts"  # _pump's answer when PORTAUDIO asks every stream to close

    def __init__(self, ring: RingBuffer, device: int | str | None = None, sample_rate: int | None = None,
                 channels: int = 1, block_seconds: float = 0.05, max_backoff: float = 30.0, name: str = "capture"):
        """`name`: who this is in log lines and to the other microphones (a room's id)."""
        self.ring = ring
        self.live = True
        self.capture = True
        self.stats = CaptureStats()
        self.device = device
        self.sample_rate = sample_rate
        self.channels = channels
        self.block_seconds = block_seconds
        self.max_backoff = max_backoff
        self.name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._raw: RingBuffer | None = None
        self._scratch = np.zeros(0, dtype=np.float32)
        self._last_callback = 0.0
        self._outage_since: float | None = None  # monotonic start of the current outage (capture thread only)

    @property
    def finished(self) -> bool:
        return False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"capture-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.stats.state = "stopped"
        self.ring.close()

    def wait_for(self, index: int, timeout: float) -> bool:
        return self.ring.wait_for(index, timeout)

    def missing(self, detail: str) -> None:
        """Before `start`: the device is known to be missing; start out `retrying` (said once, by the caller)."""
        self.stats.state, self.stats.last_error = "retrying", detail

    # The PortAudio thread. No logging, no locks held by others, no allocation beyond the copy.
    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if status.input_overflow:
            self.stats.overflows += 1
        raw = self._raw
        now = self.ring.clock()
        if indata.shape[1] == 1:
            raw.write(indata[:, 0], wall_time=now)
        else:
            out = self._scratch[:frames] if frames <= len(self._scratch) else np.empty(frames, dtype=np.float32)
            np.mean(indata, axis=1, out=out)
            raw.write(out, wall_time=now)
        self._last_callback = time.monotonic()

    def _open(self) -> tuple[Any, int]:
        with PORTAUDIO.session() as sd:
            index = resolve_device(self.device, sd)
            info = sd.query_devices(index, "input") if index is not None else sd.query_devices(kind="input")
            rate = int(self.sample_rate or info["default_samplerate"])
            channels = min(self.channels, int(info["max_input_channels"])) or 1
            block = max(1, int(self.block_seconds * rate))
            self._raw = RingBuffer(int(self.RAW_SECONDS * rate), rate)
            self._scratch = np.zeros(block * 4, dtype=np.float32)
            stream = sd.InputStream(device=index, samplerate=rate, channels=channels, dtype="float32",
                                    blocksize=block, callback=self._callback)
            PORTAUDIO.opened(stream, self.name)
            try:
                stream.start()
            except BaseException:
                PORTAUDIO.close(stream)
                raise
        log.info("audio: %s: capturing from %r at %d Hz, %d channel(s)", self.name, info["name"], rate, channels)
        return stream, rate

    def _run(self) -> None:
        try:
            PORTAUDIO.module()
        except OSError as exc:  # PortAudio library missing
            self.stats.state, self.stats.last_error = "failed", str(exc)
            log.error("audio: cannot load PortAudio (%s); install libportaudio2", exc)
            return
        backoff = 0.5
        while not self._stop.is_set():  # the supervisor: a bug in the loop below is said, and retried
            try:
                self._capture()
                return
            except Exception as exc:  # noqa: BLE001 - never end silently: the room must show it cannot hear
                message = f"capture failed: {_describe(exc)}"
                if message != self.stats.last_error:
                    log.error("audio: %s: %s; starting the capture again", self.name, message, exc_info=exc)
                self.stats.state, self.stats.last_error = "retrying", message
                self._outage_since = self._outage_since or time.monotonic()
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, self.max_backoff)

    def _capture(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                stream, rate = self._open()
            except Exception as exc:  # noqa: BLE001 - PortAudioError, SourceError, ValueError from bad settings, ...
                message = exc.short if isinstance(exc, DeviceNotFound) else _describe(exc)
                if self.stats.state != "retrying" or message != self.stats.last_error:
                    text = str(exc).splitlines()[0] if isinstance(exc, SourceError) else message
                    log.error("audio: %s: cannot open input device (%s); retrying every %gs at most", self.name, text,
                              self.max_backoff)
                self.stats.state, self.stats.last_error = "retrying", message
                self._outage_since = self._outage_since or time.monotonic()
                if self._stop.wait(backoff):
                    break
                backoff = min(backoff * 2, self.max_backoff)
                try:  # a device that appeared is only seen in a re-read device list
                    PORTAUDIO.refresh(self.device, self.name)
                except Exception as exc:  # noqa: BLE001 - the next open says what is wrong
                    log.debug("audio: re-reading the device list failed (%s)", exc)
                continue
            delivered = self.stats.callbacks
            unexpected: Exception | None = None
            try:
                self._resume()
                reason = self._pump(stream, rate)
            except Exception as exc:  # noqa: BLE001 - whatever it was, the room must not go deaf silently
                reason = f"capture failed: {_describe(exc)}"
                unexpected = None if type(exc).__name__ == "PortAudioError" else exc  # a bug: its traceback, once
            finally:
                PORTAUDIO.close(stream)
            if self._stop.is_set():
                break
            self._outage_since = time.monotonic()
            if reason == self._RESTART:
                PORTAUDIO.wait_restarted(PORTAUDIO.RESTART_WAIT * 2)
                continue  # reopened at once; the pause is lost audio, the room still hears
            if self.stats.state != "retrying" or reason != self.stats.last_error:
                log.error("audio: %s: capture stopped (%s); reopening", self.name, reason, exc_info=unexpected)
            self.stats.state, self.stats.last_error = "retrying", reason
            if self.stats.callbacks > delivered:
                backoff = 0.5  # audio flowed: a new outage, retried quickly
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, self.max_backoff)

    def _resume(self) -> None:
        """A stream is open: close the outage before it (lost audio, counted), and run."""
        if self._outage_since is not None:
            lost = time.monotonic() - self._outage_since
            self._fill_gap(lost)
            self.stats.restarts += 1
            if self.stats.state != "running":
                log.info("audio: %s: capture resumed after %.1fs", self.name, lost)
            self._outage_since = None
        self.stats.state, self.stats.last_error = "running", ""

    def _pump(self, stream: Any, rate: int) -> str:
        """Move audio from the device-rate ring into the model-rate ring until the stream dies; why it stopped."""
        convert = Converter(rate, self.ring.sample_rate)
        raw = self._raw
        cursor = 0
        opened = time.monotonic()
        self._last_callback = 0.0
        while not self._stop.is_set():
            if PORTAUDIO.restarting:
                return self._RESTART
            raw.wait_for(cursor + 1, 0.1)
            written = raw.written
            if written > cursor:
                if cursor < raw.oldest:  # the pump fell a whole raw buffer behind
                    lost = raw.oldest - cursor
                    self.stats.overflows += 1
                    self._fill_gap(lost / rate)
                    cursor = raw.oldest
                try:
                    chunk = raw.read(cursor, written)
                except Overwritten:
                    continue
                out = convert(chunk)
                self.ring.write(out, wall_time=raw.time_of(written))
                cursor = written
                self.stats.callbacks += 1
                self.stats.first_audio.set()
            # the stall first: it needs no call into PortAudio, which can hang when the server dies
            last = self._last_callback or opened
            if time.monotonic() - last > self.STALL_SECONDS:
                return f"no audio from the device for {self.STALL_SECONDS:.0f}s"
            if not stream.active:
                return "the input stream ended (device removed?)"
        return ""

    def _fill_gap(self, seconds: float) -> None:
        fill_gap(self.ring, self.stats, seconds)


def _describe(exc: BaseException) -> str:
    """An exception in one line: its first line, named by its type unless it says nothing else."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    name = type(exc).__name__
    return f"{name}: {text}" if text and not isinstance(exc, SourceError) else text or name


def fill_gap(ring: RingBuffer, stats: CaptureStats, seconds: float) -> None:
    """Account for `seconds` of audio a capture lost: the ring's index moves on by all of it (at most
    a ring's worth is stored, as silence), so sample indices — rule time — keep tracking time."""
    n = int(round(seconds * ring.sample_rate))
    if n > 0:
        stats.lost_seconds += n / ring.sample_rate
        ring.write_gap(n)


def make_source(audio: Any, ring: RingBuffer, start_time: float | None = None, name: str = "capture") -> AudioSource:
    """The source named by an `audio:` config section (`start_time`: a file's first sample, epoch seconds;
    `name`: the room, for a microphone's log lines).

    A stream URL gives a `StreamSource`; it is opened in its own thread, so an unreachable
    camera is retried there rather than failing here."""
    if audio.file_path is not None:
        return FileSource(audio.file_path, ring, realtime=audio.realtime, block_seconds=max(audio.block, 0.1),
                          start_time=start_time)
    if audio.stream_url is not None:
        # here, not at the top: stream.py builds on this module's CaptureStats and SourceError
        from monitor.audio.stream import StreamSource

        return StreamSource(audio.stream_url, ring)
    return MicSource(ring, device=audio.device, sample_rate=audio.sample_rate, channels=audio.channels,
                     block_seconds=audio.block, name=name)
