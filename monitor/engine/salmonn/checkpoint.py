"""SALMONN's released checkpoint: what each key is, strictly, and the LoRA merged into the LLM.

The released `.pth` holds only what SALMONN trained — ln_speech, ln_audio, the window Q-Former,
its query token, the projection into the LLM and LoRA on q_proj/v_proj of every LLM layer — plus
what its save filter let through by accident: persistent buffers (the LLM's rotary `inv_freq`, the
Q-Former's `position_ids`) and copies of BEATs' shared relative-position table under layers 1..N-1
(a frozen table, not a trained weight: BEATs' own checkpoint has it). Every key is one of these;
anything else, or a trained part that is missing, is an error that names it. The file also
carries the optimizer's state (two Adam moments per weight): it is memory-mapped, never read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from monitor.engine.salmonn.frontend import is_frontend_key

LORA = re.compile(r"^llama_model\.base_model\.model\.model\.layers\.(\d+)\.self_attn\.([qv])_proj\.lora_([AB])\.default\.weight$")
ROTARY = re.compile(r"^llama_model\.base_model\.model\.model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")
BEATS_TABLE_COPY = re.compile(r"^beats\.encoder\.layers\.\d+\.self_attn\.relative_attention_bias\.weight$")


class CheckpointError(ValueError):
    """The checkpoint is not SALMONN's released layout; str() is one line."""


@dataclass
class Released:
    """The released weights, sorted by where they go."""

    frontend: dict[str, torch.Tensor] = field(default_factory=dict)
    lora: dict[tuple[int, str], dict[str, torch.Tensor]] = field(default_factory=dict)  # (layer, "q"|"v") -> {"A", "B"}
    ignored: int = 0  # buffers and BEATs table copies: accepted, not used


def read(path: str | Path) -> Mapping[str, torch.Tensor]:
    """`ckpt["model"]` of a released file, memory-mapped: the optimizer state beside it is never read."""
    try:
        checkpoint: Any = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # a legacy (non-zip) file
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("model"), Mapping):
        raise CheckpointError("not a SALMONN checkpoint (expected a dict whose 'model' holds the trained weights)")
    return checkpoint["model"]


def split(state: Mapping[str, torch.Tensor]) -> Released:
    """Every key of `state` sorted into front end, LoRA or ignored; CheckpointError for any other key."""
    out = Released()
    unexpected = []
    for name, tensor in state.items():
        if (m := LORA.match(name)) is not None:
            out.lora.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = tensor
        elif ROTARY.match(name) or BEATS_TABLE_COPY.match(name):
            out.ignored += 1
        elif is_frontend_key(name):
            out.frontend[name] = tensor
        else:
            unexpected.append(name)
    if unexpected:
        raise CheckpointError(f"{len(unexpected)} unexpected key(s) in the SALMONN checkpoint, e.g. {unexpected[0]}")
    return out


def merge_lora(llm: torch.nn.Module, lora: Mapping[tuple[int, str], Mapping[str, torch.Tensor]], alpha: float) -> int:
    """W += alpha/r * B @ A on q_proj and v_proj of every layer, in float32; returns r.

    Every layer must have both adapters and every adapter must belong to a layer of this LLM:
    a LoRA trained for another LLM (7B vs 13B) fails here with one line.
    """
    layers = llm.model.layers
    wanted = {(i, p) for i in range(len(layers)) for p in ("q", "v")}
    missing = sorted(wanted - {k for k, v in lora.items() if {"A", "B"} <= v.keys()})
    extra = sorted(set(lora) - wanted)
    if missing:
        i, p = missing[0]
        raise CheckpointError(f"{len(missing)} LoRA adapter(s) missing for this LLM ({len(layers)} layers), "
                              f"e.g. layers.{i}.self_attn.{p}_proj")
    if extra:
        i, p = extra[0]
        raise CheckpointError(f"{len(extra)} LoRA adapter(s) for layers this LLM ({len(layers)} layers) does not "
                              f"have, e.g. layers.{i}.self_attn.{p}_proj: is model.salmonn.llm the right LLM?")
    ranks = set()
    with torch.no_grad():
        for (i, p), pair in sorted(lora.items()):
            linear = getattr(layers[i].self_attn, f"{p}_proj")
            a, b = pair["A"].float(), pair["B"].float()
            if a.shape[0] != b.shape[1] or (b.shape[0], a.shape[1]) != tuple(linear.weight.shape):
                raise CheckpointError(f"LoRA of layers.{i}.self_attn.{p}_proj has shapes A {tuple(a.shape)}, B "
                                      f"{tuple(b.shape)}, which do not fit its weight {tuple(linear.weight.shape)}: "
                                      "is model.salmonn.llm the right LLM?")
            ranks.add(a.shape[0])
            weight = linear.weight
            merged = weight.float() + (alpha / a.shape[0]) * (b.to(weight.device) @ a.to(weight.device))
            weight.copy_(merged.to(weight.dtype))
    if len(ranks) != 1:
        raise CheckpointError(f"LoRA adapters of different ranks {sorted(ranks)}")
    return ranks.pop()
