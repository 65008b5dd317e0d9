"""SALMONN assembled from its four parts, each loaded from where its owner publishes it.

- Whisper's encoder (transformers `WhisperModel`, its decoder dropped) and feature extractor;
- BEATs (`beats.BEATs`, from Microsoft's `{"cfg", "model"}` file);
- the released checkpoint: the speech front end (`frontend.SpeechFrontEnd`) and LoRA, merged into
- Vicuna (transformers `LlamaForCausalLM`) and its tokenizer.

Every part that cannot be found or read is one `ModelLoadError` line naming the setting and
where to get the part. The same code loads the tiny random model that the tests build
(`monitor.testing.tiny_model --arch salmonn`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from monitor.engine.errors import ModelLoadError, first_line, is_out_of_memory
from monitor.engine.hub import offline
from monitor.engine.placement import Placement
from monitor.engine.salmonn import checkpoint as released
from monitor.engine.salmonn.beats import BEATs
from monitor.engine.salmonn.frontend import SPEECH_TOKENS, SpeechFrontEnd
from monitor.engine.settings import ModelSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

WHERE = {
    "checkpoint": "download it with `hf download tsinghua-ee/SALMONN-7B salmonn_7b_v0.pth` (13B: tsinghua-ee/SALMONN "
                  "salmonn_v1.pth) and set model.salmonn.checkpoint to the file, or to `hub-id:file`",
    "beats": "get BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt from Microsoft's BEATs release (unilm/beats; also "
             "in the SALMONN-7B demo Space's beats/ folder) and set model.salmonn.beats to it",
    "whisper": "run `hf download openai/whisper-large-v2` where the hub can be reached, or set model.salmonn.whisper "
               "to a folder holding it",
    "llm": "run `hf download lmsys/vicuna-7b-v1.5` (13B v1: lmsys/vicuna-13b-v1.1) where the hub can be reached, or "
           "set model.salmonn.llm to a folder holding it",
}


class SalmonnAudio(nn.Module):
    """Waveforms -> 88 speech embeddings each, at the LLM's width: Whisper + BEATs + the front end."""

    def __init__(self, features: Any, whisper: nn.Module, beats: BEATs, frontend: SpeechFrontEnd):
        super().__init__()
        self.features = features
        self.whisper = whisper
        self.beats = beats
        self.frontend = frontend
        self.sample_rate = int(features.sampling_rate)

    def forward(self, waves: Sequence[np.ndarray]) -> torch.Tensor:
        """(B, 88, LLM width) for B clips of 16 kHz audio (already padded to 1 s and cut at 30 s).

        Whisper hears every clip padded to 30 s, as always. BEATs hears each clip alone, without
        padding, as SALMONN runs it on one clip; clips of equal length share a batch.
        """
        device = self.frontend.speech_llama_proj.weight.device
        mel = self.features(list(waves), sampling_rate=self.sample_rate, return_tensors="pt")["input_features"]
        dtype = next(self.whisper.parameters()).dtype
        speech = self.whisper(mel.to(device, dtype)).last_hidden_state
        sounds: list[torch.Tensor | None] = [None] * len(waves)
        by_length: dict[int, list[int]] = {}
        for i, wave in enumerate(waves):
            by_length.setdefault(len(wave), []).append(i)
        for rows in by_length.values():
            batch = torch.from_numpy(np.stack([np.asarray(waves[i], dtype=np.float32) for i in rows])).to(device)
            tokens, _ = self.beats.extract_features(batch)
            for i, row in zip(rows, tokens, strict=True):
                sounds[i] = row
        return self.frontend(speech, sounds)  # type: ignore[arg-type]


@dataclass
class SalmonnParts:
    """A loaded SALMONN: the audio side, the LLM with its LoRA merged, and the LLM's tokenizer."""

    audio: SalmonnAudio
    llm: Any  # LlamaForCausalLM
    tokenizer: Any
    name: str


