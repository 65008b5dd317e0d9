"""Qwen2-Audio (Qwen/Qwen2-Audio-7B-Instruct): the family the engine was built on.

A Whisper-style encoder over 30 s of mel frames that masks its padding, a projector that takes
its pooled frames one by one, and a Qwen2 language model: so its encoder can be run over each
window's own frames (`monitor.engine.local.encoder`, checked at load), and its prefix built
without the processor (checked at load). Positions count tokens.
"""

from monitor.engine.families import Family

FAMILY = Family(
    name="qwen2_audio",
    title="Qwen2-Audio",
    model_types=("qwen2_audio",),
    crop_encoder=True,
    tiny="qwen2_audio",
)
