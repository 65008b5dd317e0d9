"""Loading a state dict so that every key is used and every weight given, with a one-line reason otherwise."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str = "key",
                unexpected: Sequence[str] = ()) -> None:
    """Load `state` (float32) into `module`; ValueError naming the missing, unexpected and misshapen keys.

    `what` names a missing entry ("front-end weight"); `unexpected` adds keys the caller could not map.
    """
    expected = module.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in state]
    extra = list(unexpected) + [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing {what}(s), e.g. {missing[0]}")
    if extra:
        parts.append(f"{len(extra)} unexpected key(s), e.g. {extra[0]}")
    if wrong:
        parts.append(f"{len(wrong)} of the wrong shape, e.g. {wrong[0]}")
    if parts:
        raise ValueError("; ".join(parts))
    module.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True, assign=True)
