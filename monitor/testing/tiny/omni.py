"""What the two Omni builders share: the thinker and its processor, and the processor files as published.

Only the thinker of an Omni model is built (it answers in text; the talker speaks); its processor
is built, as the engine loads it, without image and video processors
(`monitor.engine.local.audio_only`), and its files are laid out as the published Omni checkpoints
ship them (`save_processor`: the image processor named beside the audio features' settings).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from monitor.testing.tiny.common import build_tokenizer, whisper_features

def _image_settings(patch_size: int) -> dict[str, Any]:
    """The image processor's entries of the published Omni preprocessor_config.json (never used here)."""
    return {"image_processor_type": "Qwen2VLImageProcessor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711], "min_pixels": 3136, "max_pixels": 12845056,
            "patch_size": patch_size, "temporal_patch_size": 2, "merge_size": 2}


def token_ids(tok: Any, names: dict[str, str]) -> dict[str, int]:
    """The ids of the named tokens (audio_token, image_token, ...)."""
    return {k: tok.convert_tokens_to_ids(v) for k, v in names.items()}


def make_tokenizer(names: dict[str, str]) -> Any:
    """The tokenizer of `common` with an Omni processor's named media tokens."""
    extra = tuple(v for v in names.values() if v not in ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"))
    return build_tokenizer(extra_special=extra, **names)


def thinker(config: Any, model_class: Any, processor_class: Any, tokenizer: Any, template: str) -> tuple[Any, Any]:
    """The thinker model of `config`, and its Omni processor as the engine loads it (Whisper features, the tokenizer)."""
    from monitor.engine.local.audio_only import without_images_and_videos

    config.architectures = [model_class.__name__]
    processor = without_images_and_videos(processor_class)(feature_extractor=whisper_features(), tokenizer=tokenizer,
                                                            chat_template=template)
    return model_class(config), processor


# The published Omni checkpoints' image patch size (Qwen/Qwen2.5-Omni-7B: 14, Qwen/Qwen3-Omni-30B-A3B-*: 16).
OMNI_PATCH = {"Qwen2_5OmniProcessor": 14, "Qwen3OmniMoeProcessor": 16}


def save_processor(processor: Any, out: Path) -> None:
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
