"""The `openai` backend: the standing questions asked of a model served elsewhere (vLLM), over HTTP.

A small board (a satellite) captures and decides rules; a GPU box runs the model behind an
OpenAI-compatible API. Nothing here imports torch or transformers: the audio goes out as a WAV
written with numpy/soundfile, the answers come back as JSON.

Yes/no questions mean what they mean with the local engine: score = P(yes) / (P(yes) + P(no)),
each side summed over every token of the served tokenizer that reads "yes" / "no" ("Yes",
" yes", "YES", ...; found once at start through the server's /tokenize). One chat completion per
question, `max_tokens: 1`, `temperature: 0`, the window's audio *before* the question, so that
the server's prefix cache shares the audio between the questions of a window.

- exact: the request restricts the answer to those tokens (`allowed_token_ids`) and asks for
  all of their logprobs; a vLLM started with `--logprobs-mode processed_logprobs` returns them
  renormalised over the allowed tokens, which is the score exactly. The mass P(yes) + P(no) over
  the whole vocabulary is not returned that way: `Score.mass` is None.
- top (fallback, probed once at start when exact is unavailable): the plain top-K logprobs (K up
  to the server's maximum); the yes/no tokens among them give the score and the mass. A question
  whose top K answers hold neither yes nor no is *unknown*: its key is left out of the Result
  (the rule engine then leaves that rule's state unchanged) and counted, never a score of 0.

All questions of a batch of windows, of all rooms, go out at once (up to `model.concurrency` in
flight): the server batches them. A window fails alone — its Result carries the error — when
any of its requests fails or the batch's `model.timeout` runs out; a server that is away makes
requests fail at once for a short, growing pause (see `served_client.Backoff`), so capture never
waits on it and answers resume by themselves when it is back.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitor.engine.api import Request, Result, Score, Transcript
from monitor.engine.errors import ModelLoadError, first_line
from monitor.engine.served_client import ServedClient, ServerError
from monitor.engine.served_start import LOAD_TIMEOUT, WORDS, answer_ids, check_served
from monitor.engine.settings import ModelSettings
from monitor.engine.wav import fit, wav_base64

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000  # what Qwen2-Audio's feature extractor takes; silence for calibration is made at it
PROBE_QUESTION = "Answer yes or no."
PROBE_SECONDS = 1.0
TOP_K_ASK = 100  # fallback: the most top answers asked for; a server allowing fewer says how many
RENORMALISED = 1e-3  # exact mode: the allowed tokens' probabilities must sum to 1 within this
TOKEN_ID = re.compile(r"^token_id:(-?\d+)$")
MAX_ALLOWED = re.compile(r"max allowed: (\d+)")


def _wav(audio: np.ndarray, sample_rate: int) -> str:
    """Audio as the server gets it: fitted as the local engine fits it (30 s at most, 0.1 s at least), float WAV."""
    return wav_base64(fit(audio, sample_rate), sample_rate)


def _logsumexp(values: Sequence[float]) -> float:
    if not values:
        return -math.inf
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(math.fsum(math.exp(v - top) for v in values))


@dataclass(frozen=True)
class Scoring:
    """How yes/no questions are asked of this server (probed once at start)."""

    mode: str  # "exact" (allowed_token_ids, renormalised) or "top" (plain top-K)
    k: int  # top_logprobs asked for
    token_ids: bool  # the server names tokens by id (vLLM's return_tokens_as_token_ids)


class ServedModel:
    """A `Backend` answering through an OpenAI-compatible server; one owner thread, a pool of HTTP threads."""

    def __init__(self, settings: ModelSettings, client: ServedClient, yes: Sequence[int], no: Sequence[int],
                 scoring: Scoring):
        self.settings = settings
        self.client = client
        self.max_batch = settings.max_batch
        self.yes_ids = frozenset(yes)
        self.no_ids = frozenset(no)
        self.allowed = sorted(self.yes_ids | self.no_ids)
        self.scoring = scoring
        self.pool = cf.ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="served")
        self.baselines: dict[str, float] = {}
        self.calibration_seconds: float | None = None
        self.calibrated = 0
        self._baseline_jobs: dict[str, cf.Future] = {}  # baselines being asked, by question (engine thread only)
        self.failures = 0  # windows whose Result carries an error
        self.unknown = 0  # answers holding neither yes nor no (fallback scoring only)

    # ------------------------------------------------------------------ construction

    @property
    def name(self) -> str:
        return f"{self.settings.name} at {self.client.where}"

    @classmethod
    def load(cls, settings: ModelSettings) -> ServedModel:
        """Connect, check the served name, find the yes/no tokens, probe how to score.

        Raises ModelLoadError (one line) when the server cannot be reached or does not serve `model.name`.
        """
        started = time.monotonic()
        client = ServedClient(settings)
        pool = cf.ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="served-load")
        try:
            check_served(client, settings)
            ids = answer_ids(client, settings, pool)
            model = cls(settings, client, *(ids or ([], [])), Scoring("top", TOP_K_ASK, False))
            model.scoring = model._probe(has_ids=ids is not None)
        except ServerError as exc:  # an answer the probes did not expect
            client.close()
            raise ModelLoadError(f"model.name {settings.name} at {client.where}: {exc}") from None
        except BaseException:
            client.close()
            raise
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        yes_no = (f"{len(model.yes_ids)} yes / {len(model.no_ids)} no answer tokens" if ids is not None
                  else "answer tokens matched by their text (the server has no /tokenize)")
        how = ("exact (renormalised over the yes/no tokens)" if model.scoring.mode == "exact"
               else f"from the top {model.scoring.k} answers (approximate; see docs/served.md)")
        log.info("model %s ready in %.1fs: yes/no scores %s, %s; %d requests in flight, up to %d windows per batch",
                 model.name, time.monotonic() - started, how, yes_no, settings.concurrency, model.max_batch)
        return model

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    def _probe(self, has_ids: bool) -> Scoring:
        """Exact scoring where the server allows it, else the largest top-K it allows."""
        audio = _wav(np.zeros(int(PROBE_SECONDS * SAMPLE_RATE), dtype=np.float32), SAMPLE_RATE)
        if has_ids:
            exact = Scoring("exact", len(self.allowed), True)
            try:
                answer = self.client.post("/v1/chat/completions", self._yes_no_body(audio, PROBE_QUESTION, exact),
                                          timeout=LOAD_TIMEOUT, guard=False)
            except ServerError as exc:
                self._load_failure(exc)
                log.warning("model %s: exact yes/no scores are unavailable (%s); scoring from the top answers instead "
                            "(start vLLM with --max-logprobs %d or more)", self.name, exc, len(self.allowed))
            else:
                if self._renormalised(answer):
                    return exact
                log.warning("model %s: the server does not renormalise logprobs over the allowed tokens; scoring from "
                            "the top answers instead (start vLLM with --logprobs-mode processed_logprobs for exact "
                            "scores)", self.name)
        scoring = Scoring("top", TOP_K_ASK, has_ids)
        for _ in range(4):
            try:
                self.client.post("/v1/chat/completions", self._yes_no_body(audio, PROBE_QUESTION, scoring),
                                 timeout=LOAD_TIMEOUT, guard=False)
                return scoring
            except ServerError as exc:
                self._load_failure(exc)
                text = str(exc)
                most = MAX_ALLOWED.search(text)
                if most and 0 < int(most.group(1)) < scoring.k:
                    scoring = Scoring("top", int(most.group(1)), scoring.token_ids)
                elif scoring.token_ids and "return_tokens_as_token_ids" in text:
                    scoring = Scoring("top", scoring.k, False)
                elif scoring.k > 20:
                    scoring = Scoring("top", 20, scoring.token_ids)
                else:
                    break
        raise ModelLoadError(f"model.name {self.settings.name} at {self.client.where} gives no logprobs for a yes/no "
                             "question with audio (start vLLM as docs/served.md shows)")

    def _load_failure(self, exc: ServerError) -> None:
        """Raise ModelLoadError for a probe failure that no other way of asking would avoid."""
        text = str(exc)
        if "prompt replacement" in text:
            raise ModelLoadError(f"model {self.name} cannot place the audio in the prompt ({text}): start vLLM with "
                                 "--chat-template-content-format string") from None
        if "audio" in text.lower() and ("not support" in text.lower() or "modalit" in text.lower()):
            raise ModelLoadError(f"model {self.name} does not take audio ({text}): serve an audio-language model "
                                 "such as Qwen/Qwen2-Audio-7B-Instruct") from None
        if exc.server:
            raise ModelLoadError(f"model {self.name} failed its first question ({text}): see the server's log") from None

    def _renormalised(self, answer: Any) -> bool:
        entries = _top_logprobs(answer)
        ids = [self._token_id(str(e.get("token", ""))) for e in entries]
        if not entries or any(i not in self.yes_ids and i not in self.no_ids for i in ids):
            return False
        total = math.fsum(math.exp(float(e["logprob"])) for e in entries if e.get("logprob") is not None)
        return abs(total - 1.0) < RENORMALISED

    # ------------------------------------------------------------------ one request

    def _messages(self, audio: str, prompt: str) -> list[dict[str, Any]]:
        """The audio first, then the question: the audio prefix is shared by every question of a window."""
        messages: list[dict[str, Any]] = []
        if self.settings.system_prompt is not None:
            messages.append({"role": "system", "content": self.settings.system_prompt})
        messages.append({"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
            {"type": "text", "text": prompt},
        ]})
        return messages

    def _yes_no_body(self, audio: str, prompt: str, scoring: Scoring) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.settings.name, "messages": self._messages(audio, prompt),
                                "max_tokens": 1, "temperature": 0, "logprobs": True, "top_logprobs": scoring.k}
        if scoring.mode == "exact":
            body["allowed_token_ids"] = self.allowed
        if scoring.token_ids:
            body["return_tokens_as_token_ids"] = True
        return body

    @staticmethod
    def _token_id(token: str) -> int | None:
        match = TOKEN_ID.match(token)
        return int(match.group(1)) if match else None

    def _side(self, token: str) -> str | None:
        """"yes", "no" or None for one returned token (by id where the server gives ids, else by its text)."""
        index = self._token_id(token)
        if index is not None:
            return "yes" if index in self.yes_ids else "no" if index in self.no_ids else None
        text = token.strip().lower()
        return text if text in WORDS else None

    def _score_one(self, audio: str, prompt: str, deadline: float) -> tuple[float, float | None] | None:
        """(score, mass) of one question, or None when the answer holds neither yes nor no."""
        answer = self._post(self._yes_no_body(audio, prompt, self.scoring), deadline)
        seen: set[str] = set()
        sides: dict[str, list[float]] = {"yes": [], "no": []}
        for entry in _top_logprobs(answer):
            token, logprob = str(entry.get("token", "")), entry.get("logprob")
            side = self._side(token)
            if side is None or logprob is None or token in seen:
                continue
            seen.add(token)
            sides[side].append(float(logprob))
        if not sides["yes"] and not sides["no"]:
            return None
        yes, no = _logsumexp(sides["yes"]), _logsumexp(sides["no"])
        if yes == -math.inf or no == -math.inf:
            score = 0.0 if yes == -math.inf else 1.0
        else:
            score = 1.0 / (1.0 + math.exp(min(700.0, no - yes)))
        mass = None if self.scoring.mode == "exact" else min(1.0, math.exp(_logsumexp([yes, no])))
        return score, mass

    def _text_one(self, audio: str, prompt: str, max_tokens: int, deadline: float) -> str:
        body = {"model": self.settings.name, "messages": self._messages(audio, prompt), "max_tokens": max_tokens,
                "temperature": 0}
        answer = self._post(body, deadline)
        try:
            return str(answer["choices"][0]["message"]["content"] or "").strip()
        except (KeyError, IndexError, TypeError):
            raise ServerError(f"{self.client.where} answered a text question without a message", server=False) from None

    def _post(self, body: dict[str, Any], deadline: float) -> Any:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ServerError(f"no answer within model.timeout ({self.settings.timeout:g}s)", server=False)
        return self.client.post("/v1/chat/completions", body, timeout=left)

    # ------------------------------------------------------------------ calibration

    def calibrate(self, prompts: Iterable[str], seconds: float | None = None) -> dict[str, float]:
        """Baselines (score on silence) of the prompts, computing only those not known yet; a new length recomputes all.

        Waits for them (at start, before any window is answered, a fresh server may be slow: up
        to `LOAD_TIMEOUT`); raises ServerError when one cannot be had.
        """
        prompts = list(dict.fromkeys(prompts))
        pending = self._calibration(prompts, seconds, time.monotonic() + max(self.settings.timeout, LOAD_TIMEOUT))
        for future in pending.values():
            future.result()  # raises ServerError: the caller decides what fails
        self._harvest()
        return {p: self.baselines[p] for p in prompts}

    def start_calibration(self, prompts: Iterable[str], seconds: float | None = None) -> None:
        """Ask for the baselines not known yet and return at once (after a reload that adds questions).

        The engine thread answers every room: it must not wait on a server that hangs. The
        questions go out beside the windows' ones, within the normal `model.timeout`; a window
        that needs one of these baselines waits for it within its own time, and one that could
        not be had is asked again with the next window that needs it.
        """
        self._calibration(prompts, seconds, time.monotonic() + self.settings.timeout)

    def _calibration(self, prompts: Iterable[str], seconds: float | None, deadline: float) -> dict[str, cf.Future]:
        """The prompts not calibrated yet, each asked about silence (in flight, beside the windows' questions).

        A baseline already being asked (`start_calibration`, an earlier batch) is not asked again:
        its request is shared; one that failed is asked afresh.
        """
        if seconds is not None and seconds != self.calibration_seconds:
            if self.baselines:
                log.info("window length changed to %gs: recalibrating %d question(s)", seconds, len(self.baselines))
            self.baselines.clear()
            self._baseline_jobs.clear()  # asked about the old length: their answers are left unused
            self.calibration_seconds = float(seconds)
        self._harvest()
        missing = [p for p in dict.fromkeys(prompts) if p not in self.baselines]
        if not missing:
            return {}
        asking = [p for p in missing if p not in self._baseline_jobs]
        if asking:
            length = self.calibration_seconds or 8.0
            silence = _wav(np.zeros(int(round(length * SAMPLE_RATE)), dtype=np.float32), SAMPLE_RATE)
            for p in asking:
                self._baseline_jobs[p] = self.pool.submit(self._score_one, silence, p, deadline)
        return {p: self._baseline_jobs[p] for p in missing}

    def _harvest(self) -> None:
        """Keep the baselines whose requests have finished; forget those that failed (asked again when needed)."""
        for prompt, future in list(self._baseline_jobs.items()):
            if not future.done():
                continue
            del self._baseline_jobs[prompt]
            if not future.cancelled() and future.exception() is None:
                self._keep_baseline(prompt, future.result())

    def _keep_baseline(self, prompt: str, got: tuple[float, float | None] | None) -> None:
        if got is None:
            log.warning("question %r: on %gs of silence the server's top %d answers hold neither yes nor no; its "
                        "baseline is taken as 0.5 (start vLLM as docs/served.md shows for exact scores)",
                        prompt, self.calibration_seconds or 8.0, self.scoring.k)
        self.baselines[prompt] = 0.5 if got is None else got[0]
        self.calibrated += 1
        log.debug("baseline %.4f on %gs of silence: %s", self.baselines[prompt], self.calibration_seconds or 8.0, prompt)

    # ------------------------------------------------------------------ requests (the Backend calls)

    def answer(self, requests: Sequence[Request]) -> list[Result]:
        """One Result per request, in order; every question of every window in flight together.

        Never raises for a failure of the server: each window whose questions (or their
        baselines, for questions new since the last calibration) could not all be answered
        within `model.timeout` carries the error in its Result; the other windows their answers.
        """
        started = time.perf_counter()
        deadline = time.monotonic() + self.settings.timeout
        asking = [r for r in requests if r.questions]
        baselines = self._calibration([q.prompt for r in asking for q in r.questions],
                                      None if self.calibration_seconds or not asking else asking[0].window.duration,
                                      deadline)
        jobs: list[tuple[dict[str, cf.Future], list[tuple[str, int, int, cf.Future]]]] = []
        for request in requests:
            window = request.window
            scores: dict[str, cf.Future] = {}
            if request.questions:
                audio = _wav(window.audio, window.sample_rate)  # once per window: shared by its questions
                for prompt in dict.fromkeys(q.prompt for q in request.questions):
                    scores[prompt] = self.pool.submit(self._score_one, audio, prompt, deadline)
            texts: list[tuple[str, int, int, cf.Future]] = []
            for task, start, end in request.text_segments():
                budget = max(1, min(int(task.max_new_tokens), self.settings.max_new_tokens))
                clip = _wav(window.segment(start, end), window.sample_rate)
                texts.append((task.key, start, end, self.pool.submit(self._text_one, clip, task.prompt, budget, deadline)))
            jobs.append((scores, texts))
        everything = list(baselines.values()) + [f for scores, texts in jobs for f in
                                                 [*scores.values(), *(t[3] for t in texts)]]
        cf.wait(everything, timeout=max(0.0, deadline - time.monotonic()) + 0.5)
        self._harvest()
        elapsed = (time.perf_counter() - started) * 1000
        results = []
        for request, (scores, texts) in zip(requests, jobs, strict=True):
            needed = [baselines[p] for p in scores if p in baselines]
            results.append(self._result(request, scores, texts, needed, elapsed))
        return results

    def _result(self, request: Request, scores: dict[str, cf.Future], texts: list[tuple[str, int, int, cf.Future]],
                baselines: list[cf.Future], elapsed: float) -> Result:
        window = request.window
        own = [*scores.values(), *(t[3] for t in texts)]
        futures = [*baselines, *own]
        error = next((f.exception() for f in futures if f.done() and not f.cancelled() and f.exception()), None)
        if error is None and not all(f.done() for f in futures):
            error = ServerError(f"no answer within model.timeout ({self.settings.timeout:g}s)", server=False)
        if error is not None:
            for future in own:  # a baseline still in flight is shared: another window may use it
                future.cancel()
            return Result(window, error=self._failed(error, window), engine_ms=elapsed)
        self._harvest()  # a baseline may have arrived since the batch looked
        got: dict[str, Score] = {}
        for question in request.questions:
            answer = scores[question.prompt].result()
            if answer is None:
                self._unknown(question.key)
                continue
            got[question.key] = Score(answer[0], self.baselines[question.prompt], answer[1])
        transcripts = [Transcript(key, future.result(), start, end) for key, start, end, future in texts]
        return Result(window, got, transcripts, None, elapsed)

    def _unknown(self, key: str) -> None:
        self.unknown += 1
        if self.unknown in (1, 2, 3) or self.unknown % 100 == 0:
            log.warning("rule %s: the server's top %d answers hold neither yes nor no; left unanswered (the rule's "
                        "state is unchanged) [unknown answer %d]", key, self.scoring.k, self.unknown)

    def _failed(self, exc: BaseException, window: Any) -> str:
        self.failures += 1
        error = f"{first_line(exc, with_type=not isinstance(exc, ServerError))} (window {window.seq} skipped)"
        if self.failures in (1, 2, 3) or self.failures % 100 == 0:  # a long outage must not flood the journal
            log.error("engine: %s [failure %d]", error, self.failures)
        return error


def _top_logprobs(answer: Any) -> list[dict[str, Any]]:
    try:
        entries = answer["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    except (KeyError, IndexError, TypeError):
        raise ServerError("the server answered a yes/no question without logprobs", server=False) from None
    return [e for e in entries or [] if isinstance(e, dict)]
