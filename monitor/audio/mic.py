"""A microphone as a source: a PortAudio input stream, supervised and reopened when it fails."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

from monitor.audio.base import CaptureStats, SourceError, fill_gap
from monitor.audio.convert import Converter
from monitor.audio.portaudio import PORTAUDIO, DeviceNotFound, resolve_device
from monitor.audio.ringbuffer import Overwritten, RingBuffer
from monitor.errors import first_line

log = logging.getLogger(__name__)


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
                    text = first_line(exc, with_type=False) if isinstance(exc, SourceError) else message
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
    return first_line(exc, with_type=not isinstance(exc, SourceError))
