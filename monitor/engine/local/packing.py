"""All yes/no questions of a window in ONE forward pass over a shared audio prefix.

The prefix (system turn + audio) and every question's suffix are laid out in a single row:

    [ prefix ........ | suffix 1 | suffix 2 | ... | suffix P ]

with a tree-shaped attention mask: the prefix is causal as usual, and each suffix attends to the
whole prefix and causally to itself, never to another question. Each suffix's position ids
continue from the end of the prefix, exactly as if it had been asked alone. So the logits at a
suffix's last token are those of the plain full-sequence forward of that question (equal within
float rounding), while the audio encoder and the prefix run once per window.

Why one row rather than a KV cache expanded to a batch of P rows: the same arithmetic, but no
P-fold copy of the prefix's keys and values, no padding, and the weights are read once per
window instead of twice (prefix pass, then suffix pass) — the dominant cost of a 7B model on a GPU.

Several windows (of one room or of many) go through the model together as a batch of such rows,
right-padded to the longest (`pack_rows`): each row keeps its own tree mask and positions, so
batching changes no score, and the weights are read once per batch instead of once per window.

A model with sliding-window layers (Gemma 3n: 512 tokens; Qwen2 with `use_sliding_window`) lets
each token of those layers see only the keys less than `window` positions before it
(transformers' `sliding_window_overlay`: kv > q - window). Alone, a question's token at position
p sees keys at positions p - window + 1 .. p; packed, index distance is no measure (a question's
positions restart after the prefix while its indices run on), so the window is applied to the
positions: such a model gets one mask per kind of layer, {"full_attention": tree,
"sliding_attention": tree AND (pos_q - pos_k < window)}, the form its text model accepts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Packed:
    """Inputs of a packed forward: ids, positions, the tree masks and where each question ends.

    One row per window (right-padded to the longest); `row[i]`, `last[i]` locate question i's
    last token, questions counted window after window in the order they were given.
    """

    input_ids: torch.Tensor  # (B, S)
    position_ids: torch.Tensor  # (B, S)
    # (B, 1, S, S): bool (True = attend), or additive float for eager; with a sliding window, one per kind of layer
    attention_mask: torch.Tensor | dict[str, torch.Tensor]
    last: torch.Tensor  # (P,) index of each suffix's last token in its row
    row: torch.Tensor  # (P,) the row (window) each suffix belongs to
    lengths: list[int]  # real (unpadded) length of each row


def _tree(n_prefix: int, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(allowed (S, S) bool, positions (S,)) of one prefix followed by suffixes of `lengths`."""
    segment = torch.cat([torch.zeros(n_prefix, dtype=torch.long)]
                        + [torch.full((n,), i + 1, dtype=torch.long) for i, n in enumerate(lengths)])
    positions = torch.cat([torch.arange(n_prefix)] + [torch.arange(n_prefix, n_prefix + n) for n in lengths])
    index = torch.arange(len(segment))
    causal = index[None, :] <= index[:, None]
    same_or_prefix = (segment[None, :] == 0) | (segment[None, :] == segment[:, None])
    return causal & same_or_prefix, positions


