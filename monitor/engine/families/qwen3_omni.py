"""Qwen3-Omni (Qwen/Qwen3-Omni-30B-A3B-Instruct): its (mixture-of-experts) thinker.

Loaded as Qwen2.5-Omni is: the full checkpoint without its talker, the processor audio-only,
3-D positions from the model's `get_rope_index`. Its audio encoder (transformers 5.24) encodes a
batch of clips unlike each alone: the self-check finds that at load and gives each window its
own forward.
"""

from monitor.engine.families import Family, Talker

FAMILY = Family(
    name="qwen3_omni",
    title="Qwen3-Omni",
    model_types=("qwen3_omni_moe", "qwen3_omni_moe_thinker"),
    talker=Talker("qwen3_omni_moe", "Qwen3OmniMoeForConditionalGeneration"),
    audio_only_processor="Qwen3OmniMoeProcessor",
    positions="rope_index",
    tiny="qwen3_omni",
)
