"""Fail-safe 4: a reload in flight. An answer planned under the old rules never feeds a changed question.

Windows are planned under one rule set and may be decided under the next. Each request carries the
rule-set generation it was planned under; its answers are used only for rules whose question did not
change since (tested with `patience: 1`, where one stolen score would fire the rule).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import yaml
from test_rules_support import T0, answer, engine_for, ruleset_for, window

from monitor.config import load_config
from monitor.engine.api import Request, Result, Score, Transcript
from monitor.pipeline import Pipeline
from monitor.rules import load_rules
from tests.daemon_support import write_config

RATE = 16_000
OLD_Q = "Is a dog barking in this recording? Answer yes or no."
NEW_Q = "Is glass breaking in this recording? Answer yes or no."


def rules(ask_a: str, ask_b: str = "Is a baby crying in this recording? Answer yes or no.", text: str = "What is said?") -> str:
    return yaml.safe_dump({"rules": [
        {"id": "a", "ask": ask_a, "threshold": 0.5, "patience": 1},
        {"id": "b", "ask": ask_b, "threshold": 0.5, "patience": 1},
        {"id": "words", "ask": text, "answer": "text"},
        {"id": "help", "from": "words", "match": "help"},
    ]})


def test_an_answer_planned_before_a_reload_feeds_only_unchanged_questions(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, rules(OLD_Q))
    win = window(T0, 0)
    stale = answer(engine, win, 0.9)  # planned under generation 0: a and b asked, both 0.9
    assert engine.plan(win).generation == 0
    assert engine.swap(ruleset_for(tmp_path, rules(NEW_Q), "new.yaml")) == []
    assert engine.generation == 1
    events = engine.update(win, stale)
    assert [(e.rule_id, e.kind) for e in events] == [("b", "on")]  # b asks the same: its score counts
    assert not engine.is_on("a") and engine.status("a").score is None  # a's old score was never taken
    # the next window, planned under the new rules, decides a as usual
    win = window(T0 + 2, 1)
    assert [(e.rule_id, e.kind) for e in engine.update(win, answer(engine, win, 0.9))] == [("a", "on")]


def test_a_changed_text_question_drops_the_old_transcript(tmp_path: Path) -> None:
    from monitor.windows import Utterance

    engine = engine_for(tmp_path, rules(OLD_Q))
    win = window(T0, 0, speech_ratio=1.0, utterances=(Utterance(int(1 * RATE), int(3 * RATE)),))
    stale = answer(engine, win, 0.1, texts={"words": "help me"})
    assert stale.texts
    engine.swap(ruleset_for(tmp_path, rules(OLD_Q, text="Who is speaking?"), "new.yaml"))
    assert engine.update(win, stale) == []  # no text event, no match fired from the old question's answer
    same = engine_for(tmp_path, rules(OLD_Q))  # control: without the change, the same answer gives both
    stale = answer(same, win, 0.1, texts={"words": "help me"})
    same.swap(ruleset_for(tmp_path, rules(OLD_Q), "same.yaml"))
    assert [(e.rule_id, e.kind) for e in same.update(win, stale)] == [("words", "text"), ("help", "match")]


def test_many_reloads_later_an_answer_is_still_matched_to_its_questions(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, rules(OLD_Q))
    win = window(T0, 0)
    stale = answer(engine, win, 0.9)
    for i in range(engine.KEEP_GENERATIONS + 3):  # older than the generations kept: nothing is taken
        engine.swap(ruleset_for(tmp_path, rules(OLD_Q), f"r{i}.yaml"))
    assert engine.update(win, stale) == []


class PromptEngine:
    """Answers yes (0.99) to the old question and no (0.01) to any other, after the test lets it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    name = "prompt-engine"
    max_batch = 1

    def calibrate(self, prompts: Any, seconds: Any = None) -> dict[str, float]:
        return {p: 0.0 for p in prompts}

    def answer(self, requests: list[Request]) -> list[Result]:
        return [self.run(r) for r in requests]

    def run(self, request: Request) -> Result:
        self.entered.set()
        assert self.release.wait(30)
        scores = {q.key: Score(0.99 if q.prompt == OLD_Q else 0.01, 0.0) for q in request.questions}
        texts = [Transcript(t.key, "help", t.start, t.end) for t in request.texts]
        return Result(request.window, scores, texts)


