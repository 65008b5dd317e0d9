"""Finding and loading the model, and saying in one line what to do when that fails.

A daemon that cannot load its model must stop with a message a person can act on (pre-download
the weights, point HF_HOME at them, or set `model.path`), not with a traceback from deep inside
the hub client. Every expected failure here becomes a `ModelLoadError` whose text is one line.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor.engine.settings import ModelSettings

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The model could not be loaded; str() is one line saying what to do about it."""


@dataclass(frozen=True)
class Placement:
    """Where the model runs: a torch device string and a dtype name."""

    device: str
    dtype: str


def resolve_placement(settings: ModelSettings) -> Placement:
    """`auto` -> CUDA with bfloat16 when available, else CPU with float32; explicit values win."""
    import torch

    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"model.device is {device} but torch sees no CUDA device (torch {torch.__version__}): "
                "install the CUDA build of torch and the NVIDIA driver, or set model.device: cpu")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ModelLoadError(
                f"model.device is {device} but only {torch.cuda.device_count()} CUDA device(s) exist: "
                "choose another index or model.device: auto")
    elif device == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError("model.device is mps but this torch has no MPS support: set model.device: cpu")
    dtype = settings.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return Placement(device, dtype)


def _hf_home() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HOME)
    except Exception:  # noqa: BLE001 - only used to word a message
        return os.environ.get("HF_HOME", "~/.cache/huggingface")


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def describe_hub_failure(model_id: str, exc: BaseException) -> str:
    """One line for a failure to get `model_id` from the cache or the hub."""
    from huggingface_hub import errors

    chain = _chain(exc)
    names = {type(e).__name__ for e in chain}
    if any(isinstance(e, errors.GatedRepoError) for e in chain):
        return (f"model.id {model_id} is gated on the Hugging Face hub: accept its licence on huggingface.co and "
                "log in with `hf auth login`, or set model.path to a folder holding the model")
    if any(isinstance(e, errors.RepositoryNotFoundError) for e in chain):
        return (f"model.id {model_id} was not found on the Hugging Face hub: check the spelling "
                "(e.g. Qwen/Qwen2-Audio-7B-Instruct), or set model.path to a folder holding the model")
    if any(isinstance(e, errors.RevisionNotFoundError) for e in chain):
        return f"model.revision of {model_id} does not exist on the hub: fix model.revision or set it to null"
    where = "offline mode is on (HF_HUB_OFFLINE)" if _offline() else "the hub cannot be reached"
    if names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "IncompleteSnapshotError", "ConnectionError"} \
            or "couldn't connect" in str(exc) or "local cache" in str(exc):
        return (f"model {model_id} is not in the Hugging Face cache ({_hf_home()}) and {where}: on a connected "
                f"machine run `hf download {model_id}` (older clients: `huggingface-cli download {model_id}`) and "
                "copy the cache here or point HF_HOME at it, or set model.path to a folder holding the model")
    return f"model {model_id} could not be loaded ({_first_line(exc)}): set model.path to a folder holding the model"


def _check_folder(path: Path) -> None:
    if not path.exists():
        raise ModelLoadError(
            f"model.path {path} does not exist: point it at a folder holding the model (config.json, weights, "
            "processor files), or set it to null to use model.id from the Hugging Face cache")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ModelLoadError(
            f"model.path {path} is not a model folder (no config.json in it): point it at the folder that "
            "`hf download` or save_pretrained() wrote")


# A full Omni checkpoint holds a thinker (hears, answers in text) and a talker (speaks): it is
# loaded without the talker, and the thinker alone answers.
WITH_TALKER = {"qwen2_5_omni": "Qwen2_5OmniForConditionalGeneration",
               "qwen3_omni_moe": "Qwen3OmniMoeForConditionalGeneration"}


# Families whose tokenizer lives in a package transformers does not require: (module, what to install, this
# project's extra that brings it).
TOKENIZER_PACKAGES = {"voxtral": ("mistral_common", 'pip install "mistral-common[audio]"', "voxtral")}


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _check_tokenizer_package(config: Any, label: str) -> None:
    """Voxtral's prompts are laid out by mistral_common: without it, say so in one line before loading anything."""
    model_type = getattr(config, "model_type", "")
    needed = TOKENIZER_PACKAGES.get(model_type)
    if needed is not None and not _installed(needed[0]):
        module, install, extra = needed
        raise ModelLoadError(f"{label} is a {model_type} model, whose tokenizer needs the {module} package: "
                             f"{install} (or install this project with the [{extra}] extra)")


