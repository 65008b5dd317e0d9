"""Finding and loading a transformers checkpoint, and saying in one line what to do when that fails.

A daemon that cannot load its model must stop with a message a person can act on (pre-download
the weights, point HF_HOME at them, or set `model.path`), not with a traceback from deep inside
the hub client. Every expected failure here becomes a `ModelLoadError` whose text is one line.

How a checkpoint is built is its family's (`monitor.engine.families`, found from the config's
`model_type`): an Omni checkpoint as its thinker without the talker, Gemma 3n without its vision
tower, an Omni processor without its image and video processors, a tokenizer package checked
before anything is loaded. A model of no known family is built from its config's architecture.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from monitor.engine import families
from monitor.engine.errors import ModelLoadError, first_line, is_out_of_memory
from monitor.engine.families import Family
from monitor.engine.hub import describe_hub_failure, offline, quiet_hub_retries
from monitor.engine.layouts import uses_mistral_common
from monitor.engine.local.audio_only import audio_only_class, without_images_and_videos
from monitor.engine.placement import Placement
from monitor.engine.settings import ModelSettings

log = logging.getLogger(__name__)


def _check_folder(path: Path) -> None:
    if not path.exists():
        raise ModelLoadError(
            f"model.path {path} does not exist: point it at a folder holding the model (config.json, weights, "
            "processor files), or set it to null to use model.id from the Hugging Face cache")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ModelLoadError(
            f"model.path {path} is not a model folder (no config.json in it): point it at the folder that "
            "`hf download` or save_pretrained() wrote")


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _check_tokenizer_package(config: Any, family: Family, label: str) -> None:
    """A tokenizer in a package transformers does not require (Voxtral's, mistral_common): without it, say so
    in one line before loading anything."""
    needed = family.tokenizer_package
    if needed is not None and not _installed(needed.module):
        raise ModelLoadError(f"{label} is a {getattr(config, 'model_type', '')} model, whose tokenizer needs the "
                             f"{needed.module} package: {needed.install} (or install this project with the "
                             f"[{needed.extra}] extra)")


def _with_talker(config: Any, family: Family) -> bool:
    """Whether the checkpoint is a full model with a talker (loaded as its thinker alone)."""
    return family.talker is not None and getattr(config, "model_type", "") == family.talker.model_type


def _model_class(config: Any, family: Family, source: str) -> Any:
    import transformers

    if _with_talker(config, family) and hasattr(transformers, family.talker.model_class):  # type: ignore[union-attr]
        return getattr(transformers, family.talker.model_class)  # type: ignore[union-attr]
    names = list(getattr(config, "architectures", None) or [])
    for name in names:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return audio_only_class(cls, family.without_vision)
    raise ModelLoadError(
        f"model {source} declares architecture {names or '(none)'} which transformers {transformers.__version__} "
        "does not provide: upgrade transformers or choose a supported audio-chat model")


def _load_failure(exc: Exception, settings: ModelSettings, placement: Placement, source: str, label: str) -> ModelLoadError:
    if isinstance(exc, ModelLoadError):
        return exc
    if is_out_of_memory(exc):
        return ModelLoadError(
            f"not enough memory to load {label} on {placement.device} as {placement.dtype}: free memory, "
            "use a GPU with more memory, model.dtype: bfloat16, or a smaller model")
    if settings.path is None and isinstance(exc, OSError):
        return ModelLoadError(describe_hub_failure(source, exc))
    return ModelLoadError(f"{label} could not be loaded ({first_line(exc)})")


def _thinker(model: Any) -> Any:
    """The thinker of a full Omni model loaded without its talker, with the checkpoint's generation settings."""
    thinker = model.thinker
    if getattr(thinker.generation_config, "eos_token_id", None) is None:
        thinker.generation_config = model.generation_config
    log.info("loaded the thinker of %s (text answers; the talker is not loaded)", type(model).__name__)
    return thinker


def load_model(settings: ModelSettings, placement: Placement) -> tuple[Any, Any]:
    """(model, processor) on the placement, in eval mode; raise ModelLoadError with one line on failure.

    A hub id is looked up in the local cache first, without touching the network, so a cached
    model starts the same with or without a connection; only a miss goes online.
    """
    import torch
    from transformers import AutoConfig, AutoProcessor
    from transformers.utils import logging as hf_logging

    if not sys.stderr.isatty():  # progress bars are for terminals, not for the journal
        hf_logging.disable_progress_bar()

    if settings.path is not None:
        path = Path(settings.path)
        _check_folder(path)
        source, label = str(path), f"model.path {path}"
        hub_kwargs: dict[str, Any] = {}
        attempts = [True]
    else:
        source, label = settings.id, f"model {settings.id}"
        hub_kwargs = {"revision": settings.revision} if settings.revision else {}
        attempts = [True] if offline() else [True, False]

    config = None
    local_only = True
    for local_only in attempts:
        try:
            with quiet_hub_retries(not local_only):
                config = AutoConfig.from_pretrained(source, local_files_only=local_only, **hub_kwargs)
            break
        except (OSError, ValueError) as exc:
            if settings.path is not None:
                raise ModelLoadError(f"{label} could not be read ({first_line(exc)}): is it a complete model folder?") from None
            if local_only and len(attempts) > 1:
                log.info("%s is not in the local cache; trying the Hugging Face hub", source)
                continue
            raise ModelLoadError(describe_hub_failure(source, exc)) from None
    assert config is not None
    hub_kwargs["local_files_only"] = local_only  # found in the cache: never touch the network again
    family = families.of(config)
    cls = _model_class(config, family, source)
    _check_tokenizer_package(config, family, label)
    dtype = getattr(torch, placement.dtype)
    processor_class = AutoProcessor
    if family.audio_only_processor is not None:  # the Omni thinkers': without the image and video processors
        import transformers

        processor_class = without_images_and_videos(getattr(transformers, family.audio_only_processor))
    try:
        processor = processor_class.from_pretrained(source, **hub_kwargs)
    except Exception as exc:  # noqa: BLE001 - every load failure becomes one line
        raise _load_failure(exc, settings, placement, source, label) from None
    if not hasattr(processor, "feature_extractor") or not hasattr(processor, "tokenizer"):
        raise ModelLoadError(f"{label} has no audio processor (feature extractor + tokenizer): "
                             "it is not an audio-language model")
    # mistral_common's instruct format is in the tokenizer, not a template
    if getattr(processor, "chat_template", None) is None and not uses_mistral_common(processor.tokenizer):
        raise ModelLoadError(f"{label} has no chat template in its processor: use an instruction-tuned (chat) model")
    talker = {"enable_audio_output": False} if _with_talker(config, family) else {}
    try:
        model = cls.from_pretrained(
            source, dtype=dtype, attn_implementation=settings.attn_implementation,
            device_map=placement.device if placement.device != "cpu" else None, **talker, **hub_kwargs,
        )
        if talker:
            model = _thinker(model)
        if placement.device == "cpu" or getattr(model, "hf_device_map", None) is None:
            model = model.to(placement.device)
    except Exception as exc:  # noqa: BLE001 - every load failure becomes one line
        raise _load_failure(exc, settings, placement, source, label) from None
    model.eval()
    return model, processor
