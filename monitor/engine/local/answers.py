"""The answers a yes/no question is read from: every token that reads "yes" or "no", and their probabilities.

The model may start its answer with "Yes", " yes", "YES", ...; the probability of the answer is
the sum over all of them, read from the next-token logits at the end of the question (one row
per question, whatever the layout or the packing).
"""

from __future__ import annotations

from typing import Any

import torch

from monitor.engine.layouts import LayoutError


def _token_text(tokenizer: Any, token: str, index: int) -> str:
    """What one token reads as (mistral_common's tokenizers have no convert_tokens_to_string: decode its id)."""
    try:
        return tokenizer.convert_tokens_to_string([token])
    except NotImplementedError:
        return tokenizer.decode([index])


def yes_no_token_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Ids of every token that reads "yes" or "no" in any casing, with or without a leading space.

    The model may start its answer with "Yes", " yes", "YES", ...; the probability of the answer
    is the sum over all of them. Special tokens and longer words ("Yesterday", "not") are excluded.
    """
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    yes: list[int] = []
    no: list[int] = []
    for token, index in tokenizer.get_vocab().items():
        if index in special:
            continue
        raw = token.lower()
        if "yes" not in raw and "no" not in raw:  # cheap filter before decoding ~150k tokens
            continue
        text = _token_text(tokenizer, token, index).strip().lower()
        if text == "yes":
            yes.append(index)
        elif text == "no":
            no.append(index)
    if not yes or not no:
        raise LayoutError("the tokenizer has no single-token Yes/No answers; yes/no questions cannot be scored")
    return sorted(yes), sorted(no)


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
