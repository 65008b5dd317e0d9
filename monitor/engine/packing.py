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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Packed:
    """Inputs of a packed forward: ids, positions, the tree mask and where each question ends."""

    input_ids: torch.Tensor  # (1, S)
    position_ids: torch.Tensor  # (1, S)
    attention_mask: torch.Tensor  # (1, 1, S, S): bool (True = attend), or additive float for eager
    last: torch.Tensor  # (P,) index of each suffix's last token


def pack(prefix: list[int], suffixes: list[list[int]], device: torch.device | str,
         float_mask: torch.dtype | None = None) -> Packed:
    """Lay out one prefix and P suffixes as one row with a tree attention mask."""
    lengths = [len(s) for s in suffixes]
    if not suffixes or min(lengths) == 0:
        raise ValueError("every question needs at least one token after the prefix")
    n_prefix = len(prefix)
    ids = torch.tensor([prefix + [t for s in suffixes for t in s]], dtype=torch.long)
    segment = torch.cat([torch.zeros(n_prefix, dtype=torch.long)]
                        + [torch.full((n,), i + 1, dtype=torch.long) for i, n in enumerate(lengths)])
    positions = torch.cat([torch.arange(n_prefix)] + [torch.arange(n_prefix, n_prefix + n) for n in lengths])
    index = torch.arange(len(segment))
    causal = index[None, :] <= index[:, None]
    same_or_prefix = (segment[None, :] == 0) | (segment[None, :] == segment[:, None])
    allowed = causal & same_or_prefix
    if float_mask is not None:  # eager attention adds the mask to the scores
        allowed = torch.zeros(allowed.shape, dtype=float_mask).masked_fill_(~allowed, torch.finfo(float_mask).min)
    # Rows padded to a multiple of 16 elements: CUDA's memory-efficient attention kernel wants the
    # mask's row stride aligned and would otherwise copy it (or fall back to a slower kernel).
    size = len(segment)
    storage = torch.zeros((1, 1, size, -(-size // 16) * 16), dtype=allowed.dtype, device=device)
    mask = storage[..., :size]
    mask.copy_(allowed[None, None])
    ends = torch.tensor(lengths).cumsum(0) + n_prefix - 1
    return Packed(ids.to(device), positions[None].to(device), mask, ends.to(device))


def yes_no_from_logits(logits: torch.Tensor, yes_ids: torch.Tensor, no_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(score, mass) per row of next-token logits.

    score = P(yes variants) / (P(yes variants) + P(no variants)); the softmax normaliser cancels,
    so it is a sigmoid of the difference of two log-sum-exps. mass = P(yes) + P(no) over the
    whole vocabulary: how much the model wanted to answer yes/no at all (low = answer in doubt).
    """
    logits = logits.float()
    lse_yes = torch.logsumexp(logits[:, yes_ids], dim=-1)
    lse_no = torch.logsumexp(logits[:, no_ids], dim=-1)
    score = torch.sigmoid(lse_yes - lse_no)
    mass = torch.exp(torch.logaddexp(lse_yes, lse_no) - torch.logsumexp(logits, dim=-1))
    return score, mass
