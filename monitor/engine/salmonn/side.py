"""SALMONN's side of the local engine: its prompt layout and how a window becomes its inputs.

SALMONN's prompt is `BOS "USER: <Speech>" [88 speech embeddings] "</Speech> {question}\\nASSISTANT:"`,
the two text halves tokenised separately without special tokens, as the original does. The
audio comes before the question, so the engine's packed shared-prefix scoring, its batching of
several rooms' windows, calibration and batched greedy text answers apply unchanged
(`monitor.engine.local`); the SALMONN family (`monitor.engine.families.salmonn`) brings only how a
window becomes its prefix — the ids, with a placeholder where the speech embeddings go — and the
embeddings written there (`SalmonnInputs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from monitor.engine.layouts import Clip, LayoutError
from monitor.engine.placement import Placement
from monitor.engine.salmonn.frontend import SPEECH_TOKENS
from monitor.engine.salmonn.model import SalmonnAudio, load_parts
from monitor.engine.settings import ModelSettings

PROMPT_LEFT = "USER: <Speech>"
PROMPT_RIGHT = "</Speech> {question}\nASSISTANT:"


@dataclass
class SalmonnProcessor:
    """What the engine reads of a processor — the tokenizer and the (Whisper) feature extractor — and the
    audio encoders that make the speech embeddings (Whisper, BEATs, the front end)."""

    tokenizer: Any
    feature_extractor: Any
    audio: SalmonnAudio


def load(settings: ModelSettings, placement: Placement) -> tuple[Any, SalmonnProcessor]:
    """(Vicuna with its LoRA merged, the rest of SALMONN), every part loaded from `model.salmonn`."""
    parts = load_parts(settings, placement)
    return parts.llm, SalmonnProcessor(parts.tokenizer, parts.audio.features, parts.audio)


class SalmonnLayout:
    """SALMONN's prompt split into the shared prefix (BOS, left half, speech) and each question's suffix."""

    def __init__(self, tokenizer: Any):
        if tokenizer.bos_token_id is None:
            raise LayoutError("the LLM's tokenizer has no BOS token")
        self.tokenizer = tokenizer
        self.bos = int(tokenizer.bos_token_id)
        self.placeholder = int(tokenizer.unk_token_id if tokenizer.unk_token_id is not None else 0)
        self.left = tokenizer(PROMPT_LEFT, add_special_tokens=False)["input_ids"]
        self.speech_at = 1 + len(self.left)  # after BOS and the left half
        self.prefix_text = PROMPT_LEFT
        self.prefix_ids = self.expand_prefix(1)
        self._suffixes: dict[str, list[int]] = {}

    def render(self, question: str) -> str:
        return PROMPT_LEFT + "<SpeechHere>" + PROMPT_RIGHT.format(question=question)

    def suffix_ids(self, prompt: str) -> list[int]:
        """The right half's ids: tokenised on its own, so every question can share the prefix."""
        if prompt not in self._suffixes:
            self._suffixes[prompt] = self.tokenizer(PROMPT_RIGHT.format(question=prompt),
                                                    add_special_tokens=False)["input_ids"]
        return self._suffixes[prompt]

    def expand_prefix(self, audio_tokens: int) -> list[int]:
        return [self.bos, *self.left] + [self.placeholder] * audio_tokens


class SalmonnInputs:
    """A window as SALMONN's inputs: its speech embeddings written into Vicuna's text embeddings."""

    min_seconds = 1.0  # SALMONN pads shorter clips to one second

    def __init__(self, model: Any, processor: SalmonnProcessor, layout: SalmonnLayout, device: torch.device):
        self.model = model
        self.audio = processor.audio
        self.layout = layout
        self.device = device

    def clip(self, audio: np.ndarray, fast: bool) -> Clip:
        """The prefix with a placeholder per speech token, and the waveform (SALMONN has no processor: always `fast`)."""
        return Clip(self.layout.expand_prefix(SPEECH_TOKENS), {"audio": torch.from_numpy(audio)}, len(audio))

    def _speech(self, clips: Sequence[Clip]) -> torch.Tensor:
        return self.audio([c.features["audio"].numpy() for c in clips])

    def model_inputs(self, input_ids: torch.Tensor, clips: Sequence[Clip], encoder: Any,
                     keep_ids: bool = False) -> dict[str, Any]:
        """Text embeddings with each row's speech embeddings written after its BOS and the prompt's left half.

        Packed rows start with BOS; left-padded rows (text answers) start with padding, so each
        row's first BOS says where its prompt begins. (`encoder`: there is no cropped encoder.)
        """
        speech = self._speech(clips)
        embeds = self.model.get_input_embeddings()(input_ids)
        is_bos = input_ids == self.layout.bos
        if not bool(is_bos.any(dim=1).all()):
            raise ValueError("a row of the batch has no BOS token")
        start = is_bos.int().argmax(dim=1) + self.layout.speech_at
        columns = start[:, None] + torch.arange(speech.shape[1], device=input_ids.device)
        embeds[torch.arange(len(clips), device=input_ids.device)[:, None], columns] = speech.to(embeds.dtype)
        inputs: dict[str, Any] = {"inputs_embeds": embeds}
        if keep_ids:
            inputs["input_ids"] = input_ids
        return inputs

    def plain_inputs(self, audio: np.ndarray, prompt: str) -> dict[str, torch.Tensor]:
        """SALMONN's own way: BOS, left half, speech and right half embedded and concatenated."""
        embed = self.model.get_input_embeddings()
        ids = torch.tensor([[self.layout.bos, *self.layout.left]], device=self.device)
        right = torch.tensor([self.layout.suffix_ids(prompt)], device=self.device)
        speech = self._speech([self.clip(audio, fast=True)])
        return {"inputs_embeds": torch.cat([embed(ids), speech.to(embed.weight.dtype), embed(right)], dim=1)}

    def pad_id(self, default: int) -> int:
        """Never BOS: it marks where a left-padded row's prompt starts."""
        return self.layout.placeholder if default == self.layout.bos else default
