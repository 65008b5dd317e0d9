"""The engine: one audio-language model asked many standing questions about each window.

Yes/no questions are scored from next-token logits in one forward pass per window, all of them
sharing the window's audio prefix (see `packing`). Free-text questions are answered by greedy
generation. Each yes/no score is reported beside its score on silence (the baseline), because
audio LLMs say "yes" too easily and a rule may prefer to threshold on the lift.

An `Engine` is not thread-safe by design: exactly one thread (the `EngineWorker`) owns it.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from monitor.engine.api import Request, Result, Score, Transcript
from monitor.engine.loading import ModelLoadError, Placement, is_out_of_memory, load_model, resolve_placement
from monitor.engine.packing import pack, yes_no_from_logits
from monitor.engine.prompts import LayoutError, PromptLayout, yes_no_token_ids
from monitor.engine.settings import ModelSettings

__all__ = ["Engine", "ModelLoadError"]

log = logging.getLogger(__name__)

MIN_SECONDS = 0.1  # shorter clips are zero-padded: the encoder needs a few frames to emit 2+ audio tokens


def _audio_tokens(frames: int) -> int:
    """Audio embeddings Qwen2-Audio's encoder emits for `frames` valid mel frames (conv stride 2, pool 2)."""
    return (((frames - 1) // 2 + 1) - 2) // 2 + 1


class Engine:
    """Owns a loaded model and its processor; answers `Request`s with `Result`s."""

    def __init__(self, model: Any, processor: Any, settings: ModelSettings, placement: Placement):
        self.model = model
        self.processor = processor
        self.settings = settings
        self.max_batch = settings.max_batch
        self.placement = placement
        self.device = torch.device(placement.device)
        self.dtype = getattr(torch, placement.dtype)
        self.tokenizer = processor.tokenizer
        self.features = processor.feature_extractor
        self.sample_rate = int(self.features.sampling_rate)
        self.max_samples = int(getattr(self.features, "n_samples", 30 * self.sample_rate))
        try:
            self.layout = PromptLayout(processor, settings.system_prompt)
            yes, no = yes_no_token_ids(self.tokenizer)
        except LayoutError as exc:
            raise ModelLoadError(f"model {self.name}: {exc}") from None
        self.yes_ids = torch.tensor(yes, device=self.device)
        self.no_ids = torch.tensor(no, device=self.device)
        self._body = model.base_model if model.base_model is not model else None
        self._head = model.get_output_embeddings()
        self._float_mask = self.dtype if settings.attn_implementation == "eager" else None
        self._gen_config = self._generation_config()
        self.baselines: dict[str, float] = {}
        self.calibration_seconds: float | None = None
        self.calibrated = 0  # prompts whose baseline was computed (each once)
        self.failures = 0
        self.oom = 0
        self._fast_features = self._fast_features_agree()

    # ------------------------------------------------------------------ construction

    @classmethod
    def load(cls, settings: ModelSettings) -> Engine:
        """Load the configured model; raise ModelLoadError (one line) when it cannot be."""
        if settings.cpu_threads:
            torch.set_num_threads(settings.cpu_threads)
        placement = resolve_placement(settings)
        started = time.monotonic()
        model, processor = load_model(settings, placement)
        engine = cls(model, processor, settings, placement)
        log.info("model %s loaded on %s as %s in %.1fs (%d yes / %d no answer tokens)", engine.name,
                 placement.device, placement.dtype, time.monotonic() - started, len(engine.yes_ids), len(engine.no_ids))
        return engine

    @property
    def name(self) -> str:
        return str(self.settings.path) if self.settings.path is not None else self.settings.id

    def _generation_config(self) -> Any:
        from transformers import GenerationConfig

        config = GenerationConfig.from_dict(self.model.generation_config.to_dict())
        config.do_sample = False  # greedy: the same audio gives the same words
        config.num_beams = 1
        config.temperature = config.top_p = config.top_k = None
        if config.pad_token_id is None:
            config.pad_token_id = self.tokenizer.pad_token_id
        return config

    def _fast_features_agree(self) -> bool:
        """Whether building the prefix ourselves gives exactly what the processor gives.

        The processor re-tokenises the whole prompt and re-checks its inputs on every call;
        the fast path only runs the feature extractor and splices cached ids. It is used only if
        it agrees with the processor on this model (it follows Qwen2-Audio's conventions).
        """
        for seconds in (1.0, 7.3):
            t = np.arange(int(seconds * self.sample_rate)) / self.sample_rate
            audio = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
            try:
                fast_ids, fast = self._prefix_fast(audio, extract_on="cpu")  # the processor extracts on the CPU
                slow_ids, slow = self._prefix_processor(audio)
            except Exception as exc:  # noqa: BLE001 - any mismatch means: use the processor
                log.info("prefix fast path unavailable for %s (%s); using the processor", self.name, exc)
                return False
            if fast_ids != slow_ids or fast.keys() != slow.keys() or any(
                    not torch.equal(fast[k].cpu(), slow[k].cpu()) for k in fast):
                log.info("prefix fast path disagrees with the processor of %s; using the processor", self.name)
                return False
        return True

    # ------------------------------------------------------------------ inputs

    def _fit(self, audio: np.ndarray) -> np.ndarray:
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if len(audio) > self.max_samples:  # the model hears at most 30 s; the processor would cut here too
            audio = audio[: self.max_samples]
        minimum = int(MIN_SECONDS * self.sample_rate)
        if len(audio) < minimum:
            audio = np.concatenate([audio, np.zeros(minimum - len(audio), dtype=np.float32)])
        return audio

    def _prefix_fast(self, audio: np.ndarray, extract_on: str | None = None) -> tuple[list[int], dict[str, torch.Tensor]]:
        if extract_on is None:  # the log-mel STFT runs on the model's GPU when there is one
            extract_on = self.placement.device if self.device.type == "cuda" else "cpu"
        fe = self.features(audio, sampling_rate=self.sample_rate, return_attention_mask=True,
                           padding="max_length", return_tensors="pt", device=extract_on)
        frames = int(fe["attention_mask"].sum())
        ids = self.layout.expand_prefix(_audio_tokens(frames))
        return ids, {"input_features": fe["input_features"], "feature_attention_mask": fe["attention_mask"]}

    def _prefix_processor(self, audio: np.ndarray) -> tuple[list[int], dict[str, torch.Tensor]]:
        out = self.processor(text=self.layout.prefix_text, audio=audio, sampling_rate=self.sample_rate,
                             return_tensors="pt")
        ids = out.pop("input_ids")[0].tolist()
        out.pop("attention_mask", None)
        return ids, dict(out)

    def _prefix(self, audio: np.ndarray) -> tuple[list[int], dict[str, torch.Tensor]]:
        ids, feats = self._prefix_fast(audio) if self._fast_features else self._prefix_processor(audio)
        feats = {k: v.to(self.device, self.dtype if v.is_floating_point() else v.dtype) for k, v in feats.items()}
        return ids, feats

    # ------------------------------------------------------------------ model calls (subclasses may wrap them)

    def _forward(self, **inputs: Any) -> torch.Tensor:
        """Last hidden states of one packed forward (no LM head over every position: only the answers' rows)."""
        if self._body is not None:
            return self._body(**inputs, use_cache=False).last_hidden_state
        return self.model(**inputs, use_cache=False, output_hidden_states=True).hidden_states[-1]

    def _generate(self, inputs: dict[str, torch.Tensor], max_new_tokens: int) -> torch.Tensor:
        config = copy.deepcopy(self._gen_config)
        config.max_new_tokens = max_new_tokens
        return self.model.generate(**inputs, generation_config=config)

    # ------------------------------------------------------------------ yes/no

    @torch.inference_mode()
    def score(self, audio: np.ndarray, prompts: Sequence[str]) -> dict[str, tuple[float, float]]:
        """{prompt: (P(yes)/(P(yes)+P(no)), P(yes)+P(no))} for every distinct prompt, in one forward pass."""
        audio = self._fit(audio)
        unique = list(dict.fromkeys(prompts))
        out: dict[str, tuple[float, float]] = {}
        shared = [(p, ids) for p in unique if (ids := self.layout.suffix_ids(p)) is not None]
        if shared:
            prefix, feats = self._prefix(audio)
            packed = pack(prefix, [ids for _, ids in shared], self.device, self._float_mask)
            hidden = self._forward(input_ids=packed.input_ids, position_ids=packed.position_ids,
                                   attention_mask=packed.attention_mask, **feats)
            logits = self._head(hidden[0, packed.last])
            scores, masses = yes_no_from_logits(logits, self.yes_ids, self.no_ids)
            for (prompt, _), s, m in zip(shared, scores.tolist(), masses.tolist(), strict=True):
                out[prompt] = (s, m)
        for prompt in unique:
            if prompt not in out:
                out[prompt] = self._score_plain_one(audio, prompt)
        return out

    @torch.inference_mode()
    def score_plain(self, audio: np.ndarray, prompts: Sequence[str]) -> dict[str, tuple[float, float]]:
        """The reference: each prompt alone, through the processor and a full forward (slow; for checks)."""
        audio = self._fit(audio)
        return {p: self._score_plain_one(audio, p) for p in dict.fromkeys(prompts)}

    def _score_plain_one(self, audio: np.ndarray, prompt: str) -> tuple[float, float]:
        inputs = self.processor(text=self.layout.render(prompt), audio=audio, sampling_rate=self.sample_rate,
                                return_tensors="pt").to(self.device)
        if "input_features" in inputs:
            inputs["input_features"] = inputs["input_features"].to(self.dtype)
        logits = self.model(**inputs, use_cache=False).logits[:, -1]
        score, mass = yes_no_from_logits(logits, self.yes_ids, self.no_ids)
        return float(score[0]), float(mass[0])

    # ------------------------------------------------------------------ calibration

    def calibrate(self, prompts: Iterable[str], seconds: float | None = None) -> dict[str, float]:
        """Baselines (score on silence) of the prompts, computing only those not known yet.

        `seconds` is the window length the silence should have; a new length recomputes all.
        """
        if seconds is not None and seconds != self.calibration_seconds:
            if self.baselines:
                log.info("window length changed to %gs: recalibrating %d question(s)", seconds, len(self.baselines))
            self.baselines.clear()
            self.calibration_seconds = float(seconds)
        prompts = list(dict.fromkeys(prompts))
        missing = [p for p in prompts if p not in self.baselines]
        if missing:
            length = self.calibration_seconds or 8.0
            silence = np.zeros(int(round(length * self.sample_rate)), dtype=np.float32)
            for prompt, (score, _mass) in self.score(silence, missing).items():
                self.baselines[prompt] = score
                log.debug("baseline %.4f on %gs of silence: %s", score, length, prompt)
            self.calibrated += len(missing)
        return {p: self.baselines[p] for p in prompts}

    # ------------------------------------------------------------------ text

    @torch.inference_mode()
    def answer_text(self, audio: np.ndarray, prompt: str, max_new_tokens: int = 64) -> str:
        """Greedy answer to a free-text question about a clip, without any chat-template text."""
        audio = self._fit(audio)
        budget = max(1, min(int(max_new_tokens), self.settings.max_new_tokens))
        suffix = self.layout.suffix_ids(prompt)
        if suffix is not None:
            prefix, feats = self._prefix(audio)
            ids = torch.tensor([prefix + suffix], device=self.device)
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), **feats}
        else:
            inputs = dict(self.processor(text=self.layout.render(prompt), audio=audio, sampling_rate=self.sample_rate,
                                         return_tensors="pt").to(self.device))
            if "input_features" in inputs:
                inputs["input_features"] = inputs["input_features"].to(self.dtype)
        out = self._generate(inputs, budget)
        new = out[0, inputs["input_ids"].shape[1]:]
        return self.tokenizer.decode(new, skip_special_tokens=True).strip()

    # ------------------------------------------------------------------ one window

    def answer(self, requests: Sequence[Request]) -> list[Result]:
        """The `Backend` call: one Result per request, in order (each window fails alone)."""
        return [self.run(request) for request in requests]

    def run(self, request: Request) -> Result:
        """Answer one request. Never raises for a failure of this window: it becomes `Result.error`."""
        started = time.perf_counter()
        window = request.window
        try:
            scores: dict[str, Score] = {}
            if request.questions:
                prompts = [q.prompt for q in request.questions]
                self.calibrate(prompts, None if self.calibration_seconds else window.duration)
                raw = self.score(window.audio, prompts)
                for q in request.questions:
                    value, mass = raw[q.prompt]
                    scores[q.key] = Score(value, self.baselines[q.prompt], mass)
            texts: list[Transcript] = []
            for task in request.texts:
                start, end = max(task.start, window.start), min(task.end, window.end)
                if end <= start:
                    log.warning("text question %s asks about samples %d-%d, outside window %d-%d: skipped",
                                task.key, task.start, task.end, window.start, window.end)
                    continue
                text = self.answer_text(window.segment(start, end), task.prompt, task.max_new_tokens)
                texts.append(Transcript(task.key, text, start, end))
            return Result(window, scores, texts, None, (time.perf_counter() - started) * 1000)
        except Exception as exc:  # noqa: BLE001 - one bad window must not stop the engine
            return Result(window, error=self._failed(exc, window), engine_ms=(time.perf_counter() - started) * 1000)

    def _failed(self, exc: Exception, window: Any) -> str:
        self.failures += 1
        if is_out_of_memory(exc):
            self.oom += 1
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            error = f"out of memory on window {window.seq} ({exc.__class__.__name__}): window skipped"
            hint = "; fewer questions per window, shorter windows or a smaller model.dtype use less memory"
            count = self.oom
        else:
            first = str(exc).strip().splitlines()
            error = f"{type(exc).__name__}: {first[0] if first else ''} (window {window.seq} skipped)"
            hint = ""
            count = self.failures
        if count in (1, 2, 3) or count % 100 == 0:  # a persistent fault must not flood the journal
            log.error("engine: %s%s [failure %d]", error, hint, count, exc_info=log.isEnabledFor(logging.DEBUG))
        return error