def pack_rows(rows: Sequence[tuple[list[int], list[list[int]]]], device: torch.device | str,
              float_mask: torch.dtype | None = None, pad_id: int = 0, sliding_window: int | None = None) -> Packed:
    """Lay out several windows, each one prefix and its suffixes, as a right-padded batch of tree rows.

    Each row is exactly what `pack` makes of that window alone (same ids, positions and mask),
    so its questions' logits do not depend on the other windows of the batch. Padding is never
    attended to by a real token; a padding token attends only to itself, which keeps its
    (unused) hidden state finite — a fully masked row would be NaN, and 0 x NaN in the next
    layer's attention would leak into real tokens. With `sliding_window`, the mask is a dict
    of the full layers' tree and the sliding layers' windowed tree (see the module's docstring).
    """
    if not rows:
        raise ValueError("nothing to pack")
    trees, ids, lasts, owners, sizes = [], [], [], [], []
    for r, (prefix, suffixes) in enumerate(rows):
        lengths = [len(s) for s in suffixes]
        if not suffixes or min(lengths) == 0:
            raise ValueError("every question needs at least one token after the prefix")
        trees.append(_tree(len(prefix), lengths))
        ids.append(prefix + [t for s in suffixes for t in s])
        lasts.append(torch.tensor(lengths).cumsum(0) + len(prefix) - 1)
        owners.append(torch.full((len(suffixes),), r, dtype=torch.long))
        sizes.append(len(ids[-1]))
    size = max(sizes)
    batch = len(rows)
    input_ids = torch.full((batch, size), pad_id, dtype=torch.long)
    positions = torch.zeros((batch, size), dtype=torch.long)
    allowed = torch.eye(size, dtype=torch.bool).repeat(batch, 1, 1)  # padding sees itself only
    for r, ((tree, pos), row_ids, n) in enumerate(zip(trees, ids, sizes, strict=True)):
        input_ids[r, :n] = torch.tensor(row_ids, dtype=torch.long)
        positions[r, :n] = pos
        allowed[r, :n, :n] = tree
    mask: torch.Tensor | dict[str, torch.Tensor] = _stored(allowed, device, float_mask)
    if sliding_window is not None:  # padding sits at position 0 and sees itself: inside any window
        near = positions[:, :, None] - positions[:, None, :] < sliding_window
        mask = {"full_attention": mask, "sliding_attention": _stored(allowed & near, device, float_mask)}
    return Packed(input_ids.to(device), positions.to(device), mask, torch.cat(lasts).to(device),
                  torch.cat(owners).to(device), sizes)


def _stored(allowed: torch.Tensor, device: torch.device | str, float_mask: torch.dtype | None) -> torch.Tensor:
    """(B, S, S) bool -> the (B, 1, S, S) mask the attention kernels take."""
    if float_mask is not None:  # eager attention adds the mask to the scores
        allowed = torch.zeros(allowed.shape, dtype=float_mask).masked_fill_(~allowed, torch.finfo(float_mask).min)
    batch, size = allowed.shape[0], allowed.shape[-1]
    # Rows padded to a multiple of 16 elements: CUDA's memory-efficient attention kernel wants the
    # mask's row stride aligned and would otherwise copy it (or fall back to a slower kernel).
    storage = torch.zeros((batch, 1, size, -(-size // 16) * 16), dtype=allowed.dtype, device=device)
    mask = storage[..., :size]
    mask.copy_(allowed[:, None])
    return mask


def group_rows(lengths: Sequence[int], overhead: int) -> list[list[int]]:
    """Rows (indices into `lengths`) split into forwards so that padding costs no more than it saves.

    One right-padded forward costs its rows times its longest row's length in tokens; every
    forward also costs a fixed `overhead` (reading the weights, launching kernels), in tokens.
    Windows of similar length stay in one forward; a 0.5 s window is not padded to a 30 s one
    when a second forward costs less than the padding. Rows are sorted by length and cut into
    consecutive groups by dynamic programming (optimal for this cost); each group keeps the
    order the rows were given in.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    best = [0] + [None] * n  # best[j]: cheapest cost of the first j rows in sorted order
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # the last group is order[i:j]; its longest row is order[i]
            cost = best[i] + (j - i) * lengths[order[i]] + overhead  # type: ignore[operator]
            if best[j] is None or cost < best[j]:
                best[j], cut[j] = cost, i
    groups: list[list[int]] = []
    j = n
    while j > 0:
        groups.append(sorted(order[cut[j]:j]))
        j = cut[j]
    return sorted(groups)


def pack(prefix: list[int], suffixes: list[list[int]], device: torch.device | str,
         float_mask: torch.dtype | None = None, sliding_window: int | None = None) -> Packed:
    """Lay out one prefix and P suffixes as one row with a tree attention mask."""
    return pack_rows([(prefix, suffixes)], device, float_mask, sliding_window=sliding_window)
