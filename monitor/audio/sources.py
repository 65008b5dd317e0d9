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
from monitor.audio.ringbuffer import Overwritten, RingBuffer

log = logging.getLogger(__name__)


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


def resolve_device(device: int | str | None, sd: Any) -> int | None:
    """A device index from an index, a name substring or None (system default input)."""
    if device is None:
        return None
    devices = sd.query_devices()
    inputs = [(i, d) for i, d in enumerate(devices) if d["max_input_channels"] > 0]
    if isinstance(device, int) or (isinstance(device, str) and device.isdigit()):
        idx = int(device)
        if any(i == idx for i, _ in inputs):
            return idx
        raise SourceError(f"audio.device: no input device with index {idx}; run `audio-monitor devices` to list them")
    wanted = device.lower()
    exact = [i for i, d in inputs if d["name"].lower() == wanted]
    matches = exact or [i for i, d in inputs if wanted in d["name"].lower()]
    if not matches:
        names = ", ".join(repr(d["name"]) for _, d in inputs) or "none"
        raise SourceError(f"audio.device: no input device matches {device!r} (inputs: {names}); run `audio-monitor devices`")
    return matches[0]


class MicSource:
    """A sounddevice InputStream that survives device errors.

    The PortAudio callback does one thing: average the channels into a preallocated scratch and
    copy it into a device-rate ring. A pump thread resamples from there into the 16 kHz ring and
    supervises the stream: when it fails, stalls or the device disappears, it reopens it with a
    capped backoff, logging once per state change, and fills the outage with silence so that
    sample indices keep tracking time.
    """

    STALL_SECONDS = 3.0
    RAW_SECONDS = 10.0

    def __init__(self, ring: RingBuffer, device: int | str | None = None, sample_rate: int | None = None,
                 channels: int = 1, block_seconds: float = 0.05, max_backoff: float = 30.0):
        self.ring = ring
        self.live = True
        self.capture = True
        self.stats = CaptureStats()
        self.device = device
        self.sample_rate = sample_rate
        self.channels = channels
        self.block_seconds = block_seconds
        self.max_backoff = max_backoff
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._raw: RingBuffer | None = None
        self._scratch = np.zeros(0, dtype=np.float32)
        self._last_callback = 0.0

    @property
    def finished(self) -> bool:
        return False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.stats.state = "stopped"
        self.ring.close()

    def wait_for(self, index: int, timeout: float) -> bool:
        return self.ring.wait_for(index, timeout)

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

    def _open(self, sd: Any) -> tuple[Any, int]:
        index = resolve_device(self.device, sd)
        info = sd.query_devices(index, "input") if index is not None else sd.query_devices(kind="input")
        rate = int(self.sample_rate or info["default_samplerate"])
        channels = min(self.channels, int(info["max_input_channels"])) or 1
        block = max(1, int(self.block_seconds * rate))
        self._raw = RingBuffer(int(self.RAW_SECONDS * rate), rate)
        self._scratch = np.zeros(block * 4, dtype=np.float32)
        stream = sd.InputStream(device=index, samplerate=rate, channels=channels, dtype="float32",
                                blocksize=block, callback=self._callback)
        stream.start()
        log.info("capturing from %r at %d Hz, %d channel(s)", info["name"], rate, channels)
        return stream, rate

    def _run(self) -> None:
        try:
            import sounddevice as sd
        except OSError as exc:  # PortAudio library missing
            self.stats.state, self.stats.last_error = "failed", str(exc)
            log.error("audio: cannot load PortAudio (%s); install libportaudio2", exc)
            return
        backoff = 0.5
        outage_since: float | None = None
        while not self._stop.is_set():
            try:
                stream, rate = self._open(sd)
            except Exception as exc:  # PortAudioError, SourceError, ValueError from bad settings
                message = str(exc).splitlines()[0]
                if self.stats.state != "retrying" or message != self.stats.last_error:
                    log.error("audio: cannot open input device (%s); retrying every %.0fs at most", message, self.max_backoff)
                self.stats.state, self.stats.last_error = "retrying", message
                outage_since = outage_since or time.monotonic()
                if self._stop.wait(backoff):
                    break
                backoff = min(backoff * 2, self.max_backoff)
                try:  # PortAudio only notices new or returning devices after a re-init
                    sd._terminate()
                    sd._initialize()
                except Exception:
                    pass
                continue
            if outage_since is not None:
                self._fill_gap(time.monotonic() - outage_since)
                self.stats.restarts += 1
                log.info("audio: capture resumed after %.1fs", time.monotonic() - outage_since)
                outage_since = None
            backoff = 0.5
            self.stats.state, self.stats.last_error = "running", ""
            reason = self._pump(stream, rate)
            _close_quietly(stream)
            if reason and not self._stop.is_set():
                log.error("audio: capture stopped (%s); reopening", reason)
                self.stats.state, self.stats.last_error = "retrying", reason
                outage_since = time.monotonic()

    def _pump(self, stream: Any, rate: int) -> str:
        """Move audio from the device-rate ring into the model-rate ring until the stream dies."""
        convert = Converter(rate, self.ring.sample_rate)
        raw = self._raw
        cursor = 0
        opened = time.monotonic()
        self._last_callback = 0.0
        while not self._stop.is_set():
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


def fill_gap(ring: RingBuffer, stats: CaptureStats, seconds: float) -> None:
    """Account for `seconds` of audio a capture lost: the ring's index moves on by all of it (at most
    a ring's worth is stored, as silence), so sample indices — rule time — keep tracking time."""
    n = int(round(seconds * ring.sample_rate))
    if n > 0:
        stats.lost_seconds += n / ring.sample_rate
        ring.write_gap(n)


def _close_quietly(stream: Any, timeout: float = 2.0) -> None:
    """Abort and close a PortAudio stream without ever waiting on it for long.

    When the sound server dies under a stream, PortAudio can block in abort/close; the capture
    thread must go on reopening, so the closing happens in a throwaway thread.
    """
    def close() -> None:
        try:
            stream.abort()
            stream.close()
        except Exception:  # noqa: BLE001 - a dead stream may refuse either; it is dropped anyway
            pass

    closer = threading.Thread(target=close, name="capture-close", daemon=True)
    closer.start()
    closer.join(timeout)
    if closer.is_alive():
        log.warning("audio: the old input stream did not close within %.0fs; left behind", timeout)


def make_source(audio: Any, ring: RingBuffer, start_time: float | None = None) -> AudioSource:
    """The source named by an `audio:` config section (`start_time`: a file's first sample, epoch seconds).

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
                     block_seconds=audio.block)
