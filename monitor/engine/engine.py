"""The engine: one audio-language model asked many standing questions about each window.

Yes/no questions are scored from next-token logits in one forward pass per window, all of them
sharing the window's audio prefix (see `packing`); a batch of windows — of one room or of many —
goes through that forward together, one row per window. Free-text questions are answered by
greedy generation, those of a whole batch in one `generate()` (see `textgen`). The audio encoder
runs over each window's own frames rather than 30 s of padding where the loaded model passes the
check for it (see `encoder`). Packing, and batching windows, are likewise used only where the
load-time check finds them equal to the plain forward on this model (see `selfcheck`, `families`).
Each yes/no score is reported beside its score on silence (the
baseline), because audio LLMs say "yes" too easily and a rule may prefer to threshold on the lift.

An `Engine` is not thread-safe by design: exactly one thread (the `EngineWorker`) owns it.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from monitor.engine.api import Request, Result, Score, Transcript
from monitor.engine.encoder import CroppedEncoder, audio_tokens
from monitor.engine.families import position_rule, sliding_window
from monitor.engine.loading import ModelLoadError, Placement, is_out_of_memory, load_model, resolve_placement
from monitor.engine.mistral import MistralLayout, uses_mistral_common
from monitor.engine.packing import group_rows, pack_rows, yes_no_from_logits
from monitor.engine.prompts import LayoutError, PromptLayout, yes_no_token_ids
from monitor.engine.selfcheck import cropped_encoder, fast_features_agree, packed_scoring, window_batching
from monitor.engine.settings import ModelSettings
from monitor.engine.textgen import RowBudgets, eos_ids, left_pad, right_pad, trim

__all__ = ["Engine", "ModelLoadError"]

log = logging.getLogger(__name__)

MIN_SECONDS = 0.1  # shorter clips are zero-padded: the encoder needs a few frames to emit 2+ audio tokens
# What one more forward pass costs, in tokens of a forward (see `group_rows`): on a GPU, launching a
# 7B model's kernels and reading its weights once is worth some hundreds of tokens; on a CPU the
# model is compute-bound from the first token and a forward's fixed cost is a few dozen tokens at
# most (measured on `small`: batching 4 equal 8 s windows saved ~15 tokens' time per window).
FORWARD_OVERHEAD_TOKENS = {"cuda": 256, "cpu": 16}


@dataclass
class Clip:
    """One piece of audio ready for the model: its prompt prefix and its features."""

    ids: list[int]  # the prefix ids, the audio placeholder repeated once per audio embedding
    features: dict[str, torch.Tensor]  # input_features and the mask of its frames, named as the processor names them
    frames: int  # valid mel frames


def _cat_frames(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Clips' features (or their masks) as one batch, zero-padded to the longest.

    Most processors pad every clip to 30 s; some (Qwen3-Omni's, Gemma 3n's) only to its own
    length. Only the frame axis differs between clips — the last one of Whisper's (mel, frames),
    the middle one of Gemma 3n's (frames, mel) — so every axis is padded to its largest size.
    Padded frames are masked out (mask 0 / False), as the processor itself pads a batch of clips.
    """
    largest = [max(t.shape[d] for t in tensors) for d in range(tensors[0].dim())]
    padded = []
    for t in tensors:  # F.pad takes (before, after) pairs from the last axis backwards
        padded.append(torch.nn.functional.pad(t, [n for d in reversed(range(1, t.dim()))
                                                  for n in (0, largest[d] - t.shape[d])]))
    return torch.cat(padded)


# What processors call the mask of a clip's real mel frames (Whisper-style ones; Gemma 3n's).
FRAME_MASKS = ("feature_attention_mask", "input_features_mask")


