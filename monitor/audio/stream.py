"""The audio track of a camera or network stream (rtsp://, rtsps://, http://, https://) as a source.

A reader thread owns the PyAV container from open to close: it demuxes the audio packets only
(RTSP is asked for audio alone, so video never crosses the network; other containers' video
packets are dropped undecoded), decodes them, and feeds the same `Converter` as the microphone.
A stream that fails, ends or stalls is reopened with a capped backoff, and the outage becomes
silence so that sample indices keep tracking time, exactly as `MicSource` does for a device.

Stream URLs carry passwords. Nothing this module logs, raises or stores contains one: names go
through `redact_url`, FFmpeg's messages through `scrub`.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from monitor.audio.base import STREAM_SCHEMES, CaptureStats, SourceError, fill_gap
from monitor.audio.convert import Converter
from monitor.audio.decode import error_text, frame_samples
from monitor.audio.redact import redact_url, scrub
from monitor.audio.ringbuffer import RingBuffer

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- the source


def _explain(exc: BaseException, url: str, opening: bool, waited: float) -> str:
    """One line saying what went wrong and what to check, without credentials.

    `waited`: the timeout that applied (open or read), for the message when it ran out.
    """
    try:
        import av.error as averr
    except ImportError:  # pragma: no cover - the caller imported av already
        averr = None
    name = type(exc).__name__
    text = scrub(error_text(exc), url)
    refused = (averr.HTTPUnauthorizedError, averr.HTTPForbiddenError) if averr is not None else ()
    if isinstance(exc, refused) or re.search(r"\b40[13]\b|unauthori[sz]ed|forbidden", text, re.IGNORECASE):
        return (f"the server refused the credentials ({text}): check the user name and password in "
                "audio.source and the environment variable that holds them")
    missing = (averr.HTTPNotFoundError,) if averr is not None else ()
    if isinstance(exc, missing) or re.search(r"\b404\b", text):
        return f"no stream at that path ({text}): check the path for this camera model (docs/streams.md)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: check that the camera is on and the port is right"
    # PyAV's own timeout interrupts FFmpeg, which reports that as "Immediate exit requested"
    interrupted = (averr.ExitError,) if averr is not None else ()
    if isinstance(exc, (TimeoutError, *interrupted)):
        if opening:
            return f"no answer within {waited:g}s (timeout): check that the camera is reachable from this machine"
        return f"no data for {waited:g}s (read timeout): the camera or the network stalled"
    if opening and isinstance(exc, OSError) and _host_unknown(url):
        return f"unknown host {urlsplit(redact_url(url)).hostname!r}: check the address in audio.source"
    return f"{text} ({name})" if name not in text else text


def _host_unknown(url: str) -> bool:
    """True when the URL's host does not resolve (FFmpeg reports that only as an I/O error)."""
    try:
        host = urlsplit(redact_url(url)).hostname
    except ValueError:
        return False
    if not host:
        return False
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror:
        return True
    except OSError:
        return False
    return False


def open_options(url: str, read_timeout: float) -> dict[str, str]:
    """FFmpeg options for a stream: TCP interleaving for RTSP, audio only, socket timeouts."""
    options = {"timeout": str(int(read_timeout * 1_000_000))}  # microseconds, socket I/O (rtsp and http)
    if url.lower().startswith(("rtsp://", "rtsps://")):
        # TCP: no lost UDP packets, works through NAT; audio only: video is never set up
        options.update(rtsp_transport="tcp", allowed_media_types="audio")
    else:
        options.update(reconnect="0")  # reconnecting is ours to do (and to count)
    return options


