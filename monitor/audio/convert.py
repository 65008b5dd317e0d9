"""Any rate and channel count -> mono float32 at the model rate, in streaming chunks."""

from __future__ import annotations

import numpy as np
import soxr


class Converter:
    """Stateful downmix + resample; feed chunks in order, call `flush()` at the end of a stream."""

    def __init__(self, in_rate: int, out_rate: int):
        self.in_rate = int(in_rate)
        self.out_rate = int(out_rate)
        self._stream = None if self.in_rate == self.out_rate else soxr.ResampleStream(
            self.in_rate, self.out_rate, 1, dtype="float32", quality="HQ"
        )

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        """(frames,) or (frames, channels) of any float/int dtype -> (frames',) float32."""
        mono = downmix(chunk)
        if self._stream is None:
            return mono
        return self._stream.resample_chunk(mono, last=False)

    def flush(self) -> np.ndarray:
        """The resampler's tail (the last few ms it held back)."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        return self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


def downmix(chunk: np.ndarray) -> np.ndarray:
    """Average channels; integers are scaled to [-1, 1)."""
    x = np.asarray(chunk)
    if x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        x = (x.astype(np.float32) - (info.min + info.max + 1) / 2) / (info.max + 1 - (info.min + info.max + 1) / 2)
    if x.ndim == 2:
        x = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    return np.ascontiguousarray(x, dtype=np.float32)