class Engine:
    """Owns a loaded model and its processor; answers `Request`s with `Result`s."""

    min_seconds = MIN_SECONDS  # shorter audio is zero-padded to this length

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
            self.layout = self._prompt_layout()
            yes, no = yes_no_token_ids(self.tokenizer)
        except LayoutError as exc:
            raise ModelLoadError(f"model {self.name}: {exc}") from None
        self.yes_ids = torch.tensor(yes, device=self.device)
        self.no_ids = torch.tensor(no, device=self.device)
        self._body = model.base_model if model.base_model is not model else None
        self._head = model.get_output_embeddings()
        # Gemma's logits are soft-capped after the head (cap * tanh(logits / cap)): applied to the answer rows too.
        self._softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
        self._float_mask = self.dtype if settings.attn_implementation == "eager" else None
        self._gen_config = self._generation_config()
        self.baselines: dict[str, float] = {}
        self.calibration_seconds: float | None = None
        self.calibrated = 0  # prompts whose baseline was computed (each once)
        self.failures = 0
        self.oom = 0
        self.batch_failures = 0  # batches that failed as a whole and were answered window by window
        self.forward_overhead = FORWARD_OVERHEAD_TOKENS.get(self.device.type, FORWARD_OVERHEAD_TOKENS["cuda"])
        self._pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self._eos = eos_ids(self._gen_config)
        self._fast_features = self._fast_prefix()
        self.positions = position_rule(model)
        self.sliding_window = sliding_window(model)  # packed rows narrow the sliding layers' mask to it
        self.encoder: CroppedEncoder | None = self._cropped_encoder()
        self.batch_windows = True  # until checked: whether windows share forwards (and generate() calls)
        self.packed: bool = packed_scoring(self)
        self.batch_windows = window_batching(self)

    # ------------------------------------------------------------------ construction (subclasses may change the model's side)

    def _prompt_layout(self) -> PromptLayout | MistralLayout:
        """How a prompt splits into the shared audio prefix and each question's suffix.

        A chat template's layout, or mistral_common's instruct format where the tokenizer is one (Voxtral).
        """
        if uses_mistral_common(self.tokenizer):
            return MistralLayout(self.processor, self.settings.system_prompt)
        return PromptLayout(self.processor, self.settings.system_prompt)

    def _fast_prefix(self) -> bool:
        """Whether the prefix may be built without the processor (only where the self-check passes)."""
        return fast_features_agree(self)

    def _cropped_encoder(self) -> CroppedEncoder | None:
        """The audio encoder over each window's own frames (only where the self-check passes)."""
        return cropped_encoder(self)

    @classmethod
    def load(cls, settings: ModelSettings) -> Engine:
        """Load the configured model; raise ModelLoadError (one line) when it cannot be."""
        if settings.cpu_threads:
            torch.set_num_threads(settings.cpu_threads)
        placement = resolve_placement(settings)
        started = time.monotonic()
        engine = cls._from_settings(settings, placement)
        log.info("model %s loaded on %s as %s in %.1fs (%d yes / %d no answer tokens, audio encoder %s, "
                 "yes/no scoring %s with %s positions%s, up to %d windows per batch)", engine.name, placement.device,
                 placement.dtype, time.monotonic() - started, len(engine.yes_ids), len(engine.no_ids),
                 engine.encoder_path, engine.scoring_path, engine.positions.name,
                 f" and a {engine.sliding_window}-token sliding window" if engine.sliding_window else "",
                 engine.max_batch)
        return engine

    @classmethod
    def _from_settings(cls, settings: ModelSettings, placement: Placement) -> Engine:
        """The engine over the model the settings name, loaded on the placement."""
        model, processor = load_model(settings, placement)
        return cls(model, processor, settings, placement)

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

    @property
    def scoring_path(self) -> str:
        """"packed" (a window's questions share its prefix in one row) or "batched" (one padded row each)."""
        return "packed" if self.packed else "batched"

    @property
    def encoder_path(self) -> str:
        """"cropped" (the encoder runs over each window's frames) or "padded" (over 30 s every time)."""
        return "cropped" if self.encoder is not None else "padded"

    # ------------------------------------------------------------------ inputs

    def _fit(self, audio: np.ndarray) -> np.ndarray:
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if len(audio) > self.max_samples:  # the model hears at most 30 s; the processor would cut here too
            audio = audio[: self.max_samples]
        minimum = int(self.min_seconds * self.sample_rate)
        if len(audio) < minimum:
            audio = np.concatenate([audio, np.zeros(minimum - len(audio), dtype=np.float32)])
        return audio

    def _prefix_fast(self, audio: np.ndarray, extract_on: str | None = None) -> tuple[list[int], dict[str, torch.Tensor]]:
        if extract_on is None:  # the log-mel STFT runs on the model's GPU when there is one
            extract_on = self.placement.device if self.device.type == "cuda" else "cpu"
        return self.layout.prefix_fast(audio, extract_on)

    def _prefix_processor(self, audio: np.ndarray) -> tuple[list[int], dict[str, torch.Tensor]]:
        return self.layout.prefix_processor(audio)

    def _clip(self, audio: np.ndarray) -> Clip:
        ids, feats = self._prefix_fast(audio) if self._fast_features else self._prefix_processor(audio)
        feats = {k: v.to(self.device, self.dtype if v.is_floating_point() else v.dtype) for k, v in feats.items()}
        mask = next((feats[k] for k in FRAME_MASKS if k in feats), None)
        return Clip(ids, feats, int(mask.sum()) if mask is not None else 0)

    def _model_inputs(self, input_ids: torch.Tensor, clips: Sequence[Clip], keep_ids: bool = False) -> dict[str, Any]:
        """The model's inputs for rows of `input_ids`, row i holding the audio tokens of clips[i].

        Cropped encoder: the audio embeddings are computed here and written into the text
        embeddings (`inputs_embeds`; `keep_ids` adds the ids, which generate() needs). Otherwise
        the ids and the padded features, for the model's own forward to encode.
        """
        if self.encoder is not None:
            distinct = list({id(c): c for c in clips}.values())  # a clip shared by rows is encoded once
            audio = self.encoder.cropped(torch.cat([c.features["input_features"] for c in distinct]),
                                         [c.frames for c in distinct])
            if len(distinct) < len(clips):
                parts = dict(zip(map(id, distinct), audio.split([audio_tokens(c.frames) for c in distinct]), strict=True))
                audio = torch.cat([parts[id(c)] for c in clips])
            inputs: dict[str, Any] = {"inputs_embeds": self.encoder.embed(input_ids, audio)}
            if keep_ids:
                inputs["input_ids"] = input_ids
            return inputs
        return {"input_ids": input_ids, **{k: _cat_frames([c.features[k] for c in clips]) for k in clips[0].features}}

    # ------------------------------------------------------------------ model calls (subclasses may wrap them)

    def _forward(self, **inputs: Any) -> torch.Tensor:
        """Last hidden states of one packed forward (no LM head over every position: only the answers' rows)."""
        if self._body is not None:
            return self._body(**inputs, use_cache=False).last_hidden_state
        return self.model(**inputs, use_cache=False, output_hidden_states=True).hidden_states[-1]

    def _generate(self, inputs: dict[str, torch.Tensor], max_new_tokens: int,
                  budgets: Sequence[int] | None = None) -> torch.Tensor:
        """Greedy generation; `budgets` (one per row, at most max_new_tokens) stops each row at its own."""
        config = copy.deepcopy(self._gen_config)
        config.max_new_tokens = max_new_tokens
        extra: dict[str, Any] = {}
        if budgets is not None:
            from transformers import StoppingCriteriaList

            extra["stopping_criteria"] = StoppingCriteriaList(
                [RowBudgets(inputs["input_ids"].shape[1], budgets, self.device)])
        return self.model.generate(**inputs, generation_config=config, **extra)

    # ------------------------------------------------------------------ yes/no

    @torch.inference_mode()
    def score(self, audio: np.ndarray, prompts: Sequence[str]) -> dict[str, tuple[float, float]]:
        """{prompt: (P(yes)/(P(yes)+P(no)), P(yes)+P(no))} for every distinct prompt, in one forward pass."""
        return self.score_windows([audio], [prompts])[0]

    @torch.inference_mode()
    def score_windows(self, audios: Sequence[np.ndarray],
                      prompts: Sequence[Sequence[str]]) -> list[dict[str, tuple[float, float]]]:
        """`score` of several windows, each with its own prompts.

        Packed (where the load-time check found it equal to the plain forward): one forward for
        all windows, each window one row of its prefix and its questions (`_score_packed`).
        Otherwise batched: per window, one padded batch of its full prompts (`_score_batched`).
        Prompts that cannot share the prefix are scored the plain way, each alone.
        """
        windows = [self._fit(a) for a in audios]
        unique = [list(dict.fromkeys(p)) for p in prompts]
        score = self._score_packed if self.packed else self._score_batched
        got = score(windows, unique)
        return [{p: got[(i, p)] if (i, p) in got else self._score_plain_one(windows[i], p) for p in wanted}
                for i, wanted in enumerate(unique)]

    def _shared(self, windows: Sequence[np.ndarray], unique: Sequence[list[str]]) -> list[tuple[int, Clip, list[tuple[str, list[int]]]]]:
        """(window index, its clip, [(prompt, suffix ids)]) of every window with prompts that share the prefix."""
        out = []
        for i, (audio, wanted) in enumerate(zip(windows, unique, strict=True)):
            shared = [(p, ids) for p in wanted if (ids := self.layout.suffix_ids(p)) is not None]
            if shared:
                out.append((i, self._clip(audio), shared))
        return out

    def _score_packed(self, windows: Sequence[np.ndarray],
                      unique: Sequence[list[str]]) -> dict[tuple[int, str], tuple[float, float]]:
        """{(window, prompt): (score, mass)} from packed rows, one per window (see `pack_rows`).

        A question's logits do not depend on the other rows. Windows of very different lengths
        are split into a few forwards where padding the short ones would cost more than another
        forward (`group_rows`, `forward_overhead`).
        """
        shared = self._shared(windows, unique)
        rows = [(clip.ids, [ids for _, ids in questions]) for _, clip, questions in shared]
        got: dict[tuple[int, str], tuple[float, float]] = {}
        sizes = [len(prefix) + sum(len(s) for s in suffixes) for prefix, suffixes in rows]
        groups = group_rows(sizes, self.forward_overhead) if self.batch_windows else [[r] for r in range(len(rows))]
        for group in groups:
            packed = pack_rows([rows[r] for r in group], self.device, self._float_mask, self._pad_id,
                               self.sliding_window)
            inputs = self._model_inputs(packed.input_ids, [shared[r][1] for r in group])
            positions = self.positions.positions(packed, [len(shared[r][1].ids) for r in group],
                                                 [shared[r][1].features for r in group])
            hidden = self._forward(**inputs, position_ids=positions, attention_mask=packed.attention_mask)
            keys = [(shared[r][0], p) for r in group for p, _ in shared[r][2]]
            got.update(self._yes_no(hidden[packed.row, packed.last], keys))
        return got

    def _score_batched(self, windows: Sequence[np.ndarray],
                       unique: Sequence[list[str]]) -> dict[tuple[int, str], tuple[float, float]]:
        """{(window, prompt): (score, mass)}: per window, its full prompts as one right-padded batch.

        Each row is exactly its plain prompt (the model's own positions and mask rules apply; the
        padding comes after the last real token, so it changes nothing before it). With the cropped
        encoder the audio is encoded once per window and shared by the rows.
        """
        got: dict[tuple[int, str], tuple[float, float]] = {}
        for i, clip, questions in self._shared(windows, unique):
            rows = [clip.ids + ids for _, ids in questions]
            ids, mask = right_pad(rows, self._pad_id, self.device)
            inputs = self._model_inputs(ids, [clip] * len(rows))
            hidden = self._forward(**inputs, attention_mask=mask)
            last = torch.tensor([len(r) - 1 for r in rows], device=self.device)
            got.update(self._yes_no(hidden[torch.arange(len(rows), device=self.device), last],
                                    [(i, p) for p, _ in questions]))
        return got

    def _logits(self, last_hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits of some rows' last hidden states, as the model's own forward makes them."""
        logits = self._head(last_hidden)
        if self._softcap:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits

    def _yes_no(self, last_hidden: torch.Tensor, keys: list[tuple[int, str]]) -> dict[tuple[int, str], tuple[float, float]]:
        scores, masses = yes_no_from_logits(self._logits(last_hidden), self.yes_ids, self.no_ids)
        return dict(zip(keys, zip(scores.tolist(), masses.tolist(), strict=True), strict=True))

    @torch.inference_mode()
    def score_plain(self, audio: np.ndarray, prompts: Sequence[str]) -> dict[str, tuple[float, float]]:
        """The reference: each prompt alone, through the processor and a full forward (slow; for checks)."""
        audio = self._fit(audio)
        return {p: self._score_plain_one(audio, p) for p in dict.fromkeys(prompts)}

    def _plain_inputs(self, audio: np.ndarray, prompt: str) -> dict[str, torch.Tensor]:
        inputs = {k: v.to(self.device) for k, v in self.layout.plain_inputs(audio, prompt).items()}
        if "input_features" in inputs:
            inputs["input_features"] = inputs["input_features"].to(self.dtype)
        return inputs

    def _score_plain_one(self, audio: np.ndarray, prompt: str) -> tuple[float, float]:
        logits = self.model(**self._plain_inputs(audio, prompt), use_cache=False).logits[:, -1]
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
        return self.answer_texts([(audio, prompt, max_new_tokens)])[0]

    @torch.inference_mode()
    def answer_texts(self, questions: Sequence[tuple[np.ndarray, str, int]]) -> list[str]:
        """`answer_text` of several (clip, prompt, max_new_tokens), in one batched generate().

        Each answer is the one `answer_text` gives alone (see `textgen`). A prompt that cannot
        share the prefix layout is answered alone, through the processor.
        """
        answers: list[str] = [""] * len(questions)
        batch: list[tuple[int, Clip, list[int], int]] = []
        for i, (audio, prompt, max_new_tokens) in enumerate(questions):
            audio = self._fit(audio)
            budget = max(1, min(int(max_new_tokens), self.settings.max_new_tokens))
            suffix = self.layout.suffix_ids(prompt)
            if suffix is None:
                inputs = self._plain_inputs(audio, prompt)
                out = self._generate(inputs, budget)
                answers[i] = self._decode(out[0, inputs["input_ids"].shape[1]:].tolist(), budget)
            else:
                batch.append((i, self._clip(audio), suffix, budget))
        chunks = [batch] if self.batch_windows else [[one] for one in batch]
        for chunk in (c for c in chunks if c):
            ids, mask = left_pad([clip.ids + suffix for _, clip, suffix, _ in chunk], self._pad_id, self.device)
            inputs = {**self._model_inputs(ids, [clip for _, clip, _, _ in chunk], keep_ids=True), "attention_mask": mask}
            budgets = [budget for *_, budget in chunk]
            top = max(budgets)
            out = self._generate(inputs, top) if min(budgets) == top else self._generate(inputs, top, budgets)
            for row, (i, *_, budget) in enumerate(chunk):
                answers[i] = self._decode(out[row, ids.shape[1]:].tolist(), budget)
        return answers

    def _decode(self, new_tokens: list[int], budget: int) -> str:
        return self.tokenizer.decode(trim(new_tokens, budget, self._eos), skip_special_tokens=True).strip()

    # ------------------------------------------------------------------ requests (the Backend calls)

    def answer(self, requests: Sequence[Request]) -> list[Result]:
        """The `Backend` call: one Result per request, in order; up to `max_batch` windows per forward.

        If a batch fails as a whole (out of memory, a bad window), its windows are answered one
        by one, so that a bad window fails alone: its Result carries the error, the others answers.
        """
        results: list[Result] = []
        for at in range(0, len(requests), self.max_batch):
            chunk = list(requests[at:at + self.max_batch])
            if len(chunk) == 1:
                results.append(self.run(chunk[0]))
                continue
            try:
                results.extend(self._answer_batch(chunk))
            except Exception as exc:  # noqa: BLE001 - retried window by window
                self.batch_failures += 1
                if is_out_of_memory(exc) and torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if self.batch_failures in (1, 2, 3) or self.batch_failures % 100 == 0:
                    first = str(exc).strip().splitlines()
                    log.warning("engine: a batch of %d windows failed (%s: %s); answering them one by one [batch "
                                "failure %d]", len(chunk), type(exc).__name__, first[0] if first else "",
                                self.batch_failures)
                results.extend(self.run(r) for r in chunk)
        return results

    def run(self, request: Request) -> Result:
        """Answer one request. Never raises for a failure of this window: it becomes `Result.error`."""
        started = time.perf_counter()
        try:
            return self._answer_batch([request])[0]
        except Exception as exc:  # noqa: BLE001 - one bad window must not stop the engine
            window = request.window
            return Result(window, error=self._failed(exc, window), engine_ms=(time.perf_counter() - started) * 1000)

    def _answer_batch(self, requests: Sequence[Request]) -> list[Result]:
        """All the requests' yes/no questions in one forward, all their text questions in one generate().

        Raises if anything fails; `engine_ms` of each Result is the time of the whole batch (the
        time its window waited for the engine).
        """
        started = time.perf_counter()
        scores = self._scores(requests)
        texts = self._texts(requests)
        elapsed = (time.perf_counter() - started) * 1000
        return [Result(r.window, s, t, None, elapsed) for r, s, t in zip(requests, scores, texts, strict=True)]

    def _scores(self, requests: Sequence[Request]) -> list[dict[str, Score]]:
        asking = [r for r in requests if r.questions]
        if not asking:
            return [{} for _ in requests]
        self.calibrate([q.prompt for r in asking for q in r.questions],
                       None if self.calibration_seconds else asking[0].window.duration)
        raw = iter(self.score_windows([r.window.audio for r in asking],
                                      [[q.prompt for q in r.questions] for r in asking]))
        out: list[dict[str, Score]] = []
        for request in requests:
            got = next(raw) if request.questions else {}
            out.append({q.key: Score(got[q.prompt][0], self.baselines[q.prompt], got[q.prompt][1])
                        for q in request.questions})
        return out

    def _texts(self, requests: Sequence[Request]) -> list[list[Transcript]]:
        segments: list[tuple[int, str, int, int]] = []  # (request, key, start, end)
        questions: list[tuple[np.ndarray, str, int]] = []
        for n, request in enumerate(requests):
            for task, start, end in request.text_segments():
                segments.append((n, task.key, start, end))
                questions.append((request.window.segment(start, end), task.prompt, task.max_new_tokens))
        out: list[list[Transcript]] = [[] for _ in requests]
        answers = self.answer_texts(questions) if questions else []
        for (n, key, start, end), text in zip(segments, answers, strict=True):
            out[n].append(Transcript(key, text, start, end))
        return out

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
