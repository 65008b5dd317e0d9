"""The chat-template layout: the chat split into a shared audio prefix and a per-question suffix.

Every question of a window is asked about the same audio. The model's own chat template puts
the audio before the question text, so the rendered prompt is

    prefix  = system turn + "<|im_start|>user\\n" + audio placeholder        (same for every question)
    suffix  = question text + "<|im_end|>\\n<|im_start|>assistant\\n"         (one per question)

The prefix is what is expensive (the audio encoder and a few hundred audio tokens); it is
computed once per window and shared. Suffixes are tokenised once per distinct prompt and
cached. A prompt whose tokens do not split cleanly at the boundary (a tokenizer merging across
it) is flagged so the engine scores it the plain way instead of getting it subtly wrong.

A layout also builds the model's inputs: the prefix the fast way (`prefix_fast`, checked at
load against `prefix_processor`) and a whole prompt through the processor (`plain_inputs`, the
reference). Models whose tokenizer is mistral_common's (Voxtral) have no chat template: their
layout is `mistral.MistralLayout`, with the same methods (both are `layouts.ProcessorLayout`s).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from monitor.engine.layouts.base import LayoutError
from monitor.engine.frames import audio_tokens

log = logging.getLogger(__name__)

_SENTINEL = "\ue000QUESTION\ue000"  # a private-use character no prompt contains


class PromptLayout:
    """Renders prompts with the processor's chat template and caches their token ids."""

    def __init__(self, processor: Any, system_prompt: str | None = None):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.system_prompt = system_prompt
        self.audio_token = getattr(processor, "audio_token", None) or "<|AUDIO|>"
        self.audio_token_id = self.tokenizer.convert_tokens_to_ids(self.audio_token)
        rendered = self.render(_SENTINEL)
        if rendered.count(_SENTINEL) != 1:
            raise LayoutError("the chat template does not place the question text exactly once")
        at = rendered.index(_SENTINEL)
        self.prefix_text, self.tail_text = rendered[:at], rendered[at + len(_SENTINEL):]
        if self.prefix_text.count(self.audio_token) != 1:
            raise LayoutError(f"the chat template does not put one {self.audio_token} before the question")
        self.prefix_ids: list[int] = self.tokenizer(self.prefix_text)["input_ids"]
        if self.prefix_ids.count(self.audio_token_id) != 1:
            raise LayoutError(f"{self.audio_token} is not a single token of this tokenizer")
        self._suffixes: dict[str, list[int] | None] = {}

    def render(self, question: str) -> str:
        """The full prompt text of one question about one audio clip, ready for the assistant's answer."""
        messages: list[dict[str, Any]] = []
        if self.system_prompt is not None:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": [
            {"type": "audio", "audio": "clip"},
            {"type": "text", "text": question},
        ]})
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def suffix_ids(self, prompt: str) -> list[int] | None:
        """Token ids after the shared prefix, or None when this prompt cannot share it."""
        if prompt not in self._suffixes:
            self._suffixes[prompt] = self._split(prompt)
        return self._suffixes[prompt]

    def _split(self, prompt: str) -> list[int] | None:
        full = self.render(prompt)
        if full != self.prefix_text + prompt + self.tail_text:
            log.warning("the chat template rewrites the question %r; it is scored without the shared prefix", prompt)
            return None
        whole = self.tokenizer(full)["input_ids"]
        suffix = self.tokenizer(prompt + self.tail_text, add_special_tokens=False)["input_ids"]
        if whole != self.prefix_ids + suffix:
            log.warning("question %r does not tokenize on the audio/question boundary; "
                        "it is scored without the shared prefix", prompt)
            return None
        return suffix

    def expand_prefix(self, audio_tokens: int) -> list[int]:
        """The prefix ids with the audio placeholder repeated once per audio embedding."""
        i = self.prefix_ids.index(self.audio_token_id)
        return self.prefix_ids[:i] + [self.audio_token_id] * audio_tokens + self.prefix_ids[i + 1:]

    # ------------------------------------------------------------------ inputs

    def prefix_fast(self, audio: np.ndarray, extract_on: str = "cpu") -> tuple[list[int], dict[str, torch.Tensor]]:
        """The prefix ids and features without the processor (Qwen2-Audio's conventions: features padded
        to 30 s with their frame mask, one placeholder per audio embedding)."""
        features = self.processor.feature_extractor
        fe = features(audio, sampling_rate=features.sampling_rate, return_attention_mask=True, padding="max_length",
                      return_tensors="pt", device=extract_on)
        frames = int(fe["attention_mask"].sum())
        ids = self.expand_prefix(audio_tokens(frames))
        return ids, {"input_features": fe["input_features"], "feature_attention_mask": fe["attention_mask"]}

    def prefix_processor(self, audio: np.ndarray) -> tuple[list[int], dict[str, torch.Tensor]]:
        """The prefix ids and features as the processor makes them."""
        out = self.processor(text=self.prefix_text, audio=audio, sampling_rate=self.processor.feature_extractor.sampling_rate,
                             return_tensors="pt")
        ids = out.pop("input_ids")[0].tolist()
        for per_token in ("attention_mask", "token_type_ids", "mm_token_type_ids"):  # the prefix's, not the clip's
            out.pop(per_token, None)
        return ids, dict(out)

    def plain_inputs(self, audio: np.ndarray, prompt: str) -> dict[str, torch.Tensor]:
        """The model's inputs for one question about one clip, as the processor makes them."""
        return dict(self.processor(text=self.render(prompt), audio=audio,
                                   sampling_rate=self.processor.feature_extractor.sampling_rate, return_tensors="pt"))
