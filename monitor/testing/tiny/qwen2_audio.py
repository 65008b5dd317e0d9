"""Random-weight Qwen2-Audio checkpoints that load through the same code path as the real one.

No weights can be downloaded in CI, yet loading, prompt layout, batching, caching and speed
must be tested on the real architecture. So this writes a complete checkpoint folder — model,
processor (Whisper feature extractor + tokenizer + the Instruct chat template) and generation
config — built offline, with the tokenizer of `common` (Qwen2's special tokens) and the audio
encoder's real 30-second input (3000 mel frames, 1500 positions).

    python -m monitor.testing.tiny_model OUT_DIR --size tiny|served|small|full [--dtype bfloat16]
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from monitor.testing.tiny.common import SAMPLE_RATE, SPECIAL_TOKENS, build_tokenizer

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")

# The chat template of Qwen/Qwen2-Audio-7B-Instruct: prompts formatted exactly as for the real model.
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif 'text' in content %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)

# Sizes: `tiny` for unit tests (runs in milliseconds), `served` as tiny but with 32-dim attention
# heads (vLLM's CPU attention backend takes head sizes 32, 64, 80, ... only: a 16-dim model starts
# but dies on its first request), `small` for CPU benchmarks (Qwen2-Audio's proportions: 128-dim
# attention heads, MLP 2.69x hidden, no GQA, 30-second encoder), `full` is the published
# Qwen2-Audio-7B architecture (for a GPU; ~8.4B parameters).
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "audio": dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64),
        "text": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2),
    },
    "served": {
        "audio": dict(d_model=64, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=128),
        "text": dict(hidden_size=128, intermediate_size=344, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2),
    },
    "small": {
        "audio": dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536),
        "text": dict(hidden_size=640, intermediate_size=1720, num_hidden_layers=10, num_attention_heads=5,
                     num_key_value_heads=5),
    },
    "full": {
        "audio": dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120),
        "text": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=156032, max_position_embeddings=8192, rms_norm_eps=1e-5),
    },
}
FULL_LAYERS = SIZES["full"]["text"]["num_hidden_layers"]  # 32 text layers and 32 audio encoder layers
SLICE_LAYERS = 2
SIZES["slice"] = {
    "audio": {**SIZES["full"]["audio"], "encoder_layers": SLICE_LAYERS},
    "text": {**SIZES["full"]["text"], "num_hidden_layers": SLICE_LAYERS},
}


def make_config(size: str, tokenizer: Any, layers: int | None = None) -> Any:
    """The Qwen2AudioConfig of a size, wired to the tokenizer's special-token ids.

    `layers`: that many text layers and as many audio encoder layers instead of the size's own
    (the `slice` bench's depths); every width stays the size's.
    """
    from transformers import Qwen2AudioConfig

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    spec = SIZES[size]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(model_type="qwen2", vocab_size=len(tokenizer), max_position_embeddings=8192,
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                tie_word_embeddings=False)
    text.update(spec["text"])
    if layers is not None:
        if layers < 1:
            raise ValueError(f"layers must be at least 1 (got {layers})")
        text["num_hidden_layers"] = layers
    text["vocab_size"] = max(text["vocab_size"], len(tokenizer))
    audio = dict(model_type="qwen2_audio_encoder", num_mel_bins=128, max_source_positions=1500)
    audio.update(spec["audio"])
    if layers is not None:
        audio["encoder_layers"] = layers
    # Wider initial weights than a trained model's 0.02 so that random answers are not all ~50/50:
    # tests compare scores that actually differ between questions and windows.
    init = 0.02 if size in ("full", "slice") else 0.2
    config = Qwen2AudioConfig(audio_config=audio, text_config=text, audio_token_index=ids["<|AUDIO|>"])
    config.text_config.initializer_range = init
    config.audio_config.initializer_range = init
    config.architectures = ["Qwen2AudioForConditionalGeneration"]
    return config


def count_parameters(size: str, layers: int | None = None) -> int:
    """Parameters of a size's model (at `layers` deep, see make_config), counted without allocating its weights."""
    import torch
    from transformers import Qwen2AudioForConditionalGeneration

    config = make_config(size, build_tokenizer(), layers)
    with torch.device("meta"):
        model = Qwen2AudioForConditionalGeneration(config)
    return sum(p.numel() for p in model.parameters())


def make_processor(tokenizer: Any | None = None) -> Any:
    """A Qwen2AudioProcessor: Whisper features (128 mel bins, 30 s), the tokenizer, the Instruct chat template."""
    from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

    features = WhisperFeatureExtractor(
        feature_size=128, sampling_rate=SAMPLE_RATE, hop_length=160, chunk_length=30, n_fft=400,
        padding_value=0.0, return_attention_mask=True,
    )
    return Qwen2AudioProcessor(feature_extractor=features, tokenizer=tokenizer or build_tokenizer(),
                               chat_template=CHAT_TEMPLATE)


def make_model(size: str, processor: Any, seed: int = 0, dtype: str = "float32", device: str = "cpu",
               layers: int | None = None) -> Any:
    """A random-weight Qwen2AudioForConditionalGeneration of a size (at `layers` deep), built directly on `device`."""
    import torch
    from transformers import GenerationConfig, Qwen2AudioForConditionalGeneration

    tokenizer = processor.tokenizer
    config = make_config(size, tokenizer, layers)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))  # initialise in the target dtype: a 7B model never exists in fp32
    try:
        with torch.device(device):
            model = Qwen2AudioForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=tokenizer.pad_token_id, do_sample=False,
    )
    return model


def build(out_dir: str | Path, size: str = "tiny", seed: int = 0, dtype: str = "float32") -> Path:
    """Write a random-weight Qwen2-Audio checkpoint (model, processor, tokenizer) to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor = make_processor()
    model = make_model(size, processor, seed=seed, dtype=dtype)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    log.info("wrote a %s random-weight Qwen2-Audio (%.1fM parameters) to %s",
             size, sum(p.numel() for p in model.parameters()) / 1e6, out)
    return out
