"""Per-window measurements the gates use: RMS level in dBFS and webrtcvad speech frames."""

from __future__ import annotations

import numpy as np
import webrtcvad

FLOOR_DBFS = -120.0
VAD_RATE = 16_000
VAD_FRAME = 480  # 30 ms at 16 kHz


def dbfs(samples: np.ndarray) -> float:
    """RMS level relative to full scale (a full-scale sine is about -3 dBFS); silence is -120."""
    if len(samples) == 0:
        return FLOOR_DBFS
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return max(FLOOR_DBFS, 20.0 * np.log10(rms)) if rms > 0 else FLOOR_DBFS


class SpeechFrames:
    """webrtcvad decisions for 30 ms frames aligned to absolute sample indices (frame k = [480k, 480k+480)).

    Each frame is classified once, however many overlapping windows contain it.
    """

    def __init__(self, aggressiveness: int, capacity_frames: int):
        self._vad = webrtcvad.Vad(int(aggressiveness))
        self.capacity = int(capacity_frames)
        self._flags = np.zeros(self.capacity, dtype=bool)
        self.next_frame = 0  # first frame not yet classified

    def classify(self, samples: np.ndarray, first_frame: int) -> None:
        """Classify whole frames of `samples`, whose first sample is frame `first_frame`'s first."""
        pcm = (np.clip(samples, -1.0, 1.0 - 1.0 / 32768) * 32768.0).astype("<i2")
        n = len(pcm) // VAD_FRAME
        for k in range(n):
            frame = pcm[k * VAD_FRAME : (k + 1) * VAD_FRAME].tobytes()
            self._flags[(first_frame + k) % self.capacity] = self._vad.is_speech(frame, VAD_RATE)
        self.next_frame = max(self.next_frame, first_frame + n)

    def skip_to(self, frame: int) -> None:
        """Frames before `frame` that were never classified count as non-speech."""
        n = frame - self.next_frame
        if n >= self.capacity:  # an outage longer than the ring: every slot goes
            self._flags[:] = False
        elif n > 0:
            self._flags[np.arange(self.next_frame, frame) % self.capacity] = False
        self.next_frame = max(self.next_frame, frame)

    def flags(self, first_frame: int, last_frame: int) -> np.ndarray:
        """Decisions for frames [first_frame, last_frame)."""
        idx = np.arange(first_frame, last_frame) % self.capacity
        return self._flags[idx].copy()