class StreamSource:
    """A camera's or network stream's audio, reopened with capped backoff when it drops.

    Same contract as `MicSource`: live, capture, `CaptureStats` with states
    starting | running | retrying | stopped, silence for outages (`lost_seconds`, `restarts`).
    """

    def __init__(self, url: str, ring: RingBuffer, *, max_backoff: float = 30.0, open_timeout: float = 10.0,
                 read_timeout: float = 5.0):
        """`open_timeout`: seconds for connecting and setting up; `read_timeout`: seconds without data
        before a connected stream counts as stalled (and is reopened)."""
        if not url.lower().startswith(STREAM_SCHEMES):
            raise SourceError(f"audio.source: {redact_url(url)} is not an rtsp://, rtsps://, http:// or https:// URL")
        self._url = url  # holds credentials: only ever handed to FFmpeg
        self.name = redact_url(url)
        self.ring = ring
        self.live = True
        self.capture = True
        self.stats = CaptureStats()
        self.max_backoff = max_backoff
        self.open_timeout = open_timeout
        self.read_timeout = read_timeout
        self.media_types: tuple[str, ...] = ()
        """Kinds of stream in the container last opened (RTSP: only the audio that was asked for)."""
        self.codec = ""
        self._last_audio = 0.0  # monotonic time of the last decoded audio (reader thread only)
        self._outage_since: float | None = None  # monotonic start of the current outage (reader thread only)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"StreamSource({self.name!r})"

    @property
    def finished(self) -> bool:
        return False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="stream-source", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Never waits on the network for long: a reader blocked in FFmpeg exits on its own timeout."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            if self._thread.is_alive():
                log.debug("audio: %s reader still waiting on the network; it exits within %.0fs",
                          self.name, max(self.open_timeout, self.read_timeout))
        self.stats.state = "stopped"
        self.ring.close()

    def wait_for(self, index: int, timeout: float) -> bool:
        return self.ring.wait_for(index, timeout)

    # ------------------------------------------------------------------ reader thread

    def _run(self) -> None:
        try:
            import av
        except ImportError as exc:
            self.stats.state, self.stats.last_error = "failed", "the `av` package is not installed"
            log.error("audio: cannot read %s: %s (pip install av)", self.name, exc)
            return
        try:
            self._read(av)
        except BaseException as exc:  # a bug in the loop itself: say so, never end silently
            # no traceback: an exception's text may hold the URL, so only its scrubbed line is said
            self.stats.state, self.stats.last_error = "failed", f"{type(exc).__name__}: {scrub(str(exc), self._url)}"
            log.critical("audio: the reader of %s ended (%s)", self.name, self.stats.last_error)

    def _read(self, av: Any) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                container, audio = self._open(av)
            except Exception as exc:  # noqa: BLE001 - av.error.*, OSError, SourceError: every failure is retried
                message = _explain(exc, self._url, opening=True, waited=self.open_timeout)
                if self.stats.state != "retrying" or message != self.stats.last_error:
                    log.error("audio: cannot open %s (%s); retrying every %gs at most", self.name, message,
                              self.max_backoff)
                self.stats.state, self.stats.last_error = "retrying", message
                self._outage_since = self._outage_since or time.monotonic()
                if self._stop.wait(backoff):
                    break
                backoff = min(backoff * 2, self.max_backoff)
                continue
            try:
                reason = self._pump(av, container, audio)
            except Exception as exc:  # noqa: BLE001 - whatever it was, the room must not go deaf silently
                reason = f"capture failed: {type(exc).__name__}: {scrub(str(exc), self._url)}"
            finally:
                _close_quietly(container)
            if self.stats.state == "running":
                backoff = 0.5  # audio flowed: the next failure is a new outage, retried quickly
            if reason and not self._stop.is_set():
                if self.stats.state != "retrying" or reason != self.stats.last_error:
                    log.error("audio: %s stopped (%s); reopening", self.name, reason)
                self.stats.state, self.stats.last_error = "retrying", reason
                self._outage_since = self._outage_since or self._last_audio or time.monotonic()
                if self._stop.wait(backoff):  # a server that accepts and drops at once is not hammered
                    break
                backoff = min(backoff * 2, self.max_backoff)

    def _open(self, av: Any) -> tuple[Any, Any]:
        container = av.open(self._url, options=open_options(self._url, self.read_timeout),
                            timeout=(self.open_timeout, self.read_timeout))
        try:
            self.media_types = tuple(s.type for s in container.streams)
            if not container.streams.audio:
                raise SourceError("the stream has no audio track: enable audio on the camera (or its sub-stream)")
            audio = container.streams.audio[0]
        except BaseException:
            _close_quietly(container)
            raise
        self.codec = audio.codec_context.name
        log.debug("audio: opened %s (%s, %d Hz, %d channel(s))", self.name, self.codec, audio.rate or 0,
                  audio.channels or 0)
        return container, audio

    def _pump(self, av: Any, container: Any, audio: Any) -> str:
        """Decode audio packets into the ring until the stream ends, errs or stalls; why it stopped."""
        convert: Converter | None = None
        opened = time.monotonic()
        try:
            for packet in container.demux():  # all streams, so that a stall shows even if video flows
                if self._stop.is_set():
                    return ""
                if packet.stream.index != audio.index:
                    if time.monotonic() - max(self._last_audio, opened) > self.read_timeout:
                        return f"no audio for {self.read_timeout:.0f}s"
                    continue
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    continue  # one damaged packet: the next one decodes
                for frame in frames:
                    if convert is None or frame.rate != convert.in_rate:
                        if convert is not None:
                            self._write(convert.flush())
                        convert = Converter(frame.rate, self.ring.sample_rate)
                    samples = convert(frame_samples(frame))
                    if self.stats.state != "running":
                        self._resume(frame.rate, len(frame.layout.channels))
                    self._write(samples)
                    self._last_audio = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - av.error.TimeoutError (stalled), ConnectionResetError, EOFError, ...
            return _explain(exc, self._url, opening=False, waited=self.read_timeout)
        finally:
            if convert is not None and not self._stop.is_set():
                self._write(convert.flush())
        return "" if self._stop.is_set() else "the stream ended: the server restarted or the connection dropped"

    def _resume(self, rate: int, channels: int) -> None:
        """The first audio of a connection: close the outage it ends (silence, counters), then run.

        The outage ends here rather than at open, because a camera can take a second or two
        after PLAY to send audio; filling up to now keeps the sample count on the wall clock.
        """
        if self._outage_since is not None:
            lost = time.monotonic() - self._outage_since
            self._fill_gap(lost)
            self.stats.restarts += 1
            self._outage_since = None
            log.info("audio: %s resumed after %.1fs (%s, %d Hz)", self.name, lost, self.codec, rate)
        else:
            log.info("audio: streaming %s (%s, %d Hz, %d channel(s))", self.name, self.codec, rate, channels)
        self.stats.state, self.stats.last_error = "running", ""

    def _write(self, samples: np.ndarray) -> None:
        if len(samples) and not self._stop.is_set():
            self.ring.write(samples, wall_time=self.ring.clock())
            self.stats.callbacks += 1
            self.stats.first_audio.set()

    def _fill_gap(self, seconds: float) -> None:
        fill_gap(self.ring, self.stats, seconds)


def _close_quietly(container: Any) -> None:
    try:
        container.close()
    except Exception as exc:  # noqa: BLE001 - a broken connection may refuse to close cleanly; it is dropped anyway
        log.debug("audio: closing a stream failed (%s)", type(exc).__name__)
