"""A window's audio as the base64 WAV an OpenAI-compatible server takes, without torch.

The samples are sent as 32-bit float WAV, not 16-bit PCM: the served model must hear exactly the
samples the local engine would, or the two backends' scores drift apart by the quantisation.
The audio is fitted the way the local engine fits it: cut to the 30 s the model can hear (a
server cuts longer audio silently), and padded to 0.1 s (a server refuses very short audio).
"""

from __future__ import annotations

import base64
import io

import numpy as np

MAX_SECONDS = 30.0  # what Qwen2-Audio's encoder hears; the local engine cuts here too
MIN_SECONDS = 0.1  # shorter clips are zero-padded, as the local engine does


def fit(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono float32, at most 30 s, at least 0.1 s (zero-padded)."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    longest = int(MAX_SECONDS * sample_rate)
    if len(audio) > longest:
        audio = audio[:longest]
    shortest = int(MIN_SECONDS * sample_rate)
    if len(audio) < shortest:
        audio = np.concatenate([audio, np.zeros(shortest - len(audio), dtype=np.float32)])
    return audio


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """A mono 32-bit float WAV file of the samples, in memory."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(audio, dtype=np.float32).reshape(-1), int(sample_rate), format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def wav_base64(audio: np.ndarray, sample_rate: int) -> str:
    """`fit` audio as a base64 WAV, the `data` of an `input_audio` message part."""
    return base64.b64encode(wav_bytes(fit(audio, sample_rate), sample_rate)).decode("ascii")
