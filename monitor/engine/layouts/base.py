"""What every prompt layout is: the `Layout` protocol, the error it raises, and the clip it builds a prefix for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import torch


class LayoutError(ValueError):
    """The model's prompt cannot be split into an audio prefix and a question suffix."""


@dataclass
class Clip:
    """One piece of audio ready for the model: its prompt prefix and its features."""

    ids: list[int]  # the prefix ids, the audio placeholder repeated once per audio embedding
    features: dict[str, torch.Tensor]  # what the model's audio side reads, named as the processor names it
    frames: int  # valid mel frames (0 where the processor gives no frame mask)


class Layout(Protocol):
    """A model's prompt as the shared audio prefix and one suffix per question."""

    prefix_ids: list[int]  # the prefix with one audio placeholder (`expand_prefix` repeats it)

    def render(self, question: str) -> str:
        """The prompt of one question about one clip, as text (for logs and tests)."""
        ...

    def suffix_ids(self, prompt: str) -> list[int] | None:
        """Token ids after the shared prefix, or None when this prompt cannot share it (scored alone)."""
        ...

    def expand_prefix(self, audio_tokens: int) -> list[int]:
        """The prefix ids with the audio placeholder repeated once per audio embedding."""
        ...


class ProcessorLayout(Layout, Protocol):
    """A layout over a transformers processor: it also builds the model's inputs, fast and the processor's way.

    The engine uses `prefix_fast` only where the load-time check finds it equal to `prefix_processor`.
    """

    def prefix_fast(self, audio: np.ndarray, extract_on: str = "cpu") -> tuple[list[int], dict[str, torch.Tensor]]:
        """The prefix ids and features without the processor's per-call tokenising and checks."""
        ...

    def prefix_processor(self, audio: np.ndarray) -> tuple[list[int], dict[str, torch.Tensor]]:
        """The prefix ids and features as the processor makes them (the reference of `prefix_fast`)."""
        ...

    def plain_inputs(self, audio: np.ndarray, prompt: str) -> dict[str, torch.Tensor]:
        """The model's inputs for one question about one clip, as the processor makes them."""
        ...


def uses_mistral_common(tokenizer: Any) -> bool:
    """Whether a processor's tokenizer is transformers' wrapper around a mistral_common tokenizer."""
    return type(tokenizer).__name__ == "MistralCommonBackend" or getattr(tokenizer, "backend", None) == "mistral_common"
