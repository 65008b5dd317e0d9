"""Model families: what the local backend must know of each kind of audio-language model, one file each.

A `Family` record says how a family's checkpoints are loaded (a thinker without its talker, a
model without its vision tower, a processor without its image and video parts, a tokenizer that
needs another package), how its prompts are laid out, how it counts positions, what its
processor calls the frame mask, whether its audio encoder can be cropped, and which builder
writes a tiny random-weight checkpoint of it for the tests. Every module of this package that
defines `FAMILY` is one family, found here by itself (`registry`): a new family is a new file
here plus its tiny builder (`monitor.testing.tiny`), nothing else.

A checkpoint's family is looked up from its config's `model_type` (`of`); a model of no known
family is `generic`, whose every choice is probed as it always was. Whatever the family says,
the load-time self-check (`monitor.engine.local.selfcheck`) still compares every shortcut with
the model's own forward before it is used.

Importing this package is cheap: no torch, no transformers (a family's layout and loader import
theirs when called).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from monitor.engine.layouts import Layout, chat_template, probed

__all__ = ["Family", "Talker", "TokenizerPackage", "chat_template", "generic", "named", "of", "registry"]

GENERIC = "generic"
WHISPER_MASK = "feature_attention_mask"  # what Whisper-style processors call the mask of a clip's real frames


@dataclass(frozen=True)
class Talker:
    """A full checkpoint that holds a thinker (hears, answers in text) and a talker (speaks).

    Loaded with its own class without the talker (`enable_audio_output=False`); its thinker answers.
    """

    model_type: str  # the config's model_type of the full checkpoint (its thinker alone has another)
    model_class: str  # the transformers class of the full model


@dataclass(frozen=True)
class TokenizerPackage:
    """A package the family's tokenizer needs that transformers does not require."""

    module: str  # what is imported
    install: str  # what to run to get it
    extra: str  # this project's extra that brings it


@dataclass(frozen=True)
class Family:
    """One kind of audio-language model, as the local backend loads and asks it."""

    name: str
    """Short name: the tiny builder's `--arch`, and what logs and tests call it."""
    title: str
    """As people call it (docs, log lines)."""
    model_types: tuple[str, ...] = ()
    """The checkpoint configs' `model_type`s it covers; none: it is only named (`model.backend: salmonn`)."""
    talker: Talker | None = None
    """A full checkpoint with a talker, loaded as its thinker alone."""
    without_vision: str | None = None
    """The vision config's model_type whose tower is left out when the model is built (never used here)."""
    audio_only_processor: str | None = None
    """The transformers processor class loaded with only its feature extractor, tokenizer and chat template."""
    tokenizer_package: TokenizerPackage | None = None
    """A package its tokenizer needs: without it, loading stops in one line saying what to install."""
    layout: Callable[[Any, str | None], Layout] = chat_template
    """Its prompt layout, made from (processor, system prompt): by default its processor's chat template."""
    positions: str | None = "tokens"
    """"tokens" (positions count tokens), "rope_index" (3-D, from the model's get_rope_index), None: probed."""
    frame_masks: tuple[str, ...] = (WHISPER_MASK,)
    """What its processor calls the mask of a clip's real mel frames (the first present counts); () for none."""
    crop_encoder: bool | None = False
    """Whether its audio encoder is Qwen2-Audio's, run over each window's own frames where the self-check
    agrees; False: always the model's own padded encoder; None: tried (and checked) on the loaded model."""
    tiny: str | None = None
    """Its builder of tiny random-weight checkpoints: a module of `monitor.testing.tiny`."""
    load: Callable[[Any, Any], tuple[Any, Any]] | None = None
    """A loader of its own, (settings, placement) -> (model, processor), for a model transformers does not
    have as one checkpoint; None: transformers' classes, from the checkpoint's config."""
    inputs: Callable[[Any, Any, Any, Any], Any] | None = None
    """Its own way from audio to the model's inputs, (model, processor, layout, device) -> the model side
    (see `monitor.engine.local.inputs.Inputs`); None: through its processor."""
    @property
    def generic(self) -> bool:
        """Whether this is the stand-in for a model of no known family."""
        return self.name == GENERIC


@cache
def registry() -> tuple[Family, ...]:
    """Every family of this package, in module order: each module that defines `FAMILY`."""
    found = []
    for module in pkgutil.iter_modules(__path__):
        family = getattr(importlib.import_module(f"{__name__}.{module.name}"), "FAMILY", None)
        if isinstance(family, Family):
            found.append(family)
    names = [f.name for f in found]
    types = [t for f in found for t in f.model_types]
    if len(set(names)) != len(names) or len(set(types)) != len(types) or GENERIC in names:
        raise RuntimeError(f"model families overlap: names {names}, model types {types}")
    return tuple(found)


@cache
def generic() -> Family:
    """The family of a model no family file covers: every choice probed on the loaded model."""
    masks = dict.fromkeys([WHISPER_MASK, *(mask for family in registry() for mask in family.frame_masks)])
    return Family(name=GENERIC, title="a model of no known family", layout=probed, positions=None,
                  frame_masks=tuple(masks), crop_encoder=None)


def named(name: str) -> Family:
    """The family called `name`; KeyError naming the known ones otherwise."""
    for family in registry():
        if family.name == name:
            return family
    raise KeyError(f"no model family {name!r}; known: {', '.join(f.name for f in registry())}")


def of(config: Any) -> Family:
    """The family of a checkpoint's config (its `model_type`), or `generic()` when none covers it."""
    model_type = getattr(config, "model_type", None)
    for family in registry():
        if model_type in family.model_types:
            return family
    return generic()
