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


def softmax_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the answer's logits and softmax are computed in: float32, or float64 for a float64 model."""
    return torch.promote_types(dtype, torch.float32)


def yes_no_from_logits(logits: torch.Tensor, yes_ids: torch.Tensor, no_ids: torch.Tensor,
                       answers: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(score, mass) per row of next-token logits.

    score = P(yes variants) / (P(yes variants) + P(no variants)); the softmax normaliser cancels,
    so it is a sigmoid of the difference of two log-sum-exps. mass = P(yes) + P(no) over the
    whole vocabulary: how much the model wanted to answer yes/no at all (low = answer in doubt).
    All in float32 (float64 for a float64 model), whatever the model's dtype. `answers`: the
    yes and the no columns (in that order) computed in float32 from the last hidden state
    (`AnswerHead`), so that the score never reads logits rounded to bfloat16; without it they
    are read from `logits`.
    """
    logits = logits.to(softmax_dtype(logits.dtype))
    if answers is None:
        answers = logits[:, torch.cat([yes_ids, no_ids])]
    answers = answers.to(logits.dtype)
    lse_yes = torch.logsumexp(answers[:, :len(yes_ids)], dim=-1)
    lse_no = torch.logsumexp(answers[:, len(yes_ids):], dim=-1)
    score = torch.sigmoid(lse_yes - lse_no)
    mass = torch.exp(torch.logaddexp(lse_yes, lse_no) - torch.logsumexp(logits, dim=-1))
    return score, mass


class AnswerHead:
    """The LM head's yes and no rows in float32: the answer logits of a last hidden state, unrounded.

    In bfloat16 the head's output is rounded to 8 significant bits: a logit of 20 to a step of
    0.125, so the yes-no log-odds would move by up to a quarter and a score by up to 0.06 with
    how the matrix product happened to be blocked. The few yes/no rows, upcast once, make the
    score's logits from the same hidden state in float32 (in float64 for a float64 model).
    """

    def __init__(self, head: torch.nn.Module, yes_ids: torch.Tensor, no_ids: torch.Tensor):
        weight = head.weight
        dtype = softmax_dtype(weight.dtype)
        rows = torch.cat([yes_ids, no_ids]).to(weight.device)
        self.weight = weight.detach()[rows].to(dtype)
        bias = getattr(head, "bias", None)
        self.bias = bias.detach()[rows].to(dtype) if bias is not None else None

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """(rows, yes + no) logits of (rows, hidden) last hidden states (before any soft-cap)."""
        return torch.nn.functional.linear(hidden.to(self.weight.dtype), self.weight, self.bias)
