"""Multimodal checkpoints built without the vision parts an audio monitor never uses.

Gemma 3n hears, sees and reads. Its vision tower is a timm network (MobileNet-V5, ~300M
parameters): building it needs timm, and timm needs torchvision, which a CPU-only install may
not have at all. The monitor never sends an image, so the model is built with an empty stand-in
where the tower would be and the checkpoint's `vision_tower.*` weights are left unread (less
memory too). Everything else stays: in particular the vision *embedder*, which embeds the
image-range token ids that any prompt's embedding pass touches.

The Omni thinkers' processors (Qwen2.5-Omni, Qwen3-Omni) hold an image and a video processor
beside the audio's feature extractor and the tokenizer, and transformers has video processors
only with torchvision installed. Their processor is loaded audio-only (`audio_only_processor`):
the checkpoint's own processor class with its feature extractor, tokenizer and chat template,
and neither image nor video processor. Text and audio go through that class's own code, so the
model's inputs are what the full processor makes of them; an image or a video is refused.

The classes are still the checkpoint's own (their names, forward or __call__, weights and
files); only their construction differs. Which checkpoints are built this way is their family's
(`Family.without_vision`, `Family.audio_only_processor`, found from the config's model_type),
never a setting's, and the same whether torchvision is installed or not.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from torch import nn

AUDIO_PARTS = ("feature_extractor", "tokenizer")


class AbsentVisionTower(nn.Module):
    """Stands where the vision tower would be: no weights, and an image is refused in one line."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("this model was loaded without its vision tower: it answers about audio only")


@contextlib.contextmanager
def _towerless(module: Any, vision_type: str) -> Iterator[None]:
    """While the model is built, `AutoModel.from_config` in its module returns the stand-in for the vision config."""
    original = module.AutoModel

    class _AutoModel:
        @staticmethod
        def from_config(config: Any, *args: Any, **kwargs: Any) -> Any:
            if getattr(config, "model_type", None) == vision_type:
                return AbsentVisionTower()
            return original.from_config(config, *args, **kwargs)

    module.AutoModel = _AutoModel
    try:
        yield
    finally:
        module.AutoModel = original


def without_vision(cls: type, vision_type: str) -> type:
    """`cls` built without its vision tower; the checkpoint's `vision_tower.*` weights are ignored quietly."""
    module = sys.modules[cls.__module__]
    if not hasattr(module, "AutoModel"):
        raise TypeError(f"{cls.__name__} does not build its towers with AutoModel: cannot leave its vision tower out")
    ignored = [*(getattr(cls, "_keys_to_ignore_on_load_unexpected", None) or []), r"(^|\.)vision_tower\."]

    def __init__(self: Any, config: Any, *args: Any, **kwargs: Any) -> None:
        with _towerless(module, vision_type):
            cls.__init__(self, config, *args, **kwargs)

    return type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__, "_keys_to_ignore_on_load_unexpected": ignored})


def audio_only_class(cls: type, vision_type: str | None) -> type:
    """The class to build: `cls` itself, or (`vision_type`: its vision config's model_type) `cls` without the
    vision tower the monitor never uses."""
    return without_vision(cls, vision_type) if vision_type is not None else cls


def without_images_and_videos(cls: type) -> type:
    """`cls` (a processor class) made of its feature extractor, tokenizer and chat template only.

    The class's own __init__ still runs (it reads the special tokens off the tokenizer); it hands
    its parts on positionally, and a link placed right after it in the method order passes on
    only the audio parts. transformers reads a processor's parts from its __init__'s signature, so
    `from_pretrained` loads only these: an image or video processor named in the folder's configs
    is never built.
    """
    from transformers.processing_utils import ProcessorMixin

    parts = cls.get_attributes()
    missing = [part for part in AUDIO_PARTS if part not in parts]
    if missing:
        raise TypeError(f"{cls.__name__} has no {' or '.join(missing)}: it cannot be loaded audio-only")

    class _AudioPartsOnly(cls.__mro__[1]):  # type: ignore[misc,valid-type]
        def __init__(self: Any, *args: Any, chat_template: Any = None) -> None:
            given = dict(zip(parts, args, strict=True))
            super().__init__(**{part: given[part] for part in AUDIO_PARTS}, chat_template=chat_template)

    def __init__(self: Any, feature_extractor: Any = None, tokenizer: Any = None, chat_template: Any = None) -> None:
        cls.__init__(self, feature_extractor=feature_extractor, tokenizer=tokenizer, chat_template=chat_template)

    def validate_inputs(self: Any, images: Any = None, text: Any = None, **kwargs: Any) -> None:
        if images is not None or kwargs.get("videos") is not None:
            raise ValueError("this processor was loaded without its image and video processors: it takes audio only")
        cls.validate_inputs(self, images=images, text=text, **kwargs)

    def model_input_names(self: Any) -> list[str]:  # the class's own lists its image and video processors' too
        return [*ProcessorMixin.model_input_names.fget(self), "feature_attention_mask"]

    return type(cls.__name__, (cls, _AudioPartsOnly), {
        "__init__": __init__, "validate_inputs": validate_inputs, "model_input_names": property(model_input_names),
        "__module__": cls.__module__, "__qualname__": cls.__qualname__})
