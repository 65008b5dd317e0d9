"""Qwen2.5-Omni (Qwen/Qwen2.5-Omni-7B): its thinker, which hears and answers in text.

The published checkpoint holds a thinker and a talker (speech out): it is loaded with its own
class without the talker, and the thinker answers. Its processor also names an image and a video
processor, which need torchvision and which the monitor never uses: it is loaded audio-only.
Positions are 3-D (time, height, width), from the model's own `get_rope_index`.
"""

from monitor.engine.families import Family, Talker

FAMILY = Family(
    name="qwen2_5_omni",
    title="Qwen2.5-Omni",
    model_types=("qwen2_5_omni", "qwen2_5_omni_thinker"),
    talker=Talker("qwen2_5_omni", "Qwen2_5OmniForConditionalGeneration"),
    audio_only_processor="Qwen2_5OmniProcessor",
    positions="rope_index",
    tiny="qwen2_5_omni",
)
