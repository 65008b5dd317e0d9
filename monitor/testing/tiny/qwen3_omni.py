"""A random-weight Qwen3-Omni (MoE) thinker (Qwen/Qwen3-Omni-30B-A3B-Instruct's architecture), files as published.

    python -m monitor.testing.tiny_model OUT_DIR --arch qwen3_omni [--size small]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monitor.testing.tiny import omni
from monitor.testing.tiny.common import AUDIO, INIT, TEXT, VISION, chat_template, mrope, write

SIZES = TEXT
# The media tokens as the processor names them.
NAMES = dict(audio_token="<|audio_pad|>", audio_bos_token="<|audio_start|>", audio_eos_token="<|audio_end|>",
             image_token="<|image_pad|>", video_token="<|video_pad|>", vision_bos_token="<|vision_start|>",
             vision_eos_token="<|vision_end|>")

# Qwen/Qwen3-Omni-30B-A3B-Instruct: no default system turn, the audio as <|audio_start|><|audio_pad|><|audio_end|>.
QWEN3_OMNI_TEMPLATE = chat_template(
    None, {"image": "<|vision_start|><|image_pad|><|vision_end|>", "audio": "<|audio_start|><|audio_pad|><|audio_end|>",
           "video": "<|vision_start|><|video_pad|><|vision_end|>"})


def make(size: str) -> tuple[Any, Any]:
    """(model, processor) of a random-weight Qwen3-Omni (MoE) thinker."""
    from transformers import (Qwen3OmniMoeProcessor, Qwen3OmniMoeThinkerConfig,
                              Qwen3OmniMoeThinkerForConditionalGeneration)

    tokenizer = omni.make_tokenizer(NAMES)
    ids = omni.token_ids(tokenizer, NAMES)
    text = dict(TEXT[size])
    hidden = text["hidden_size"]
    # Expert widths a multiple of 16 bytes: the grouped expert matmul wants aligned strides.
    moe = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=text.pop("intermediate_size") // 64 * 16)
    config = Qwen3OmniMoeThinkerConfig(
        audio_config=dict(**AUDIO[size], num_mel_bins=128, output_dim=hidden, downsample_hidden_size=32,
                          initializer_range=INIT),
        vision_config=dict(**VISION, out_hidden_size=hidden, deepstack_visual_indexes=[0], initializer_range=INIT),
        text_config=dict(**text, **moe, vocab_size=len(tokenizer), rope_parameters=mrope(size),
                         initializer_range=INIT, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id),
        audio_token_id=ids["audio_token"], image_token_id=ids["image_token"], video_token_id=ids["video_token"],
        audio_start_token_id=ids["audio_bos_token"], vision_start_token_id=ids["vision_bos_token"],
        user_token_id=tokenizer.convert_tokens_to_ids("user"), initializer_range=INIT,
    )
    return omni.thinker(config, Qwen3OmniMoeThinkerForConditionalGeneration, Qwen3OmniMoeProcessor, tokenizer,
                        QWEN3_OMNI_TEMPLATE)


def build(out_dir: str | Path, size: str = "tiny", seed: int = 0, dtype: str = "float32") -> Path:
    """Write a random-weight Qwen3-Omni thinker, its processor files laid out as published, to `out_dir`."""
    return write(out_dir, "qwen3_omni", size, seed, lambda size, out: make(size), save_processor=omni.save_processor)
