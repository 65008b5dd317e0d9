"""The local backend: a model loaded in this process (transformers, or a family's own model), answering requests.

`Engine` is the `Backend` the engine thread calls: it loads the model (`load`: the checkpoint's
family found from its config, or named by `model.backend`), keeps each question's baseline on
silence (`calibrate`), and answers a batch of requests of any rooms with the scoring core's
forwards (`scorer.Scorer`), so that a window that fails — out of memory, a bad clip — fails alone.

An `Engine` is not thread-safe by design: exactly one thread (the `EngineWorker`) owns it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from monitor.engine.api import Request, Result, Score, Transcript
from monitor.engine.errors import ModelLoadError, first_line, is_out_of_memory
from monitor.engine.families import Family
from monitor.engine.local.loading import load_model
from monitor.engine.local.scorer import Scorer
from monitor.engine.placement import Placement, resolve_placement
from monitor.engine.settings import ModelSettings

__all__ = ["Engine", "ModelLoadError"]

log = logging.getLogger(__name__)


class Engine(Scorer):
    """Owns a loaded model; answers `Request`s with `Result`s (the `Backend` protocol)."""

    def __init__(self, model: Any, processor: Any, settings: ModelSettings, placement: Placement,
                 family: Family | None = None):
        self.baselines: dict[str, float] = {}
        self.calibration_seconds: float | None = None
        self.calibrated = 0  # prompts whose baseline was computed (each once)
        self.failures = 0
        self.oom = 0
        self.batch_failures = 0  # batches that failed as a whole and were answered window by window
        super().__init__(model, processor, settings, placement, family)

    @classmethod
    def load(cls, settings: ModelSettings, family: Family | None = None) -> Engine:
        """Load the configured model; raise ModelLoadError (one line) when it cannot be.

        `family`: a family named by the settings rather than found from the checkpoint's config
        (`model.backend: salmonn`); its own loader, if it has one, reads the settings.
        """
        if settings.cpu_threads:
            torch.set_num_threads(settings.cpu_threads)
        placement = resolve_placement(settings)
        started = time.monotonic()
        load = family.load if family is not None and family.load is not None else load_model
        model, processor = load(settings, placement)
        engine = cls(model, processor, settings, placement, family)
        log.info("model %s loaded on %s as %s in %.1fs (%d yes / %d no answer tokens, audio encoder %s, "
                 "yes/no scoring %s with %s positions%s, up to %d windows per batch)", engine.name, placement.device,
                 placement.dtype, time.monotonic() - started, len(engine.yes_ids), len(engine.no_ids),
                 engine.encoder_path, engine.scoring_path, engine.positions.name,
                 f" and a {engine.sliding_window}-token sliding window" if engine.sliding_window else "",
                 engine.max_batch)
        return engine

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
                    log.warning("engine: a batch of %d windows failed (%s); answering them one by one [batch "
                                "failure %d]", len(chunk), first_line(exc), self.batch_failures)
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
            error = f"{first_line(exc)} (window {window.seq} skipped)"
            hint = ""
            count = self.failures
        if count in (1, 2, 3) or count % 100 == 0:  # a persistent fault must not flood the journal
            log.error("engine: %s%s [failure %d]", error, hint, count, exc_info=log.isEnabledFor(logging.DEBUG))
        return error
