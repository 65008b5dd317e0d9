"""A random-weight Audio Flamingo 3 (nvidia/audio-flamingo-3-hf's architecture): Whisper-style encoder, Qwen2 LM.

    python -m monitor.testing.tiny_model OUT_DIR --arch af3 [--size small]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monitor.testing.tiny.common import AUDIO, INIT, TEXT, build_tokenizer, chat_template, whisper_features, write

SIZES = TEXT

# nvidia/audio-flamingo-3-hf: Qwen2's turns and default system turn, the audio as <sound>.
AF3_TEMPLATE = chat_template("You are a helpful assistant.", {"audio": "<sound>"})


def make(size: str) -> tuple[Any, Any]:
    """(model, processor) of a random-weight Audio Flamingo 3 (Whisper-style encoder, Qwen2 language model)."""
    from transformers import AudioFlamingo3Config, AudioFlamingo3ForConditionalGeneration, AudioFlamingo3Processor

    tokenizer = build_tokenizer(extra_special=("<sound>",))
    audio = AUDIO[size]
    config = AudioFlamingo3Config(
        audio_config=dict(hidden_size=audio["d_model"], num_hidden_layers=audio["encoder_layers"],
                          num_attention_heads=audio["encoder_attention_heads"],
                          intermediate_size=audio["encoder_ffn_dim"], num_mel_bins=128, initializer_range=INIT),
        text_config=dict(model_type="qwen2", **TEXT[size], vocab_size=len(tokenizer), max_position_embeddings=8192,
                         initializer_range=INIT, tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id),
        audio_token_id=tokenizer.convert_tokens_to_ids("<sound>"),
    )
    config.architectures = ["AudioFlamingo3ForConditionalGeneration"]
    model = AudioFlamingo3ForConditionalGeneration(config)
    processor = AudioFlamingo3Processor(feature_extractor=whisper_features(), tokenizer=tokenizer,
                                        chat_template=AF3_TEMPLATE, audio_token="<sound>")
    return model, processor


def build(out_dir: str | Path, size: str = "tiny", seed: int = 0, dtype: str = "float32") -> Path:
    """Write a random-weight Audio Flamingo 3 to `out_dir`."""
    return write(out_dir, "af3", size, seed, lambda size, out: make(size))
