"""PyAV (FFmpeg) decoding shared by camera/network streams and compressed files.

libsndfile reads WAV/FLAC/OGG; what phones record (M4A/AAC, MP3, 3GP/AMR, CAF/ALAC) and what
cameras send (AAC, G.711, Opus over RTSP; MP3 over HTTP) needs FFmpeg, which the `av` wheel
bundles. Both users get plain numpy blocks at the source's own rate and hand them to the same
`Converter` as the microphone, so resampling and downmixing happen in one place.

`av` is imported inside the functions: importing this module costs nothing, and a missing
wheel is reported as a one-line error by whoever needed it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from monitor.audio.convert import downmix

log = logging.getLogger(__name__)


class DecodeError(RuntimeError):
    """FFmpeg could not open or decode the input; the message is one line."""


def frame_samples(frame: Any) -> np.ndarray:
    """An `av.AudioFrame` as (samples, channels), in the frame's own sample type.

    Planar frames come out of `to_ndarray` as (channels, samples), packed ones as
    (1, samples * channels); integer types stay integers (`downmix` scales them).
    """
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.is_planar:
        return data.T
    return data.reshape(-1, channels)


def error_text(exc: BaseException) -> str:
    """The first line of an exception's message without the file name PyAV appends to it."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text).splitlines()[0]


def ffmpeg_available() -> bool:
    """Whether the `av` wheel can be imported (the decoder behind streams and compressed files)."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


class AvFile:
    """A compressed audio file read block by block, with the subset of `soundfile.SoundFile`
    that `FileSource` uses (`samplerate`, `channels`, `frames`, `read`, `close`).

    It delivers mono (channels averaged like the microphone's) at the rate of the first decoded
    frame; a frame at another rate (an AAC stream that switches to SBR) is resampled to it, so
    the source's `Converter` sees one rate from start to end. Decoding is deterministic: the
    same file gives the same samples on every run, which replay and eval rely on.
    """

    def __init__(self, path: str | Path):
        try:
            import av
        except ImportError:
            raise DecodeError("the `av` package (FFmpeg) is not installed: pip install av") from None
        self._av = av
        try:
            self._container = av.open(str(path))
        except Exception as exc:  # noqa: BLE001 - av.error.InvalidDataError, PermissionError, ...: one line either way
            raise DecodeError(error_text(exc)) from None
        if not self._container.streams.audio:
            self._container.close()
            raise DecodeError("no audio track")
        self._stream = self._container.streams.audio[0]
        self._frames_iter = self._decode()
        self._pending: list[np.ndarray] = []
        self._pending_len = 0
        self._resampler: Any = None
        self.skipped_packets = 0
        self.channels = 1
        try:
            first = next(self._frames_iter, None)
        except Exception as exc:  # noqa: BLE001 - demuxing or decoding failed before any audio
            self.close()
            raise DecodeError(error_text(exc)) from None
        if first is None:
            self.close()
            raise DecodeError("no decodable audio")
        self.samplerate = int(first.rate)
        self.source_channels = len(first.layout.channels)
        self.codec = self._stream.codec_context.name
        self._push(first)
        self.frames = round(self._duration_seconds() * self.samplerate)

    def _duration_seconds(self) -> float:
        """From the container's header (estimated by FFmpeg for a headerless MP3)."""
        stream = self._stream
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        if self._container.duration is not None:
            return self._container.duration / 1_000_000
        return 0.0

    def _decode(self) -> Iterator[Any]:
        """Frames in order; a packet that does not decode is skipped (counted, warned once)."""
        av = self._av
        for packet in self._container.demux(self._stream):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError as exc:
                self.skipped_packets += 1
                if self.skipped_packets == 1:
                    log.warning("audio.source: skipping undecodable audio in %s (%s)", self._container.name, error_text(exc))
                continue
            yield from frames

    def _push(self, frame: Any) -> None:
        if frame.rate != self.samplerate:
            if self._resampler is None:
                self._resampler = self._av.AudioResampler(format="flt", layout="mono", rate=self.samplerate)
            frames = self._resampler.resample(frame)
        else:
            frames = [frame]
        for f in frames:
            mono = downmix(frame_samples(f))
            if len(mono):
                self._pending.append(mono)
                self._pending_len += len(mono)

    def _flush_resampler(self) -> None:
        if self._resampler is not None:
            for f in self._resampler.resample(None):
                self._pending.append(downmix(frame_samples(f)))
                self._pending_len += f.samples
            self._resampler = None

    def read(self, frames: int, dtype: str = "float32", always_2d: bool = True) -> np.ndarray:
        """Up to `frames` samples as (n, 1) float32; fewer only at the end of the file."""
        while self._pending_len < frames:
            frame = next(self._frames_iter, None)
            if frame is None:
                self._flush_resampler()
                break
            self._push(frame)
        data = np.concatenate(self._pending) if self._pending else np.zeros(0, dtype=np.float32)
        out, rest = data[:frames], data[frames:]
        self._pending = [rest] if len(rest) else []
        self._pending_len = len(rest)
        out = out.astype(dtype, copy=False)
        return out[:, None] if always_2d else out

    def close(self) -> None:
        self._container.close()
