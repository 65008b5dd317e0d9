"""Prompt layouts: how a prompt splits into the window's shared audio prefix and each question's suffix.

Every question of a window is asked about the same audio, and every family the engine serves
puts the audio before the question. So a prompt is `prefix + suffix`: the prefix (system turn,
audio placeholder — expensive: the audio encoder and a few hundred audio tokens) once per window,
each question's suffix after it. A `Layout` finds that split for one model:

- `chat.PromptLayout`: the processor's chat template (Qwen2-Audio, the Omni thinkers, Audio
  Flamingo 3, Gemma 3n);
- `mistral.MistralLayout`: mistral_common's instruct format (Voxtral);
- `monitor.engine.salmonn.side.SalmonnLayout`: SALMONN's fixed prompt.

A model family names its layout (`monitor.engine.families.Family.layout`); a model of no known
family gets one probed from its processor (`probed`). Importing this module is cheap: the
layouts themselves (torch, numpy) are imported when one is made.
"""

from __future__ import annotations

from typing import Any

from monitor.engine.layouts.base import Clip, Layout, LayoutError, ProcessorLayout, uses_mistral_common

__all__ = ["Clip", "Layout", "LayoutError", "ProcessorLayout", "chat_template", "mistral_instruct", "probed",
           "uses_mistral_common"]


def chat_template(processor: Any, system_prompt: str | None) -> ProcessorLayout:
    """The layout of the processor's chat template."""
    from monitor.engine.layouts.chat import PromptLayout

    return PromptLayout(processor, system_prompt)


def mistral_instruct(processor: Any, system_prompt: str | None) -> ProcessorLayout:
    """The layout of mistral_common's instruct format (a processor whose tokenizer is mistral_common's)."""
    from monitor.engine.layouts.mistral import MistralLayout

    return MistralLayout(processor, system_prompt)


def probed(processor: Any, system_prompt: str | None) -> ProcessorLayout:
    """A model of no known family: mistral_common's instruct format where its tokenizer is one, else its chat template."""
    if uses_mistral_common(processor.tokenizer):
        return mistral_instruct(processor, system_prompt)
    return chat_template(processor, system_prompt)