def _model_class(config: Any, source: str) -> Any:
    import transformers

    from monitor.engine.audio_only import audio_only_class

    talking = WITH_TALKER.get(getattr(config, "model_type", ""))
    if talking is not None and hasattr(transformers, talking):
        return getattr(transformers, talking)
    names = list(getattr(config, "architectures", None) or [])
    for name in names:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return audio_only_class(cls, config)  # Gemma 3n: without the vision tower
    raise ModelLoadError(
        f"model {source} declares architecture {names or '(none)'} which transformers {transformers.__version__} "
        "does not provide: upgrade transformers or choose a supported audio-chat model")


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA OOM, or the CPU allocator giving up (while loading or while answering a window)."""
    import torch

    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return "out of memory" in text or (isinstance(exc, RuntimeError) and "can't allocate memory" in text)


@contextlib.contextmanager
def _quiet_hub_retries(active: bool) -> Iterator[None]:
    """Hide the hub client's per-retry warnings while it looks for a model that is not cached.

    Unreachable, it retries with backoff and warns each time; the outcome is reported as one line.
    """
    hub_log = logging.getLogger("huggingface_hub")
    previous = hub_log.level
    if active:
        log.info("looking for the model on the Hugging Face hub (this can take ~30 s when it is unreachable)")
        hub_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_log.setLevel(previous)


def _load_failure(exc: Exception, settings: ModelSettings, placement: Placement, source: str, label: str) -> ModelLoadError:
    if isinstance(exc, ModelLoadError):
        return exc
    if is_out_of_memory(exc):
        return ModelLoadError(
            f"not enough memory to load {label} on {placement.device} as {placement.dtype}: free memory, "
            "use a GPU with more memory, model.dtype: bfloat16, or a smaller model")
    if settings.path is None and isinstance(exc, OSError):
        return ModelLoadError(describe_hub_failure(source, exc))
    return ModelLoadError(f"{label} could not be loaded ({_first_line(exc)})")


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
    import sys

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
        attempts = [True] if _offline() else [True, False]

    config = None
    local_only = True
    for local_only in attempts:
        try:
            with _quiet_hub_retries(not local_only):
                config = AutoConfig.from_pretrained(source, local_files_only=local_only, **hub_kwargs)
            break
        except (OSError, ValueError) as exc:
            if settings.path is not None:
                raise ModelLoadError(f"{label} could not be read ({_first_line(exc)}): is it a complete model folder?") from None
            if local_only and len(attempts) > 1:
                log.info("%s is not in the local cache; trying the Hugging Face hub", source)
                continue
            raise ModelLoadError(describe_hub_failure(source, exc)) from None
    assert config is not None
    hub_kwargs["local_files_only"] = local_only  # found in the cache: never touch the network again
    cls = _model_class(config, source)
    _check_tokenizer_package(config, label)
    dtype = getattr(torch, placement.dtype)
    from monitor.engine.audio_only import audio_only_processor

    audio_only = audio_only_processor(config)  # the Omni thinkers': without the image and video processors
    try:
        processor = (audio_only or AutoProcessor).from_pretrained(source, **hub_kwargs)
    except Exception as exc:  # noqa: BLE001 - every load failure becomes one line
        raise _load_failure(exc, settings, placement, source, label) from None
    if not hasattr(processor, "feature_extractor") or not hasattr(processor, "tokenizer"):
        raise ModelLoadError(f"{label} has no audio processor (feature extractor + tokenizer): "
                             "it is not an audio-language model")
    from monitor.engine.mistral import uses_mistral_common  # its instruct format is in the tokenizer, not a template

    if getattr(processor, "chat_template", None) is None and not uses_mistral_common(processor.tokenizer):
        raise ModelLoadError(f"{label} has no chat template in its processor: use an instruction-tuned (chat) model")
    talker = {"enable_audio_output": False} if getattr(config, "model_type", "") in WITH_TALKER else {}
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
