"""Hot reload with the engine alone: a broken edit leaves the running rules in force; a good one
swaps them between windows, and a rule whose question did not change keeps its state."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from test_rules_support import RATE, T0, answer, kinds, window

from monitor.rules import RuleEngine, RuleReloader, load_rules
from monitor.windows import Utterance

RULES = """\
rules:
  - id: alarm
    ask: Does this recording contain an alarm beeping? Answer yes or no.
    threshold: 0.7
    release: 0.5
    hold: 10s
  - id: dog
    ask: Does this recording contain a dog barking? Answer yes or no.
    threshold: 0.8
  - id: speech
    answer: text
    ask: Transcribe the speech.
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1_780_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup(tmp_path: Path):
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "home.yaml").write_text(RULES)
    clock = Clock()
    engine = RuleEngine(load_rules(folder))
    return folder, engine, RuleReloader(folder, clock=clock), clock


class Feed:
    """Windows 2 s apart with per-rule scores; returns the events of each."""

    def __init__(self, engine: RuleEngine):
        self.engine, self.i = engine, 0

    def __call__(self, **values: float):
        t = T0 + 2 * self.i
        win = window(t, self.i)
        self.i += 1
        return kinds(self.engine.update(win, answer(self.engine, win, values)))


def test_change_detection(setup) -> None:
    folder, _engine, reloader, _clock = setup
    file = folder / "home.yaml"
    assert not reloader.changed()
    os.utime(file, (1, 1))  # a touch without a content change is not a change
    assert not reloader.changed()
    file.write_text(RULES.replace("threshold: 0.8", "threshold: 0.85"))
    assert reloader.changed()
    assert reloader.reload().ok and not reloader.changed()
    (folder / ".#home.yaml").write_text("lock")  # editor lock files are not rule files
    assert not reloader.changed()
    (folder / "extra.yaml").write_text("rules:\n  - id: extra\n    ask: q\n")
    assert reloader.changed()
    reloader.reload()
    (folder / "extra.yaml").unlink()
    assert reloader.changed()


def test_a_broken_edit_keeps_the_running_rules(setup, caplog: pytest.LogCaptureFixture) -> None:
    folder, engine, reloader, clock = setup
    feed = Feed(engine)
    assert feed(alarm=0.9) == [("alarm", "on")]
    file = folder / "home.yaml"
    file.write_text(RULES.replace("threshold: 0.8", "threshold: 8").replace("hold: 10s", "hold: 10s\n    colour: red"))
    assert reloader.changed()
    clock.now += 5
    with caplog.at_level(logging.ERROR, logger="monitor.rules.reload"):
        outcome = reloader.reload()
    assert not outcome.ok and outcome.ruleset is None
    assert [str(p) for p in outcome.problems] == [
        f"{file}:7: rules[0].colour: unknown key; a yes_no rule has: id, name, enabled, schedule, icon, entity_category, "
        "ask, gate, answer, use, threshold, release, patience, hold, cooldown, device_class, describe, describe_prompt",
        f"{file}:10: rules[1].threshold: must be between 0 and 1 (got 8)",
    ]
    for problem in outcome.problems:  # every error is logged
        assert str(problem) in caplog.text
    assert "keeping the running rules" in outcome.message
    status = reloader.status()
    assert status is not None and status["ok"] is False and len(status["errors"]) == 2 and status["time"]
    assert not reloader.changed(), "a failed attempt is not retried until the file changes again"
    # the daemon does not swap: the old rules run on, with their state
    assert engine.is_on("alarm")
    assert feed(alarm=0.6, dog=0.85) == [("dog", "on")]  # old threshold 0.8, not 8
    assert feed(alarm=0.1, dog=0.9) == []  # hold 10 s keeps the alarm ON
    # a fixed file is picked up and swapped without resetting the alarm
    file.write_text(RULES.replace("threshold: 0.8", "threshold: 0.95"))
    assert reloader.changed()
    outcome = reloader.reload()
    assert outcome.ok and outcome.ruleset is not None and reloader.status()["ok"] is True
    assert engine.swap(outcome.ruleset) == []
    assert engine.is_on("alarm") and engine.is_on("dog")
    assert engine.ruleset["dog"].threshold == 0.95