def test_pipeline_reload_while_a_window_is_with_the_engine(tmp_path: Path) -> None:
    recording = tmp_path / "tone.wav"
    sf.write(recording, (np.random.default_rng(1).standard_normal(3 * RATE) * 0.1).astype(np.float32), RATE)
    config = load_config(write_config(tmp_path, tmp_path, 1, source=f"file:{recording}", rules=rules(OLD_Q),
                                      extra={"audio.realtime": False}))
    fake = PromptEngine()
    pipeline = Pipeline(config, load_rules(config.rules), engine_factory=lambda settings: fake)
    assert pipeline.load_model(10) is None
    pipeline.start_audio()
    try:
        assert fake.entered.wait(10)  # the first window is being answered under the old rules ...
        pipeline.swap_rules(ruleset_for(tmp_path, rules(NEW_Q), "new.yaml"))  # ... when the rules change
        fake.release.set()
        result = pipeline.next_result(10)
        assert result is not None and result.generation == 0 and result.scores["a"].score == 0.99
        events = pipeline.process(result)
        assert ("a", "on") not in [(e.rule_id, e.kind) for e in events]  # the old question's yes is not a's
        assert not pipeline.rules.is_on("a")
        while (later := pipeline.next_result(5)) is not None:  # the rest: queued before the swap, or asked anew
            pipeline.process(later)
        assert not pipeline.rules.is_on("a")
    finally:
        fake.release.set()
        pipeline.stop()


def test_a_reload_never_holds_the_engine_thread_on_a_served_model_that_hangs() -> None:
    """A question added by a reload is calibrated beside the windows, not before them: with the server hanging,
    every room's windows are still failed within `model.timeout` and the engine's heartbeat keeps moving; once
    the server answers, the new question gets its baseline."""
    import math
    import queue
    import time

    from monitor.engine.api import Question
    from monitor.engine.backends import load_backend
    from monitor.engine.settings import ModelSettings
    from monitor.engine.worker import EngineWorker
    from monitor.testing.signals import make_window, noise
    from tests.vllm_support import FakeServer, logprobs_answer

    hanging, release = threading.Event(), threading.Event()

    def chat(body: dict) -> tuple[int, Any, float]:
        if hanging.is_set():  # accepts, reads the request, and says nothing
            release.wait(60)
        question = body["messages"][-1]["content"][1]["text"]
        yes = 0.2 if question == "new?" else 0.7  # baselines on silence: 0.7 old, 0.2 new
        return 200, logprobs_answer([("token_id:11", math.log(yes)), ("token_id:21", math.log(1 - yes))]), 0.0

    fake = FakeServer(chat)
    results: queue.Queue[Result] = queue.Queue()
    timeout = 2.0
    worker = EngineWorker(ModelSettings(backend="openai", url=fake.url, name="fake", timeout=timeout),
                          on_result=results.put, engine_factory=load_backend, calibrate=["old?"], calibrate_seconds=1.0)
    seq = 0

    def ask(room: str, prompt: str) -> float:
        nonlocal seq
        seq += 1
        window = make_window(noise(1.0, 0.1, seed=seq), seq=seq, start=seq * RATE)
        assert worker.submit(Request(window, (Question("q", prompt),), source=room), drop_oldest=True)
        return time.monotonic()

    try:
        worker.start()
        assert worker.wait_ready(30), worker.load_error
        assert worker.wait_idle(30) and worker.engine.baselines == {"old?": 0.7}
        hanging.set()
        worker.calibrate(["old?", "new?"], 1.0)  # a reload added a question
        quiet, got, started = 0.0, [], time.monotonic()
        while time.monotonic() - started < 5 * timeout:  # two rooms, a window a second each
            ask("a", "old?"), ask("b", "new?")
            second = time.monotonic()
            while time.monotonic() - second < 1.0:
                quiet = max(quiet, time.monotonic() - worker.heartbeat)
                while not results.empty():
                    got.append(results.get())
                time.sleep(0.05)
        assert quiet < 2 * timeout + 2, f"the engine thread stood still for {quiet:.1f}s"
        rooms = {r.source for r in got}
        assert rooms == {"a", "b"} and len(got) >= 6, [(r.source, r.error) for r in got]
        assert all(r.error is not None for r in got)  # the server says nothing: every window fails, in time
        assert "new?" not in worker.engine.baselines
        # the server answers again: the new question gets its baseline, and its room its scores
        hanging.clear()
        release.set()
        deadline = time.monotonic() + 30
        while True:
            ask("b", "new?")
            result = results.get(timeout=2 * timeout + 2)
            if result.source == "b" and result.error is None:
                break
            assert time.monotonic() < deadline, result.error
            time.sleep(0.5)
        assert result.scores["q"].baseline == pytest.approx(0.2) and worker.engine.baselines["new?"] == pytest.approx(0.2)
    finally:
        release.set()
        worker.stop(5)
        fake.close()
