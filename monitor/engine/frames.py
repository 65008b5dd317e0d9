"""How many audio embeddings a Whisper-style encoder makes of a clip's mel frames (Qwen2-Audio's rule).

conv1 (stride 1) then conv2 (stride 2, padding 1) make `positions(frames)` encoder positions;
average pooling (stride 2) then makes `audio_tokens(frames)` embeddings, one audio placeholder
each in the prompt (about 25 per second of audio). The chat layout's fast prefix counts its
placeholders with it, the cropped encoder its outputs.
"""

from __future__ import annotations


def positions(frames: int) -> int:
    """Encoder positions (after conv2, stride 2) made from `frames` valid mel frames."""
    return (frames - 1) // 2 + 1


def audio_tokens(frames: int) -> int:
    """Audio embeddings the encoder emits for `frames` valid mel frames (conv stride 2, pool 2)."""
    return (positions(frames) - 2) // 2 + 1