def _hub_file(reference: str) -> Path:
    """`owner/name:file` from the hub cache, fetched once when the hub can be reached."""
    from huggingface_hub import hf_hub_download

    repo, filename = reference.split(":", 1)
    try:
        return Path(hf_hub_download(repo, filename, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached: the hub, unless offline
        if offline():
            raise
        return Path(hf_hub_download(repo, filename))


def _part(key: str, source: object, load: Callable[[], T]) -> T:
    """load(), or a ModelLoadError naming model.salmonn.<key>, what went wrong and where to get it."""
    try:
        return load()
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - every load failure becomes one line
        if is_out_of_memory(exc):
            raise ModelLoadError(f"not enough memory to load model.salmonn.{key} ({source}): free memory, use a "
                                 "GPU with more memory or model.dtype: bfloat16") from None
        raise ModelLoadError(f"model.salmonn.{key} {source} could not be loaded ({first_line(exc)}): "
                             f"{WHERE[key]}") from None


def _pretrained(loader: Callable[..., T], source: str | Path, **kwargs: Any) -> T:
    """from_pretrained from a folder, or a hub id from the cache first and the hub only on a miss."""
    if isinstance(source, Path):
        if not source.is_dir():
            raise FileNotFoundError(f"no folder {source}")
        return loader(str(source), **kwargs)
    try:
        return loader(source, local_files_only=True, **kwargs)
    except OSError:
        if offline():
            raise
        return loader(source, **kwargs)


def _checkpoint_path(reference: str | Path) -> Path:
    path = reference if isinstance(reference, Path) else _hub_file(reference)
    if not path.is_file():
        raise FileNotFoundError(f"no file {path}")
    return path


def load_parts(settings: ModelSettings, placement: Placement) -> SalmonnParts:
    """Every part loaded and checked, the LoRA merged, all on the placement; ModelLoadError (one line) otherwise."""
    from transformers import AutoTokenizer, LlamaForCausalLM, WhisperFeatureExtractor, WhisperModel

    parts = settings.salmonn
    dtype = getattr(torch, placement.dtype)
    ckpt = _part("checkpoint", parts.checkpoint, lambda: released.split(released.read(_checkpoint_path(parts.checkpoint))))
    frontend = _part("checkpoint", parts.checkpoint, lambda: SpeechFrontEnd.from_state(ckpt.frontend))
    beats = _part("beats", parts.beats, lambda: BEATs.from_checkpoint(
        torch.load(_checkpoint_path(parts.beats), map_location="cpu", weights_only=True)))
    features = _part("whisper", parts.whisper, lambda: _pretrained(WhisperFeatureExtractor.from_pretrained, parts.whisper))
    whisper = _part("whisper", parts.whisper,
                    lambda: _pretrained(WhisperModel.from_pretrained, parts.whisper, dtype=dtype).get_encoder())
    tokenizer = _part("llm", parts.llm, lambda: _pretrained(AutoTokenizer.from_pretrained, parts.llm))
    llm = _part("llm", parts.llm, lambda: _pretrained(LlamaForCausalLM.from_pretrained, parts.llm, dtype=dtype,
                                                      attn_implementation=settings.attn_implementation))
    rank = _part("checkpoint", parts.checkpoint, lambda: released.merge_lora(llm, ckpt.lora, parts.lora_alpha))
    if whisper.config.d_model != frontend.ln_speech.normalized_shape[0]:
        raise ModelLoadError(f"model.salmonn.whisper is {whisper.config.d_model} wide but the checkpoint's ln_speech "
                             f"expects {frontend.ln_speech.normalized_shape[0]}: {WHERE['whisper']}")
    if beats.width != frontend.ln_audio.normalized_shape[0]:
        raise ModelLoadError(f"model.salmonn.beats is {beats.width} wide but the checkpoint's ln_audio expects "
                             f"{frontend.ln_audio.normalized_shape[0]}: {WHERE['beats']}")
    if llm.config.hidden_size != frontend.speech_llama_proj.out_features:
        raise ModelLoadError(f"model.salmonn.llm is {llm.config.hidden_size} wide but the checkpoint projects to "
                             f"{frontend.speech_llama_proj.out_features}: {WHERE['llm']}")
    device = placement.device
    # BEATs and the front end are small: they stay in float32 (BEATs computes in float32 anyway).
    audio = SalmonnAudio(features, whisper.to(device), beats.to(device), frontend.to(device)).eval().requires_grad_(False)
    llm = llm.to(device).eval().requires_grad_(False)  # frozen, as in SALMONN: inference only
    name = settings.label
    log.info("%s: LoRA r=%d merged with alpha %g; %d key(s) of the checkpoint are buffers or BEATs table copies "
             "(ignored); %d speech tokens per clip", name, rank, parts.lora_alpha, ckpt.ignored, SPEECH_TOKENS)
    return SalmonnParts(audio, llm, tokenizer, name)
