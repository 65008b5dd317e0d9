"""The model's side of a forward: how a window's audio becomes its prompt prefix and the model's inputs.

For every family transformers holds as one checkpoint, that is its processor's work
(`ProcessorInputs`): the layout builds a clip's prefix ids and features — fast, or through the
processor itself, whichever the load-time check chose — and a batch of rows gets the features
stacked beside the ids, or, with the cropped encoder, the audio embeddings already written into
the text embeddings. A family whose model has no processor (SALMONN) brings its own `Inputs`
(`Family.inputs`); the scoring core (`engine.Engine`) is the same for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from monitor.engine.frames import audio_tokens
from monitor.engine.layouts import Clip, ProcessorLayout

if TYPE_CHECKING:
    from monitor.engine.local.encoder import CroppedEncoder


class Inputs(Protocol):
    """How one model turns audio into its inputs; the engine's model calls go through it."""

    min_seconds: float  # shorter audio is zero-padded to this length

    def clip(self, audio: np.ndarray, fast: bool) -> Clip:
        """A fitted clip's prompt prefix and features (`fast`: the prefix without the processor)."""
        ...

    def model_inputs(self, input_ids: torch.Tensor, clips: Sequence[Clip], encoder: CroppedEncoder | None,
                     keep_ids: bool = False) -> dict[str, Any]:
        """The model's inputs for rows of `input_ids`, row i holding the audio tokens of clips[i]."""
        ...

    def plain_inputs(self, audio: np.ndarray, prompt: str) -> dict[str, torch.Tensor]:
        """One question about one clip, the model's own way (the reference every shortcut is checked against)."""
        ...

    def pad_id(self, default: int) -> int:
        """The id that pads rows (`default`: the tokenizer's pad token, or 0)."""
        ...


def cat_frames(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Clips' features (or their masks) as one batch, zero-padded to the longest.

    Most processors pad every clip to 30 s; some (Qwen3-Omni's, Gemma 3n's) only to its own
    length. Only the frame axis differs between clips — the last one of Whisper's (mel, frames),
    the middle one of Gemma 3n's (frames, mel) — so every axis is padded to its largest size.
    Padded frames are masked out (mask 0 / False), as the processor itself pads a batch of clips.
    """
    largest = [max(t.shape[d] for t in tensors) for d in range(tensors[0].dim())]
    padded = []
    for t in tensors:  # F.pad takes (before, after) pairs from the last axis backwards
        padded.append(torch.nn.functional.pad(t, [n for d in reversed(range(1, t.dim()))
                                                  for n in (0, largest[d] - t.shape[d])]))
    return torch.cat(padded)


class ProcessorInputs:
    """A model's inputs as its transformers processor makes them (or, where checked equal, faster)."""

    min_seconds = 0.1  # the encoder needs a few frames to emit 2+ audio tokens

    def __init__(self, layout: ProcessorLayout, device: torch.device, dtype: torch.dtype,
                 frame_masks: Sequence[str]):
        self.layout = layout
        self.device = device
        self.dtype = dtype
        self.frame_masks = tuple(frame_masks)
        # the log-mel STFT runs on the model's GPU when there is one
        self.extract_on = str(device) if device.type == "cuda" else "cpu"

    def clip(self, audio: np.ndarray, fast: bool) -> Clip:
        ids, feats = self.layout.prefix_fast(audio, self.extract_on) if fast else self.layout.prefix_processor(audio)
        feats = {k: v.to(self.device, self.dtype if v.is_floating_point() else v.dtype) for k, v in feats.items()}
        mask = next((feats[k] for k in self.frame_masks if k in feats), None)
        return Clip(ids, feats, int(mask.sum()) if mask is not None else 0)

    def model_inputs(self, input_ids: torch.Tensor, clips: Sequence[Clip], encoder: CroppedEncoder | None,
                     keep_ids: bool = False) -> dict[str, Any]:
        """Cropped encoder: the audio embeddings computed here and written into the text embeddings
        (`inputs_embeds`; `keep_ids` adds the ids, which generate() needs). Otherwise the ids and the
        padded features, for the model's own forward to encode."""
        if encoder is not None:
            distinct = list({id(c): c for c in clips}.values())  # a clip shared by rows is encoded once
            audio = encoder.cropped(torch.cat([c.features["input_features"] for c in distinct]),
                                    [c.frames for c in distinct])
            if len(distinct) < len(clips):
                parts = dict(zip(map(id, distinct), audio.split([audio_tokens(c.frames) for c in distinct]), strict=True))
                audio = torch.cat([parts[id(c)] for c in clips])
            inputs: dict[str, Any] = {"inputs_embeds": encoder.embed(input_ids, audio)}
            if keep_ids:
                inputs["input_ids"] = input_ids
            return inputs
        return {"input_ids": input_ids, **{k: cat_frames([c.features[k] for c in clips]) for k in clips[0].features}}

    def plain_inputs(self, audio: np.ndarray, prompt: str) -> dict[str, torch.Tensor]:
        inputs = {k: v.to(self.device) for k, v in self.layout.plain_inputs(audio, prompt).items()}
        if "input_features" in inputs:
            inputs["input_features"] = inputs["input_features"].to(self.dtype)
        return inputs

    def pad_id(self, default: int) -> int:
        return default
