"""A window's audio as the models take it: fitted to what they hear, and as a float WAV file, without torch.

Every backend fits audio the same way (`fit`): mono float32, cut to the 30 s the model hears (a
server cuts longer audio silently, the processor would cut it too), and zero-padded to a
shortest length (a server refuses very short audio; an encoder needs a few frames; SALMONN pads
to one second). Samples go out as 32-bit float WAV (`wav_base64`), not 16-bit PCM: a served model,
or a processor that takes audio only as a file (Voxtral's), must hear exactly the samples the local
engine would, or the scores drift apart by the quantisation.
"""

from __future__ import annotations

import base64
import io

import numpy as np

MAX_SECONDS = 30.0  # what Qwen2-Audio's encoder hears
MIN_SECONDS = 0.1  # shorter clips are zero-padded: the encoder needs a few frames to emit 2+ audio tokens


def fit(audio: np.ndarray, sample_rate: int, longest: int | None = None, shortest: float = MIN_SECONDS) -> np.ndarray:
    """Mono float32, at most `longest` samples (default 30 s), at least `shortest` seconds (zero-padded)."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    longest = int(MAX_SECONDS * sample_rate) if longest is None else longest
    if len(audio) > longest:
        audio = audio[:longest]
    minimum = int(shortest * sample_rate)
    if len(audio) < minimum:
        audio = np.concatenate([audio, np.zeros(minimum - len(audio), dtype=np.float32)])
    return audio


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """A mono 32-bit float WAV file of the samples, in memory."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(audio, dtype=np.float32).reshape(-1), int(sample_rate), format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def wav_base64(audio: np.ndarray, sample_rate: int) -> str:
    """The samples as a base64 float WAV file (an `input_audio` message part's `data`; a processor's `base64` audio)."""
    return base64.b64encode(wav_bytes(audio, sample_rate)).decode("ascii")
