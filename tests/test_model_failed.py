"""A model that cannot answer is not a healthy monitor: the `model_failed` state, its pure core first.

A room whose windows keep failing for `model.failure_timeout` (no answer in between) turns its ON
rules OFF with `reason: model_failed` and says so; the next answer brings it back. End to end, with
the real vLLM stopped and continued: tests/test_served.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from monitor.config import load_config
from monitor.engine.api import Result, Score
from monitor.modelhealth import MODEL_OK, Streak, StreakView, assess
from monitor.pipeline import Hearing, Pipeline
from monitor.rules import load_rules
from monitor.testing.signals import make_window, noise
from tests.daemon_support import write_config

RATE = 16_000

HELD_RULES = """\
rules:
  - id: loud
    ask: Does this recording contain any sound at all? Answer yes or no.
    threshold: 0.5
    hold: 60s
    gate: {min_dbfs: -45}
"""


def _result(seq: int, *, error: str | None = None, asked: bool = True, loud: bool = True) -> Result:
    window = make_window(noise(2.0, 0.2 if loud else 0.0, seed=seq), seq=seq, start=seq * RATE)
    if error is not None:
        return Result(window, error=error)
    return Result(window, {"loud": Score(0.9, 0.1)} if asked else {})


# ---------------------------------------------------------------------------- streaks, numbers in


@pytest.mark.parametrize(("answers", "failed"), [
    ([], False),
    ([(0, "x")], False),  # one failure is no failed model, however long ago
    ([(0, "x"), (29.9, "x")], False),
    ([(0, "x"), (30, "x")], True),
    ([(0, "x"), (10, None), (40, "x")], True),  # a window that asked nothing says nothing either way
    ([(0, "x"), (20, "ok"), (40, "x")], False),  # an answer ends the streak
    ([(0, "x"), (20, "ok"), (40, "x"), (70, "x")], True),
])
def test_a_streak_of_failures_fails_the_model_once_it_has_lasted_the_limit(answers, failed) -> None:
    streak = Streak()
    for i, (t, what) in enumerate(answers):
        streak.note(_result(i, error=what if what not in (None, "ok") else None, asked=what is not None), float(t))
    state = assess(streak.view, None, 30.0)
    assert state.ok is not failed
    if failed:
        assert state.label == "model_failed" and "its windows failed for" in state.detail and "last: x" in state.detail


def test_the_engines_streak_over_every_room_fails_a_quiet_room_too() -> None:
    quiet = StreakView()  # asked nothing: no failure of its own
    everyone = StreakView(since=100.0, last=131.0, failures=31, error="model server unavailable")
    state = assess(quiet, everyone, 30.0)
    assert not state.ok and "the windows of every room failed for 31s (31 failures" in state.detail
    assert assess(quiet, StreakView(), 30.0) == MODEL_OK


# ---------------------------------------------------------------------------- a room's state machine


@pytest.fixture
def pipeline(tmp_path: Path):
    recording = tmp_path / "room.wav"
    sf.write(recording, np.zeros(RATE, dtype=np.float32), RATE)
    config = load_config(write_config(tmp_path, tmp_path, 1, source=f"file:{recording}", rules=HELD_RULES,
                                      extra={"model.failure_timeout": "30s"}))
    pipeline = Pipeline(config, load_rules(config.rules))
    clock = [1000.0]
    pipeline.clock = lambda: clock[0]
    pipeline.test_clock = clock
    return pipeline


def test_a_room_failing_for_the_limit_turns_its_alarm_off_and_recovers_with_the_next_answer(pipeline) -> None:
    clock = pipeline.test_clock
    assert [(e.kind, e.rule_id) for e in pipeline.process(_result(0))] == [("on", "loud")]  # ON, held 60 s
    for seq, t in enumerate((1000, 1010, 1020, 1029), start=1):  # failing, but not for 30 s yet
        clock[0] = t
        assert pipeline.process(_result(seq, error="no answer within model.timeout (5s)")) == []
        assert pipeline.check_model() == (False, [])
    assert pipeline.rules.is_on("loud") and pipeline.model_state.ok
    clock[0] = 1030
    pipeline.process(_result(5, error="model server unavailable (cannot reach it)"))
    changed, events = pipeline.check_model(now=1_700_000_030.0)
    assert changed and [(e.rule_id, e.kind, e.reason, e.ts, e.source) for e in events] == [
        ("loud", "off", "model_failed", 1_700_000_030.0, pipeline.id)]
    assert events[0].payload("n", "v")["reason"] == "model_failed"
    state = pipeline.model_state
    assert state.label == "model_failed" and "its windows failed for 30s (5 failures; last: model server" in state.detail
    assert not pipeline.rules.is_on("loud")
    clock[0] = 1040  # quiet windows ask nothing: still failed; more failures: still failed, nothing new
    pipeline.process(_result(6, asked=False, loud=False))
    pipeline.process(_result(7, error="model server unavailable"))
    assert pipeline.check_model() == (False, []) and not pipeline.model_state.ok
    assert "(6 failures" in pipeline.model_state.detail  # the detail moves on
    clock[0] = 1050  # answers return: decided again at once, and the room recovers
    assert [(e.kind, e.rule_id) for e in pipeline.process(_result(8))] == [("on", "loud")]
    assert pipeline.check_model() == (True, []) and pipeline.model_state.ok
    assert pipeline.stats.failed == 6


def test_the_engine_failing_every_room_fails_a_room_that_asked_nothing(pipeline) -> None:
    assert pipeline.process(_result(0))  # ON
    health = pipeline.worker.health  # the engine's own count, over every room's answers
    health.failed(500.0, "CUDA out of memory")
    health.failed(531.0, "CUDA out of memory")
    changed, events = pipeline.check_model()
    assert changed and [(e.kind, e.reason) for e in events] == [("off", "model_failed")]
    assert "the windows of every room failed for 31s" in pipeline.model_state.detail
    health.answered()  # another room was answered: the model is back
    assert pipeline.check_model() == (True, []) and pipeline.model_state.ok


def test_a_room_can_be_deaf_and_model_failed_and_its_status_names_the_first_of_muted_deaf_model_failed(tmp_path) -> None:
    from monitor.engine.worker import EngineWorker
    from monitor.rooms import ActiveRoom

    recording = tmp_path / "room.wav"
    sf.write(recording, np.zeros(RATE, dtype=np.float32), RATE)
    config = load_config(write_config(tmp_path, tmp_path, 1, source=f"file:{recording}", rules=HELD_RULES,
                                      extra={"model.failure_timeout": "2s"}))
    worker = EngineWorker(config.model, on_result=lambda r: None)
    room = ActiveRoom(config, config.rooms[0], load_rules(config.rules), worker, tmp_path / "state", [],
                      lambda what, exc: None)
    assert room.status()["state"] == "listening" and room.status()["model"] == "ok"
    worker.health.failed(0.0, "boom")
    worker.health.failed(2.0, "boom")
    assert room.check_model()[0]
    status = room.status()
    assert (status["state"], status["model"]) == ("model_failed", "model_failed") and "boom" in status["model_detail"]
    room.pipeline.hearing = Hearing(False, "capture_lost", "device gone")
    assert (room.status()["state"], room.status()["model"]) == ("deaf", "model_failed")
    room.set_muted(own=True)
    assert (room.status()["state"], room.status()["model"]) == ("muted", "model_failed")


def test_failure_timeout_is_a_validated_duration(tmp_path: Path) -> None:
    from monitor.yamlsource import ValidationFailed

    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "home.yaml").touch()
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  failure_timeout: 45s\n")
    assert load_config(path).model.failure_timeout == 45.0
    assert load_config(write_config(tmp_path, tmp_path, 1)).model.failure_timeout == 30.0  # the default
    for bad in ("0s", "2h", "soon"):
        path.write_text(f"model:\n  failure_timeout: {bad}\n")
        with pytest.raises(ValidationFailed, match=f"{path}:2: model.failure_timeout"):
            load_config(path)


def test_a_whole_homes_status_and_status_line_name_the_rooms_the_model_does_not_answer(tmp_path: Path) -> None:
    import yaml

    from monitor.daemon import Daemon
    from monitor.systemd import Notifier

    for room in ("kitchen", "porch"):
        sf.write(tmp_path / f"{room}.wav", np.zeros(RATE, dtype=np.float32), RATE)
    (tmp_path / "rules.yaml").write_text(HELD_RULES)
    path = tmp_path / "home.yaml"
    path.write_text(yaml.safe_dump({
        "node_id": "home", "rules": str(tmp_path / "rules.yaml"), "state_dir": str(tmp_path / "state"),
        "sources": {room: {"audio": {"source": f"file:{tmp_path / room}.wav"}} for room in ("kitchen", "porch")},
        "model": {"failure_timeout": "5s"}, "web": {"enabled": False},
    }))
    daemon = Daemon(load_config(path), notifier=Notifier())
    daemon._prepare()
    kitchen, porch = daemon.rooms["kitchen"], daemon.rooms["porch"]
    kitchen.pipeline.clock = lambda: 100.0
    kitchen.pipeline.process(_result(1, error="boom"))
    kitchen.pipeline.clock = lambda: 106.0
    kitchen.pipeline.process(_result(2, error="boom"))
    daemon.board.check_model()
    status = daemon.status()
    assert (status["state"], status["model"]) == ("listening", "model_failed")  # the porch still listens
    assert status["rooms"]["kitchen"]["state"] == "model_failed" and status["rooms"]["porch"]["model"] == "ok"
    assert daemon.board.status_line().startswith("model failed: kitchen; 1/2 rooms listening: ")
    assert daemon.metrics.model_ok.labels("kitchen")._value.get() == 0
    daemon.worker.health.failed(200.0, "out of memory")  # then the engine fails every room
    daemon.worker.health.failed(205.0, "out of memory")
    daemon.board.check_model()
    assert daemon.status()["state"] == "model_failed"
    assert daemon.board.status_line().startswith("model failed: kitchen, porch; 0/2 rooms listening: ")
    daemon.worker.health.answered()
    kitchen.pipeline.process(_result(3))
    daemon.board.check_model()
    assert daemon.status()["state"] == "listening" and daemon.status()["model"] == "ok"
    assert daemon.metrics.model_ok.labels("porch")._value.get() == 1
