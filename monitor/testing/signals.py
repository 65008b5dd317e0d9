"""Test signals and windows built from numpy, for tests and benchmarks that need no capture device."""

from __future__ import annotations

import numpy as np

from monitor.audio.levels import VAD_FRAME, dbfs
from monitor.windows import Utterance, Window

RATE = 16_000


def noise(seconds: float, level: float = 0.1, seed: int = 0) -> np.ndarray:
    """White noise, float32 mono at 16 kHz."""
    return (np.random.default_rng(seed).standard_normal(int(round(seconds * RATE))) * level).astype(np.float32)


def tone(seconds: float, freq: float = 440.0, level: float = 0.3) -> np.ndarray:
    """A sine tone, float32 mono at 16 kHz."""
    t = np.arange(int(round(seconds * RATE))) / RATE
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def make_window(audio: np.ndarray, seq: int = 0, start: int = 0, t0: float = 1_700_000_000.0,
                utterances: tuple[Utterance, ...] = ()) -> Window:
    """A `Window` over the given samples, as the scheduler would cut it (speech flags left empty)."""
    audio = np.asarray(audio, dtype=np.float32)
    end = start + len(audio)
    frames = len(audio) // VAD_FRAME
    return Window(
        seq=seq, start=start, end=end, sample_rate=RATE, t_start=t0 + start / RATE, t_end=t0 + end / RATE,
        audio=audio, dbfs=dbfs(audio), speech_ratio=0.0, speech=np.zeros(frames, dtype=bool),
        utterances=utterances,
    )
