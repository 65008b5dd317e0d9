"""A random-weight Qwen2.5-Omni thinker (Qwen/Qwen2.5-Omni-7B's architecture), its processor files as published.

    python -m monitor.testing.tiny_model OUT_DIR --arch qwen2_5_omni [--size small]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monitor.testing.tiny import omni
from monitor.testing.tiny.common import AUDIO, INIT, TEXT, VISION, chat_template, mrope, write

SIZES = TEXT
# The media tokens as the processor names them.
NAMES = dict(audio_token="<|AUDIO|>", audio_bos_token="<|audio_bos|>", audio_eos_token="<|audio_eos|>",
             image_token="<|IMAGE|>", video_token="<|VIDEO|>", vision_bos_token="<|vision_bos|>",
             vision_eos_token="<|vision_eos|>")

# Qwen/Qwen2.5-Omni-7B: its own default system turn, the audio as <|audio_bos|><|AUDIO|><|audio_eos|>.
QWEN2_5_OMNI_TEMPLATE = chat_template(
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving auditory and "
    "visual inputs, as well as generating text and speech.",
    {"image": "<|vision_bos|><|IMAGE|><|vision_eos|>", "audio": "<|audio_bos|><|AUDIO|><|audio_eos|>",
     "video": "<|vision_bos|><|VIDEO|><|vision_eos|>"})


def make(size: str) -> tuple[Any, Any]:
    """(model, processor) of a random-weight Qwen2.5-Omni thinker."""
    from transformers import (Qwen2_5OmniProcessor, Qwen2_5OmniThinkerConfig,
                              Qwen2_5OmniThinkerForConditionalGeneration)

    tokenizer = omni.make_tokenizer(NAMES)
    ids = omni.token_ids(tokenizer, NAMES)
    hidden = TEXT[size]["hidden_size"]
    config = Qwen2_5OmniThinkerConfig(
        audio_config=dict(**AUDIO[size], num_mel_bins=128, output_dim=hidden, initializer_range=INIT),
        vision_config=dict(**VISION, out_hidden_size=hidden, fullatt_block_indexes=[0], initializer_range=INIT),
        text_config=dict(**TEXT[size], vocab_size=len(tokenizer), rope_parameters=mrope(size),
                         initializer_range=INIT, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id),
        audio_token_index=ids["audio_token"], image_token_index=ids["image_token"],
        video_token_index=ids["video_token"], audio_start_token_id=ids["audio_bos_token"],
        audio_end_token_id=ids["audio_eos_token"], vision_start_token_id=ids["vision_bos_token"],
        vision_end_token_id=ids["vision_eos_token"], user_token_id=tokenizer.convert_tokens_to_ids("user"),
        initializer_range=INIT,
    )
    return omni.thinker(config, Qwen2_5OmniThinkerForConditionalGeneration, Qwen2_5OmniProcessor, tokenizer,
                        QWEN2_5_OMNI_TEMPLATE)


def build(out_dir: str | Path, size: str = "tiny", seed: int = 0, dtype: str = "float32") -> Path:
    """Write a random-weight Qwen2.5-Omni thinker, its processor files laid out as published, to `out_dir`."""
    return write(out_dir, "qwen2_5_omni", size, seed, lambda size, out: make(size), save_processor=omni.save_processor)