def test_swap_keeps_state_unless_the_question_changes(setup) -> None:
    folder, engine, reloader, _clock = setup
    feed = Feed(engine)
    assert feed(alarm=0.9, dog=0.9) == [("alarm", "on"), ("dog", "on")]
    file = folder / "home.yaml"

    # new knobs for an ON rule: state kept, and the new knobs apply from the next window
    file.write_text(RULES.replace("release: 0.5\n    hold: 10s", "release: 0.3\n    hold: 0s"))
    assert engine.swap(reloader.reload().ruleset) == []
    assert feed(alarm=0.4, dog=0.9) == []  # 0.4 >= new release 0.3
    assert feed(alarm=0.2, dog=0.9) == [("alarm", "off")]  # hold is 0 now
    assert feed(alarm=0.9, dog=0.9) == [("alarm", "on")]

    # a new question for the same id starts fresh: the old ON is closed
    file.write_text(RULES.replace("a dog barking", "a cat meowing").replace("release: 0.5\n    hold: 10s", "release: 0.3\n    hold: 0s"))
    off = engine.swap(reloader.reload().ruleset)
    assert kinds(off) == [("dog", "off")]
    assert off[0].ts == T0 + 2 * 3 and off[0].score is None
    assert not engine.is_on("dog") and engine.is_on("alarm")

    # disabling or removing an ON rule closes it too; a new rule starts OFF and is asked
    file.write_text(RULES.replace("    release: 0.5\n", "    release: 0.5\n    enabled: false\n")
                    .replace("  - id: dog", "  - id: glass\n    ask: Glass? Answer yes or no.\n  - id: dog2"))
    assert kinds(engine.swap(reloader.reload().ruleset)) == [("alarm", "off")]
    assert engine.on_states() == {"glass": False, "dog2": False}
    assert [q.key for q in engine.plan(window(T0 + 100)).questions] == ["glass", "dog2"]


def test_text_rule_keeps_its_place_across_a_swap(setup) -> None:
    folder, engine, reloader, _clock = setup
    end = round(8.0 * RATE)
    utt = Utterance(end - RATE, end)
    win = window(T0, 0, utterances=[utt])
    assert kinds(engine.update(win, answer(engine, win, texts={"speech": "hello"}))) == [("speech", "text")]
    (folder / "home.yaml").write_text(RULES.replace("threshold: 0.8", "threshold: 0.9"))
    engine.swap(reloader.reload().ruleset)
    again = window(T0 + 2, 1, utterances=[utt])
    assert engine.plan(again).texts == (), "an utterance answered before the reload is not answered again"


def test_rules_that_disappear_are_a_failed_reload(setup) -> None:
    folder, engine, reloader, _clock = setup
    (folder / "home.yaml").unlink()
    assert reloader.changed()
    outcome = reloader.reload()
    assert not outcome.ok and "no *.yaml rule files" in outcome.problems[0].message
    assert engine.ruleset.ids == ["alarm", "dog", "speech"]


def test_reload_of_a_single_file_and_on_demand(tmp_path: Path) -> None:
    file = tmp_path / "rules.yaml"
    file.write_text(RULES)
    reloader = RuleReloader(file)
    assert reloader.status() is None and reloader.last is None
    outcome = reloader.reload()  # SIGHUP: reload even when nothing changed
    assert outcome.ok and outcome.ruleset.ids == ["alarm", "dog", "speech"]
    assert outcome.message == "reloaded 3 rule(s), 3 enabled"
    file.write_text(RULES + "  - id: more\n    ask: q\n")
    assert reloader.changed() and reloader.reload().ruleset.ids[-1] == "more"
