"""Qwen2-Audio's audio encoder run over the frames a window has, not over 30 seconds of padding.

The encoder (Whisper's) insists on 3000 mel frames — 30 s — whatever the clip's length, and
masks the padding: padded positions are never attended to as keys. So the outputs at the valid
positions depend only on the valid frames and on the few padding frames the convolutions read
past the end:

- conv1 (kernel 3, padding 1) then conv2 (kernel 3, stride 2, padding 1): conv2's position t
  reads mel frames 2t-2 .. 2t+2. With L = (frames - 1) // 2 + 1 valid positions, frames
  0 .. 2L are needed: cropping to 2L + 1 frames (the real padded features, not zeros) gives
  conv outputs equal to the padded run at every valid position, plus one padding position;
- the layers run with the same key-padding mask as the padded run, over L + 1 positions
  instead of 1500, with the position embeddings' first L + 1 rows;
- average pooling (stride 2) then layer norm: output i reads positions 2i, 2i+1, and the
  model keeps only the first (L - 2) // 2 + 1 outputs — all made of valid positions.

An 8 s window thus costs its encoder about 8/30 of the padded run. A batch of windows is
cropped to its longest one, each window masked at its own length.

The crop is rounded up to one of a few lengths (`CROP_SECONDS`: 1, 2, 3, 4, 5, 6, 8, 10, 12, 15,
20, 25, 30 s of a 30 s encoder), the positions past the longest window masked like the rest of
the padding, which changes no valid position's output. Without the rounding every length not
seen before (an utterance for a text rule, a batch of windows of a new mix) is a new input shape
for the convolutions, whose kernels the CPU backend makes and keeps per shape (oneDNN's primitive
cache: ~60 KiB per shape on the tiny model), and the allocator's heaps fragment around them: a
daemon's resident size grew for as long as new lengths kept coming (bench/README.md, soak.py).
With it the encoder sees at most 13 lengths per batch size.

The language model is then run with `inputs_embeds`: the text embeddings with the audio
embeddings written at the `<|AUDIO|>` positions, as `Qwen2AudioModel.forward` does itself.

All of this restates how transformers' Qwen2AudioModel.forward uses its encoder; a model that
differs (another architecture, an encoder that attends to padding) would silently answer other
questions. So the engine checks, on the loaded model, that this and the model's own padded
encoder agree (`check`), and otherwise keeps the padded path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from monitor.engine.frames import audio_tokens, positions
from monitor.engine.local.precision import UNIT_ROUNDOFF, encoder_tolerance

__all__ = ["CROP_SECONDS", "CroppedEncoder", "Unsupported", "audio_tokens", "crop_positions", "positions"]

log = logging.getLogger(__name__)

# Max |cropped - padded| allowed by the load-time check, relative to the largest |padded| value
# (at least 1), per dtype: rounding only (`precision`).
TOLERANCE = {dtype: encoder_tolerance(dtype) for dtype in UNIT_ROUNDOFF}

# The lengths a crop is rounded up to, in seconds of the encoder's full 30 s (each whole number of
# seconds up to 6, then steps of at most a third): the common window lengths (2, 4, 5, 8, 10, 30 s)
# are cropped exactly, anything else pays at most a third more encoder positions.
CROP_SECONDS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30)


class Unsupported(ValueError):
    """The model is not shaped like Qwen2-Audio: the cropped encoder cannot be used."""


def crop_positions(needed: int, full: int, steps: Sequence[int] | None = CROP_SECONDS) -> int:
    """Valid encoder positions a batch whose longest window has `needed` is cropped to (`full`: 30 s).

    The smallest of `steps` (seconds of the full length) that holds `needed`; `steps=None`: exactly `needed`.
    """
    if steps is None:
        return min(needed, full)
    for seconds in steps:
        size = -(-full * seconds // 30)
        if size >= needed:
            return min(size, full)
    return full


class CroppedEncoder:
    """The audio tower and projector of a loaded Qwen2-Audio, run on cropped features."""

    def __init__(self, model: Any):
        body = getattr(model, "model", None)
        tower = getattr(body, "audio_tower", None)
        projector = getattr(body, "multi_modal_projector", None)
        needed = ("conv1", "conv2", "embed_positions", "layers", "avg_pooler", "layer_norm")
        if tower is None or projector is None or not all(hasattr(tower, a) for a in needed):
            raise Unsupported(f"{type(model).__name__} has no Qwen2-Audio encoder (audio_tower + multi_modal_projector)")
        token = getattr(model.config, "audio_token_id", None)
        if token is None:
            token = getattr(model.config, "audio_token_index", None)
        if token is None:
            raise Unsupported("the model config names no audio token id")
        conv1, conv2 = tower.conv1, tower.conv2
        shape = (conv1.kernel_size, conv1.stride, conv1.padding, conv2.kernel_size, conv2.stride, conv2.padding)
        pool = getattr(tower.avg_pooler, "kernel_size", None), getattr(tower.avg_pooler, "stride", None)
        if shape != ((3,), (1,), (1,), (3,), (2,), (1,)) or pool != ((2,), (2,)):
            raise Unsupported("the encoder's convolutions or pooling differ from Qwen2-Audio's")
        first = next((m for m in projector.modules() if isinstance(m, nn.Linear)), None)
        if first is None or first.in_features != tower.layer_norm.normalized_shape[0]:
            # Voxtral's projector reads four encoder frames at a time, from an encoder that attends to its padding
            raise Unsupported("the projector does not take the encoder's pooled frames one by one as Qwen2-Audio's does")
        self.body = body
        self.tower = tower
        self.projector = projector
        self.audio_token_id = int(token)
        self.crop_seconds: Sequence[int] | None = CROP_SECONDS  # None: crop to the longest window exactly

    # ------------------------------------------------------------------ audio embeddings

    def _mask(self, lengths: Sequence[int], size: int, dtype: torch.dtype, device: torch.device) -> Any:
        """The encoder's key-padding mask, built the way Qwen2AudioModel builds it (per attention kernel)."""
        from transformers.masking_utils import create_bidirectional_mask

        valid = (torch.arange(size, device=device)[None, :] < torch.tensor(list(lengths), device=device)[:, None]).long()
        dummy = torch.zeros((len(lengths), size, 1), dtype=dtype, device=device)
        return create_bidirectional_mask(config=self.tower.config, inputs_embeds=dummy, attention_mask=valid)

    def _gather(self, projected: torch.Tensor, frames: Sequence[int]) -> torch.Tensor:
        """Each window's valid audio embeddings, window after window: (sum of tokens, hidden)."""
        return torch.cat([projected[i, :audio_tokens(f)] for i, f in enumerate(frames)])

    def cropped(self, features: torch.Tensor, frames: Sequence[int]) -> torch.Tensor:
        """Audio embeddings of a batch of windows, the encoder run only as far as the longest needs.

        features: (B, mel bins, 3000), padded as the feature extractor pads; frames: valid frames each.
        """
        tower = self.tower
        lengths = [positions(f) for f in frames]
        crop = min(features.shape[-1], 2 * self.crop_size(max(lengths), features.shape[-1]) + 1)
        x = features[..., :crop].to(dtype=tower.conv1.weight.dtype, device=tower.conv1.weight.device)
        hidden = nn.functional.gelu(tower.conv1(x))
        hidden = nn.functional.gelu(tower.conv2(hidden)).permute(0, 2, 1)
        size = hidden.shape[1]
        hidden = hidden + tower.embed_positions.weight[:size]
        mask = self._mask(lengths, size, hidden.dtype, hidden.device)
        for layer in tower.layers:
            hidden = layer(hidden, mask)
        hidden = tower.avg_pooler(hidden.permute(0, 2, 1)).permute(0, 2, 1)
        hidden = tower.layer_norm(hidden)
        return self._gather(self.projector(hidden), frames)

    def crop_size(self, needed: int, frames: int) -> int:
        """Valid positions the encoder runs over for a longest window of `needed` (features of `frames` frames)."""
        return crop_positions(needed, positions(frames), self.crop_seconds)

    def padded(self, features: torch.Tensor, frames: Sequence[int]) -> torch.Tensor:
        """The same through the model's own encoder over all 3000 frames (the reference)."""
        size = positions(features.shape[-1])
        mask = self._mask([positions(f) for f in frames], size, self.tower.conv1.weight.dtype, features.device)
        hidden = self.tower(features.to(self.tower.conv1.weight.dtype), attention_mask=mask).last_hidden_state
        return self._gather(self.projector(hidden), frames)

    def embed(self, input_ids: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Text embeddings of `input_ids` with `audio` written, in order, at the audio token positions."""
        embeds = self.body.get_input_embeddings()(input_ids)
        where = input_ids == self.audio_token_id
        if int(where.sum()) != audio.shape[0]:
            raise ValueError(f"{int(where.sum())} audio tokens in the prompt but {audio.shape[0]} audio embeddings")
        return embeds.masked_scatter(where.unsqueeze(-1), audio.to(embeds.dtype))

    # ------------------------------------------------------------------ the load-time check

    def check(self, features: torch.Tensor, frames: Sequence[int]) -> tuple[bool, float, float]:
        """(agree, max |cropped - padded|, allowed) on probe windows: batched, and each alone."""
        want = self.padded(features, frames).float()
        diffs = [self.cropped(features, frames).float() - want]
        start = 0
        for i, f in enumerate(frames):
            n = audio_tokens(f)
            diffs.append(self.cropped(features[i:i + 1], [f]).float() - want[start:start + n])
            start += n
        diff = torch.cat(diffs).abs().max()
        allowed = encoder_tolerance(self.tower.conv1.weight.dtype) * max(1.0, float(want.abs().max()))
        return bool(torch.isfinite(diff)) and float(diff) <= allowed, float(diff), allowed
