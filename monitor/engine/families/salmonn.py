"""SALMONN (tsinghua-ee/SALMONN-7B): Whisper + BEATs + a window Q-Former + Vicuna with LoRA, `model.backend: salmonn`.

No transformers class holds it: its parts are loaded from where their owners publish them
(`monitor.engine.salmonn.model`), and a window becomes the model's inputs its own way: 88
speech embeddings written after BOS and the prompt's left half (`monitor.engine.salmonn.side`).
Everything else — packed scoring, batching the windows of several rooms, calibration, text
answers — is the local engine's, as for every family.
"""

from __future__ import annotations

from typing import Any

from monitor.engine.families import Family


def _load(settings: Any, placement: Any) -> tuple[Any, Any]:
    from monitor.engine.salmonn.side import load

    return load(settings, placement)


def _layout(processor: Any, system_prompt: str | None) -> Any:
    from monitor.engine.salmonn.side import SalmonnLayout

    return SalmonnLayout(processor.tokenizer)  # SALMONN's prompt has no system turn


def _inputs(model: Any, processor: Any, layout: Any, device: Any) -> Any:
    from monitor.engine.salmonn.side import SalmonnInputs

    return SalmonnInputs(model, processor, layout, device)


FAMILY = Family(
    name="salmonn",
    title="SALMONN",
    load=_load,
    layout=_layout,
    inputs=_inputs,
    frame_masks=(),
    tiny="salmonn",
)
