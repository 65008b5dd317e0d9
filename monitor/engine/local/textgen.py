"""Several text questions answered by one batched greedy `generate()`.

Greedy decoding of a left-padded batch gives each row the tokens it would get alone: the padding
is masked out and the position ids count only real tokens, so each row's logits are its own
(equal within float rounding). What differs is only when rows stop: alone, generation ends at
the row's end-of-sequence token or its own token budget; in a batch, a finished row is filled
with padding while the others go on. So each row's new tokens are cut at its budget and after
its first end-of-sequence token, which gives exactly the tokens of the lone run.

Rows may have different budgets (each rule sets its own `max_new_tokens`): the batch runs to the
largest, and a row that reached its own budget is marked finished so that the batch stops as
soon as every row is either finished or out of budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from transformers import StoppingCriteria


def _pad(rows: Sequence[list[int]], pad_id: int, device: torch.device | str, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        cols = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, cols] = torch.tensor(row, dtype=torch.long)
        mask[i, cols] = 1
    return ids.to(device), mask.to(device)


def left_pad(rows: Sequence[list[int]], pad_id: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), rows right-aligned: generation continues every row at the same column."""
    return _pad(rows, pad_id, device, left=True)


def right_pad(rows: Sequence[list[int]], pad_id: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), rows left-aligned: each row's real tokens keep their plain positions."""
    return _pad(rows, pad_id, device, left=False)


class RowBudgets(StoppingCriteria):
    """Marks each row finished once it has generated its own number of tokens."""

    def __init__(self, prompt_width: int, budgets: Sequence[int], device: torch.device | str):
        self.prompt_width = prompt_width
        self.budgets = torch.tensor(list(budgets), device=device)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: object) -> torch.Tensor:
        return (input_ids.shape[1] - self.prompt_width) >= self.budgets


def trim(new_tokens: list[int], budget: int, eos: Iterable[int]) -> list[int]:
    """A row's generated tokens as its lone run would have them: at most `budget`, ending at the first EOS."""
    stop = set(eos)
    out = new_tokens[:budget]
    for i, token in enumerate(out):
        if token in stop:
            return out[:i + 1]
    return out


def eos_ids(config: object) -> list[int]:
    """The generation config's end-of-sequence id(s) as a list."""
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        return []
    return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]
