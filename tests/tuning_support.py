"""Recordings with known loud stretches, and rules whose outcome on them is known whatever the model says.

A yes_no rule with `threshold: 0` counts any score as a hit, and its level gate turns quiet
windows into misses: it is ON exactly while a window hears a burst. With windows of 2 s every
1 s and bursts on whole seconds, a burst [a, b] gives ON at a + 1 (the first window ending
inside it) and OFF at b + 2 (the first window that no longer hears it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 16_000
BURST_STD = 0.2  # about -14 dBFS: a window half full of it is still far above the gate
FLOOR_STD = 1e-4  # about -80 dBFS of background hiss

GATED_RULES = """\
rules:
  - id: loud
    ask: Does this recording contain any sound at all? Answer yes or no.
    threshold: 0.0
    release: 0.0
    gate: {min_dbfs: -40}
  - id: lifted
    ask: Is a dog barking in this recording? Answer yes or no.
    use: lift
    threshold: 0.1
    release: 0.05
    patience: 2
"""


def bursts_wav(path: Path, seconds: float, bursts: list[tuple[float, float]] = (), seed: int = 0,
               rate: int = RATE) -> Path:
    """Background hiss with loud white-noise bursts over [start, end) seconds."""
    rng = np.random.default_rng(seed)
    audio = (rng.standard_normal(int(seconds * rate)) * FLOOR_STD).astype(np.float32)
    for start, end in bursts:
        a, b = int(start * rate), int(end * rate)
        audio[a:b] = (rng.standard_normal(b - a) * BURST_STD).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, rate)
    return path
