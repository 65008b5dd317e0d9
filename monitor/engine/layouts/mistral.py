"""Prompt layout for models whose tokenizer is a mistral_common one (Voxtral), not a chat template.

Voxtral's prompts are laid out by mistral_common's instruct tokenizer, not by Jinja:

    [BOS] [INST] [BEGIN_AUDIO] [AUDIO] x N   question text   [/INST]
    \\______________ prefix ______________/  \\______ suffix ______/

N counts the audio after it is padded to whole 30 s chunks (12.5 tokens per second: 375 per
chunk), so every window of up to 30 s has the same prefix. The split is read off the tokenizer's
own output for a probe clip: the prefix is everything up to and including the audio tokens, a
question's suffix everything after them; a question whose full prompt is not exactly prefix +
suffix is flagged, and scored the plain way.

Three ways to build inputs, as for the chat-template layout (see `chat.PromptLayout`):
- `prefix_fast`: the audio tokens from mistral_common's audio encoder, the features from the
  feature extractor with the processor's own audio settings (what `VoxtralProcessor` does);
- `prefix_processor`: the processor's `apply_chat_template` itself, cut after the audio — the
  load-time check uses the fast path only where the two are equal;
- `plain_inputs`: the processor's `apply_chat_template` of the whole prompt (the reference).
The processor takes audio only as a file, a URL or base64: clips are handed to it as float WAV,
which keeps every sample exact (`monitor.engine.wav.wav_base64`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from monitor.engine.layouts.base import LayoutError
from monitor.engine.wav import wav_base64

log = logging.getLogger(__name__)

_PROBE_QUESTION = "Is it?"  # any text: only the part before it (the audio prefix) is kept


class MistralLayout:
    """Splits mistral_common instruct prompts into the shared audio prefix and each question's suffix."""

    def __init__(self, processor: Any, system_prompt: str | None = None):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.system_prompt = system_prompt
        self.sample_rate = int(processor.feature_extractor.sampling_rate)
        self.audio_encoder = getattr(self.tokenizer.tokenizer.instruct_tokenizer, "audio_encoder", None)
        if self.audio_encoder is None:
            raise LayoutError("the mistral_common tokenizer has no audio settings (no audio section in tekken.json)")
        self.audio_token_id = int(self.audio_encoder.audio_token)
        self.begin_audio_id = int(self.audio_encoder.begin_audio_token)
        self.audio_token = self.tokenizer.convert_ids_to_tokens(self.audio_token_id)
        self._probe = np.zeros(self.sample_rate // 10, dtype=np.float32)
        ids = self._ids(self._probe, _PROBE_QUESTION)
        if self.begin_audio_id not in ids or self.audio_token_id not in ids:
            raise LayoutError("the tokenizer does not write the audio as [BEGIN_AUDIO][AUDIO]...")
        first = ids.index(self.audio_token_id)
        self.head = ids[:first]  # [BOS][INST] (and a system prompt, if any) [BEGIN_AUDIO]
        if self.head[-1] != self.begin_audio_id:
            raise LayoutError("the audio tokens do not follow [BEGIN_AUDIO]")
        self.probe_tokens = self._audio_count(ids)
        self.prefix_ids = self.expand_prefix(self.probe_tokens)
        self.prefix_text = self.tokenizer.decode(self.prefix_ids)
        self._audio_kwargs = self._feature_settings()
        self._suffixes: dict[str, list[int] | None] = {}

    # ------------------------------------------------------------------ the prompt

    def messages(self, audio: np.ndarray, question: str) -> list[dict[str, Any]]:
        """The conversation of one question about one clip, as the processor takes it."""
        messages: list[dict[str, Any]] = []
        if self.system_prompt is not None:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": [
            {"type": "audio", "base64": wav_base64(audio, self.sample_rate)},
            {"type": "text", "text": question},
        ]})
        return messages

    def _ids(self, audio: np.ndarray, question: str) -> list[int]:
        return list(self.tokenizer.apply_chat_template(self.messages(audio, question), tokenize=True,
                                                       return_dict=False))

    def _audio_count(self, ids: list[int]) -> int:
        """The length of the run of audio tokens right after the head (and check it is the only one)."""
        n = len(self.head)
        while n < len(ids) and ids[n] == self.audio_token_id:
            n += 1
        if self.audio_token_id in ids[n:]:
            raise LayoutError("the prompt has audio tokens after the question")
        return n - len(self.head)

    def render(self, question: str) -> str:
        """The prompt of one question (as text, special tokens shown; for logs and tests)."""
        return self.tokenizer.decode(self.prefix_ids + (self.suffix_ids(question) or []))

    def suffix_ids(self, prompt: str) -> list[int] | None:
        """Token ids after the shared prefix, or None when this prompt cannot share it."""
        if prompt not in self._suffixes:
            self._suffixes[prompt] = self._split(prompt)
        return self._suffixes[prompt]

    def _split(self, prompt: str) -> list[int] | None:
        ids = self._ids(self._probe, prompt)
        if ids[:len(self.prefix_ids)] != self.prefix_ids or self.audio_token_id in ids[len(self.prefix_ids):]:
            log.warning("question %r does not follow the audio prefix; it is scored without the shared prefix", prompt)
            return None
        return ids[len(self.prefix_ids):]

    def expand_prefix(self, audio_tokens: int) -> list[int]:
        """The prefix ids with `audio_tokens` audio tokens."""
        return self.head + [self.audio_token_id] * audio_tokens

    # ------------------------------------------------------------------ inputs

    def _feature_settings(self) -> dict[str, Any]:
        """The processor's own feature settings (30 s multiples, chunks of max_source_positions frames)."""
        kwargs = dict(self.processor._merge_kwargs(return_tensors="pt")["audio_kwargs"])
        kwargs.pop("return_tensors", None)
        return kwargs

    def prefix_fast(self, audio: np.ndarray, extract_on: str = "cpu") -> tuple[list[int], dict[str, torch.Tensor]]:
        """The prefix ids and features without the processor: mistral_common counts the audio tokens,
        the feature extractor makes the features as the processor has it make them."""
        from mistral_common.tokens.tokenizers.audio import Audio

        encoded = self.audio_encoder.encode_audio(Audio(np.asarray(audio, dtype=np.float32), self.sample_rate, "wav"))
        tokens = list(encoded.tokens)
        if tokens[:1] != [self.begin_audio_id] or set(tokens[1:]) != {self.audio_token_id}:
            raise LayoutError("mistral_common encodes the audio otherwise than [BEGIN_AUDIO][AUDIO]...")
        kwargs = dict(self._audio_kwargs)
        chunk = kwargs.pop("max_source_positions")
        features = self.processor.feature_extractor
        out = features(np.asarray(audio, dtype=np.float32), return_tensors="pt", device=extract_on, **kwargs)
        mel = out["input_features"].reshape(features.feature_size, -1, chunk).transpose(0, 1).contiguous()
        return self.expand_prefix(len(tokens) - 1), {"input_features": mel.cpu()}

    def prefix_processor(self, audio: np.ndarray) -> tuple[list[int], dict[str, torch.Tensor]]:
        """The prefix ids and features as the processor's apply_chat_template makes them."""
        out = self.processor.apply_chat_template(self.messages(audio, _PROBE_QUESTION), tokenize=True, return_dict=True)
        ids = out["input_ids"][0].tolist()
        n = len(self.head) + self._audio_count(ids)
        if ids[:len(self.head)] != self.head:
            raise LayoutError("the processor's prompt does not start with the layout's head")
        return ids[:n], {"input_features": out["input_features"]}

    def plain_inputs(self, audio: np.ndarray, prompt: str) -> dict[str, torch.Tensor]:
        """The model's inputs for one question about one clip, exactly as the processor makes them."""
        out = self.processor.apply_chat_template(self.messages(audio, prompt), tokenize=True, return_dict=True)
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"],
                "input_features": out["input_features"]}
