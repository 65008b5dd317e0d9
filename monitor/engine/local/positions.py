"""What differs between model families in the packed forward: their position ids and mask rules.

The packed row (see `packing`) gives every question the 1-D positions it would have alone:
the prefix's 0..L-1, then L, L+1, ... for each suffix. That is right for a model whose
positions count tokens. The Omni thinkers (Qwen2.5-Omni, Qwen3-Omni) instead have 3-D rotary
positions (time, height, width) computed by the model's own `get_rope_index` from the prompt's
ids and its audio's length; text after a multimodal span continues from the span's largest
position plus one, in all three dimensions. So for them the prefix's positions come from that
function, and each question's positions continue from there exactly as if it had been asked
alone.

Mask rules: a model with sliding-window layers (Gemma 3n's, Qwen2's with `use_sliding_window`)
gets, besides the tree mask of its full layers, a tree narrowed to its window for the sliding
ones (`sliding_window`; see `packing`).

The rule is the model family's (`monitor.engine.families`: "tokens" or "rope_index"); a model of
no known family gets the 3-D rule where it has a `get_rope_index`. Mask rules are read off the
loaded model's config, never from a setting. Whatever the family, the load-time check
(`selfcheck.packed_scoring`) compares the packed path with the plain forward and refuses it where
they differ.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from monitor.engine.errors import ModelLoadError
from monitor.engine.local.packing import Packed

if TYPE_CHECKING:
    from monitor.engine.families import Family


class TokenPositions:
    """Positions that count tokens: the packed row's own 1-D positions."""

    name = "1-D"

    def positions(self, packed: Packed, prefixes: Sequence[int], features: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
        return packed.position_ids


class RopeIndexPositions:
    """3-D rotary positions from the model's own position function (the Omni thinkers)."""

    name = "3-D (the model's get_rope_index)"

    def __init__(self, rope_index: Callable[..., tuple[torch.Tensor, torch.Tensor]],
                 frame_masks: Sequence[str] = ("feature_attention_mask",)):
        self.rope_index = rope_index
        self.frame_masks = tuple(frame_masks)

    def positions(self, packed: Packed, prefixes: Sequence[int], features: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
        """(3, rows, S): each row's prefix as the model places it, its suffixes continuing from there.

        `prefixes` are the prefix lengths of the rows; `features` their audio features (for the
        audio's length in frames, which the position function reads).
        """
        flat = packed.position_ids  # (rows, S): the prefix 0..L-1, each suffix L, L+1, ...
        out = flat[None].repeat(3, 1, 1)
        for r, (length, feats) in enumerate(zip(prefixes, features, strict=True)):
            ids = packed.input_ids[r:r + 1, :length]
            mask = next((feats[k] for k in self.frame_masks if k in feats), None)
            seqlens = mask.sum(-1) if mask is not None else None
            prefix, _ = self.rope_index(input_ids=ids, attention_mask=torch.ones_like(ids), audio_seqlens=seqlens)
            prefix = prefix[:, 0].to(out.device, out.dtype)
            out[:, r, :length] = prefix
            size = packed.lengths[r]
            out[:, r, length:size] = flat[r, length:size] - length + prefix.max() + 1
        return out


def position_rule(model: Any, family: Family) -> TokenPositions | RopeIndexPositions:
    """The loaded model's position rule, as its family names it (a model of no known family: probed)."""
    if family.positions == "tokens":
        return TokenPositions()
    for owner in (getattr(model, "model", None), model):
        rope_index = getattr(owner, "get_rope_index", None)
        if callable(rope_index):
            return RopeIndexPositions(rope_index, family.frame_masks)
    if family.positions == "rope_index":
        raise ModelLoadError(f"{type(model).__name__} has no get_rope_index, which its family's 3-D positions need")
    return TokenPositions()


def sliding_window(model: Any) -> int | None:
    """The window of the loaded model's sliding-attention layers, or None when it has none."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(text, "sliding_window", None)
    if window is None or "sliding_attention" not in (getattr(text, "layer_types", None) or []):
        return None
    return int(window)
