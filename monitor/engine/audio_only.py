"""Multimodal checkpoints built without the vision tower an audio monitor never uses.

Gemma 3n hears, sees and reads. Its vision tower is a timm network (MobileNet-V5, ~300M
parameters): building it needs timm, and timm needs torchvision, which a CPU-only install may
not have at all. The monitor never sends an image, so the model is built with an empty stand-in
where the tower would be and the checkpoint's `vision_tower.*` weights are left unread (less
memory too). Everything else stays: in particular the vision *embedder*, which embeds the
image-range token ids that any prompt's embedding pass touches.

The class is still the checkpoint's own (its name, forward and weights); only its construction
differs. Chosen from the config's model_type (`audio_only_class`), never from a setting.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from torch import nn

# model_type of the checkpoint -> model_type of the vision config whose tower is left out.
WITHOUT_VISION = {"gemma3n": "gemma3n_vision"}


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


def audio_only_class(cls: type, config: Any) -> type:
    """The class to build for `config`: `cls` itself, or `cls` without a vision tower the monitor never uses."""
    vision_type = WITHOUT_VISION.get(getattr(config, "model_type", ""))
    return without_vision(cls, vision_type) if vision_type is not None else cls
