"""Random-weight checkpoints of the other audio-language families the engine serves.

Each builder writes what `tiny_model.build` writes for Qwen2-Audio — model, processor (feature
extractor, a locally trained tokenizer, a chat template shaped like the real one: in particular
where it puts the audio) and generation config — for one more architecture:

    python -m monitor.testing.tiny_model OUT_DIR --arch qwen2_5_omni|qwen3_omni|af3|voxtral|gemma3n [--size tiny|small]

Only the thinker of an Omni model is built (it answers in text; the talker speaks); its processor
files are laid out as the published Omni checkpoints ship them (`save_omni_processor`: the image
processor named beside the audio features' settings), and its processor is built, as the engine
loads it, without image and video processors (`monitor.engine.audio_only`). Voxtral's
tokenizer is a mistral_common tekken file instead of a chat template (see `tiny_voxtral`).
Gemma 3n is written without its vision tower's weights (a timm network; see `audio_only`), as the
engine loads it; its own tokenizer is in `tiny_gemma`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monitor.testing.tiny_model import SAMPLE_RATE, build_tokenizer

log = logging.getLogger(__name__)

def _chat_template(default_system: str | None, media: dict[str, str]) -> str:
    """A ChatML template (Qwen's turns) that writes each media item as `media[type]`, where it stands.

    The user's content is written in order, so the audio stands before the question text as the
    engine asks it; `default_system` is the system turn the template adds when none is given.
    """
    system = ("{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n" + default_system
              + "<|im_end|>\n{% endif %}") if default_system else ""
    branches = "".join(f"{{% {'if' if i == 0 else 'elif'} content['type'] == '{kind}' or '{kind}' in content %}}{marker}"
                       for i, (kind, marker) in enumerate(media.items()))
    return ("{% for message in messages %}" + system + "<|im_start|>{{ message['role'] }}\n"
            "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
            "{% for content in message['content'] %}" + branches
            + "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}"
            "{% endif %}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


# Qwen/Qwen2.5-Omni-7B: its own default system turn, the audio as <|audio_bos|><|AUDIO|><|audio_eos|>.
QWEN2_5_OMNI_TEMPLATE = _chat_template(
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving auditory and "
    "visual inputs, as well as generating text and speech.",
    {"image": "<|vision_bos|><|IMAGE|><|vision_eos|>", "audio": "<|audio_bos|><|AUDIO|><|audio_eos|>",
     "video": "<|vision_bos|><|VIDEO|><|vision_eos|>"})
# Qwen/Qwen3-Omni-30B-A3B-Instruct: no default system turn, the audio as <|audio_start|><|audio_pad|><|audio_end|>.
QWEN3_OMNI_TEMPLATE = _chat_template(
    None, {"image": "<|vision_start|><|image_pad|><|vision_end|>", "audio": "<|audio_start|><|audio_pad|><|audio_end|>",
           "video": "<|vision_start|><|video_pad|><|vision_end|>"})
# nvidia/audio-flamingo-3-hf: Qwen2's turns and default system turn, the audio as <sound>.
AF3_TEMPLATE = _chat_template("You are a helpful assistant.", {"audio": "<sound>"})

# Text-model proportions per size: `tiny` for tests, `small` for CPU benchmarks (128-dim heads).
TEXT = {
    "tiny": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    "small": dict(hidden_size=640, intermediate_size=1720, num_hidden_layers=10, num_attention_heads=5,
                  num_key_value_heads=5),
}
AUDIO = {
    "tiny": dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64),
    "small": dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536),
}
VISION = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2)  # present in the class, never used here
INIT = 0.2  # wider than a trained model's 0.02, so that random answers differ between questions


def _head_dim(size: str) -> int:
    return TEXT[size]["hidden_size"] // TEXT[size]["num_attention_heads"]


def _mrope(size: str) -> dict[str, Any]:
    """Rotary parameters with the 3-D (temporal, height, width) sections scaled to the head size."""
    half = _head_dim(size) // 2
    t = half // 4
    h = (half - t) // 2
    return {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [t, h, half - t - h]}


def _whisper_features(attention_mask: bool = True) -> Any:
    """128-bin Whisper features over 30 s (Voxtral's preprocessor config asks for no attention mask)."""
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=128, sampling_rate=SAMPLE_RATE, hop_length=160, chunk_length=30,
                                   n_fft=400, padding_value=0.0, return_attention_mask=attention_mask)


def _image_settings(patch_size: int) -> dict[str, Any]:
    """The image processor's entries of the published Omni preprocessor_config.json (never used here)."""
    return {"image_processor_type": "Qwen2VLImageProcessor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711], "min_pixels": 3136, "max_pixels": 12845056,
            "patch_size": patch_size, "temporal_patch_size": 2, "merge_size": 2}


def _qwen_omni_tokens(tok: Any, names: dict[str, str]) -> dict[str, int]:
    return {k: tok.convert_tokens_to_ids(v) for k, v in names.items()}


def _generation(tokenizer: Any, eos: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>")) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(eos_token_id=[tokenizer.convert_tokens_to_ids(t) for t in eos],
                            pad_token_id=tokenizer.pad_token_id, do_sample=False)


QWEN2_5_OMNI_NAMES = dict(audio_token="<|AUDIO|>", audio_bos_token="<|audio_bos|>", audio_eos_token="<|audio_eos|>",
                          image_token="<|IMAGE|>", video_token="<|VIDEO|>", vision_bos_token="<|vision_bos|>",
                          vision_eos_token="<|vision_eos|>")
QWEN3_OMNI_NAMES = dict(audio_token="<|audio_pad|>", audio_bos_token="<|audio_start|>", audio_eos_token="<|audio_end|>",
                        image_token="<|image_pad|>", video_token="<|video_pad|>", vision_bos_token="<|vision_start|>",
                        vision_eos_token="<|vision_end|>")


def _omni_tokenizer(names: dict[str, str]) -> Any:
    extra = tuple(v for v in names.values() if v not in ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"))
    return build_tokenizer(extra_special=extra, **names)


def _omni_thinker(config: Any, model_class: Any, processor_class: Any, tokenizer: Any, template: str) -> tuple[Any, Any]:
    """The thinker model of `config`, and its Omni processor as the engine loads it (Whisper features, the tokenizer)."""
    from monitor.engine.audio_only import without_images_and_videos

    config.architectures = [model_class.__name__]
    processor = without_images_and_videos(processor_class)(feature_extractor=_whisper_features(), tokenizer=tokenizer,
                                                            chat_template=template)
    return model_class(config), processor


# The published Omni checkpoints' image patch size (Qwen/Qwen2.5-Omni-7B: 14, Qwen/Qwen3-Omni-30B-A3B-*: 16).
OMNI_PATCH = {"Qwen2_5OmniProcessor": 14, "Qwen3OmniMoeProcessor": 16}


def save_omni_processor(processor: Any, out: Path) -> None:
    """Write an Omni processor's files as Qwen/Qwen2.5-Omni-7B and Qwen/Qwen3-Omni-30B-A3B-Instruct ship them.

    One preprocessor_config.json holds the Whisper features' settings, the image processor's
    (`image_processor_type: Qwen2VLImageProcessor`) and the processor class (transformers' full
    processor builds its video processor from these too, Qwen2VLVideoProcessor by the model
    type); then the tokenizer's files and chat_template.json. No processor_config.json and no
    video_preprocessor_config.json: the published checkpoints have neither.
    """
    name = type(processor).__name__
    features = processor.feature_extractor.to_dict()
    image = _image_settings(OMNI_PATCH[name])
    clash = {key for key in features.keys() & image.keys() if features[key] != image[key]}
    if clash:
        raise ValueError(f"feature extractor and image processor disagree on {sorted(clash)}")
    (out / "preprocessor_config.json").write_text(
        json.dumps({**features, **image, "processor_class": name}, indent=2, sort_keys=True) + "\n")
    processor.tokenizer.save_pretrained(out)
    (out / "chat_template.json").write_text(json.dumps({"chat_template": processor.chat_template}, indent=2) + "\n")


def qwen2_5_omni(size: str) -> tuple[Any, Any]:
    """(model, processor) of a random-weight Qwen2.5-Omni thinker."""
    from transformers import (Qwen2_5OmniProcessor, Qwen2_5OmniThinkerConfig,
                              Qwen2_5OmniThinkerForConditionalGeneration)

    tokenizer = _omni_tokenizer(QWEN2_5_OMNI_NAMES)
    ids = _qwen_omni_tokens(tokenizer, QWEN2_5_OMNI_NAMES)
    hidden = TEXT[size]["hidden_size"]
    config = Qwen2_5OmniThinkerConfig(
        audio_config=dict(**AUDIO[size], num_mel_bins=128, output_dim=hidden, initializer_range=INIT),
        vision_config=dict(**VISION, out_hidden_size=hidden, fullatt_block_indexes=[0], initializer_range=INIT),
        text_config=dict(**TEXT[size], vocab_size=len(tokenizer), rope_parameters=_mrope(size),
                         initializer_range=INIT, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id),
        audio_token_index=ids["audio_token"], image_token_index=ids["image_token"],
        video_token_index=ids["video_token"], audio_start_token_id=ids["audio_bos_token"],
        audio_end_token_id=ids["audio_eos_token"], vision_start_token_id=ids["vision_bos_token"],
        vision_end_token_id=ids["vision_eos_token"], user_token_id=tokenizer.convert_tokens_to_ids("user"),
        initializer_range=INIT,
    )
    return _omni_thinker(config, Qwen2_5OmniThinkerForConditionalGeneration, Qwen2_5OmniProcessor, tokenizer,
                         QWEN2_5_OMNI_TEMPLATE)


def qwen3_omni(size: str) -> tuple[Any, Any]:
    """(model, processor) of a random-weight Qwen3-Omni (MoE) thinker."""
    from transformers import (Qwen3OmniMoeProcessor, Qwen3OmniMoeThinkerConfig,
                              Qwen3OmniMoeThinkerForConditionalGeneration)

    tokenizer = _omni_tokenizer(QWEN3_OMNI_NAMES)
    ids = _qwen_omni_tokens(tokenizer, QWEN3_OMNI_NAMES)
    text = dict(TEXT[size])
    hidden = text["hidden_size"]
    # Expert widths a multiple of 16 bytes: the grouped expert matmul wants aligned strides.
    moe = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=text.pop("intermediate_size") // 64 * 16)
    config = Qwen3OmniMoeThinkerConfig(
        audio_config=dict(**AUDIO[size], num_mel_bins=128, output_dim=hidden, downsample_hidden_size=32,
                          initializer_range=INIT),
        vision_config=dict(**VISION, out_hidden_size=hidden, deepstack_visual_indexes=[0], initializer_range=INIT),
        text_config=dict(**text, **moe, vocab_size=len(tokenizer), rope_parameters=_mrope(size),
                         initializer_range=INIT, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id),
        audio_token_id=ids["audio_token"], image_token_id=ids["image_token"], video_token_id=ids["video_token"],
        audio_start_token_id=ids["audio_bos_token"], vision_start_token_id=ids["vision_bos_token"],
        user_token_id=tokenizer.convert_tokens_to_ids("user"), initializer_range=INIT,
    )
    return _omni_thinker(config, Qwen3OmniMoeThinkerForConditionalGeneration, Qwen3OmniMoeProcessor, tokenizer,
                         QWEN3_OMNI_TEMPLATE)


def af3(size: str) -> tuple[Any, Any]:
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
    processor = AudioFlamingo3Processor(feature_extractor=_whisper_features(), tokenizer=tokenizer,
                                        chat_template=AF3_TEMPLATE, audio_token="<sound>")
    return model, processor


def voxtral(size: str, out: Path) -> tuple[Any, Any]:
    """(model, processor) of a random-weight Voxtral; its tekken.json is written to `out` (see `tiny_voxtral`)."""
    from monitor.testing.tiny_voxtral import voxtral as build

    return build(size, out, INIT, _whisper_features(attention_mask=False))


def gemma3n(size: str) -> tuple[Any, Any]:
    """(model, processor) of a random-weight Gemma 3n without its vision tower (see `tiny_gemma`)."""
    from monitor.testing.tiny_gemma import build

    return build(size, INIT)


OMNI = ("qwen2_5_omni", "qwen3_omni")  # their processor files laid out as published (save_omni_processor)
NEEDS_MISTRAL_COMMON = ("voxtral",)
# Builders that write their tokenizer file into the output folder themselves and set their own generation config.
WRITES_TOKENIZER = ("voxtral",)
ARCHS: dict[str, Callable[..., tuple[Any, Any]]] = {
    "qwen2_5_omni": qwen2_5_omni,
    "qwen3_omni": qwen3_omni,
    "af3": af3,
    "voxtral": voxtral,
    "gemma3n": gemma3n,
}
EOS = {"gemma3n": ("<end_of_turn>", "<eos>")}  # the end of a turn, as in the real generation configs


def build_arch(out_dir: str | Path, arch: str, size: str = "tiny", seed: int = 0) -> Path:
    """Write a random-weight checkpoint of `arch` (model, processor, tokenizer) to `out_dir`."""
    import torch

    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if size not in TEXT:  # every builder has the sizes of TEXT
        raise ValueError(f"size {size!r} is not built for {arch}; choose one of {', '.join(TEXT)}")
    if arch in NEEDS_MISTRAL_COMMON and importlib.util.find_spec("mistral_common") is None:
        raise RuntimeError(f'{arch}: its tokenizer needs mistral_common: pip install "mistral-common[audio]"')
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if arch in WRITES_TOKENIZER:
        model, processor = ARCHS[arch](size, out)
    else:
        model, processor = ARCHS[arch](size)
        model.generation_config = _generation(processor.tokenizer, *([EOS[arch]] if arch in EOS else []))
    model.eval()
    model.save_pretrained(out)
    if arch in OMNI:
        save_omni_processor(processor, out)
    else:
        processor.save_pretrained(out)
    log.info("wrote a %s random-weight %s (%.1fM parameters) to %s",
             size, arch, sum(p.numel() for p in model.parameters()) / 1e6, out)
    return out
