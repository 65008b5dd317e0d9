"""Audio Flamingo 3 (nvidia/audio-flamingo-3-hf): a Whisper-style encoder and a Qwen2 language model.

Its chat template writes the audio as `<sound>` before the question; positions count tokens; its
processor calls the frame mask `input_features_mask`. Its encoder is not Qwen2-Audio's (not cropped).
"""

from monitor.engine.families import Family

FAMILY = Family(
    name="af3",
    title="Audio Flamingo 3",
    model_types=("audioflamingo3",),
    frame_masks=("input_features_mask",),
    tiny="af3",
)
