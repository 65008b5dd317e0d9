"""The rule engine, knob by knob: each table row is a score sequence and the events it must give."""

from __future__ import annotations

import itertools
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from test_rules_support import ERROR, GATED, RATE, T0, answer, drive, engine_for, kinds, window

from monitor.audio.ringbuffer import RingBuffer
from monitor.audio.sources import FileSource
from monitor.engine.api import Result, Score, Transcript
from monitor.windows import Utterance, WindowScheduler

G, E = GATED, ERROR


def one_rule(**knobs: Any) -> str:
    rule = {"id": "r", "ask": "Does this recording contain a test sound? Answer yes or no.",
            "threshold": 0.7, "release": 0.5, "gate": {"min_dbfs": -60}, **knobs}
    return yaml.safe_dump({"rules": [{k: v for k, v in rule.items() if v is not None}]})  # None: leave the key out


PATIENCE = [
    ("patience 1 fires on the first hit", {"patience": 1}, [0.9], [(0, "on")]),
    ("patience 3 needs three hits in a row", {"patience": 3}, [0.9, 0.9, 0.9], [(2, "on")]),
    ("a dip resets patience", {"patience": 3}, [0.9, 0.9, 0.5, 0.9, 0.9, 0.9], [(5, "on")]),
    ("a value in the hysteresis band is a dip for patience", {"patience": 2}, [0.9, 0.6, 0.9, 0.9], [(3, "on")]),
    ("a gated window resets patience", {"patience": 2}, [0.9, G, 0.9, 0.9], [(3, "on")]),
    ("an engine error neither counts nor resets", {"patience": 2}, [0.9, E, 0.9], [(2, "on")]),
    ("exactly at threshold is a hit", {"patience": 1}, [0.7], [(0, "on")]),
    ("just below threshold is not", {"patience": 1}, [0.699, 0.6999], []),
]

HYSTERESIS = [
    ("ON above threshold, OFF only below release", {"threshold": 0.7, "release": 0.4},
     [0.8, 0.5, 0.6, 0.45, 0.39], [(0, "on"), (4, "off")]),
    ("the band never turns a rule ON", {"threshold": 0.7, "release": 0.4}, [0.6, 0.65, 0.69, 0.5], []),
    ("exactly at release stays ON", {"threshold": 0.7, "release": 0.4}, [0.8, 0.4, 0.39], [(0, "on"), (2, "off")]),
    ("release equal to threshold: no band", {"threshold": 0.7, "release": 0.7}, [0.8, 0.69], [(0, "on"), (1, "off")]),
    ("default release is threshold - 0.1", {"threshold": 0.7, "release": None}, [0.8, 0.61, 0.59], [(0, "on"), (2, "off")]),
]

HOLD = [  # windows every 2 s
    ("hold 0: OFF at the first miss", {"hold": "0s"}, [0.9, 0.1], [(0, "on"), (1, "off")]),
    ("hold 10s: OFF 10 s after the last hit", {"hold": "10s"}, [0.9] + [0.1] * 6, [(0, "on"), (5, "off")]),
    ("a new hit extends hold", {"hold": "10s"}, [0.9, 0.1, 0.1, 0.9] + [0.1] * 6, [(0, "on"), (8, "off")]),
    ("a value in the band extends hold too", {"hold": "10s"}, [0.9, 0.1, 0.6] + [0.1] * 6, [(0, "on"), (7, "off")]),
    ("gated windows let hold run out", {"hold": "10s"}, [0.9, G, G, G, G, G, G], [(0, "on"), (5, "off")]),
    ("errors do not end hold early", {"hold": "4s"}, [0.9, E, E, E, 0.1], [(0, "on"), (4, "off")]),
]

COOLDOWN = [
    ("hits inside cooldown are suppressed", {"cooldown": "20s"},
     [0.9, 0.1, 0.9, 0.1, 0.9, 0.1, 0.9, 0.1, 0.9, 0.1, 0.9], [(0, "on"), (1, "off"), (10, "on")]),
    ("patience keeps counting during cooldown", {"cooldown": "10s", "patience": 2},
     [0.9, 0.9, 0.1, 0.9, 0.9, 0.9, 0.9], [(1, "on"), (2, "off"), (6, "on")]),
    ("cooldown does not end an ON", {"cooldown": "20s"}, [0.9] * 5, [(0, "on")]),
    ("no cooldown: ON again at the next hit", {"cooldown": "0s"}, [0.9, 0.1, 0.9], [(0, "on"), (1, "off"), (2, "on")]),
]

USE = [
    ("use lift compares score minus baseline", {"use": "lift", "threshold": 0.3, "release": 0.2},
     [(0.9, 0.7), (0.95, 0.5), (0.8, 0.65)], [(1, "on"), (2, "off")]),
    ("use score ignores the baseline", {"use": "score"}, [(0.9, 0.7), (0.95, 0.5), (0.8, 0.65)], [(0, "on")]),
]


@pytest.mark.parametrize(("case", "knobs", "steps", "expected"), PATIENCE + HYSTERESIS + HOLD + COOLDOWN + USE,
                         ids=[c[0] for c in PATIENCE + HYSTERESIS + HOLD + COOLDOWN + USE])
def test_knob_table(tmp_path: Path, case: str, knobs: dict[str, Any], steps: list[Any], expected: list[tuple[int, str]]) -> None:
    assert drive(engine_for(tmp_path, one_rule(**knobs)), steps, hop=2.0) == expected


# ---------------------------------------------------------------------------- gates


GATES = [
    ({}, -100.0, 0.0, True),
    ({"min_dbfs": -50}, -60.0, 0.0, False),
    ({"min_dbfs": -50}, -50.0, 0.0, True),
    ({"min_dbfs": -50}, -40.0, 0.0, True),
    ({"speech": 0.3}, -20.0, 0.2, False),
    ({"speech": 0.3}, -20.0, 0.3, True),
    ({"min_dbfs": -50, "speech": 0.3}, -40.0, 0.1, False),
    ({"min_dbfs": -50, "speech": 0.3}, -60.0, 0.9, False),
    ({"min_dbfs": -50, "speech": 0.3}, -40.0, 0.5, True),
]


@pytest.mark.parametrize(("gate", "level", "speech", "asked"), GATES)
def test_gate_decides_whether_the_question_is_asked(tmp_path: Path, gate: dict, level: float, speech: float, asked: bool) -> None:
    engine = engine_for(tmp_path, one_rule(gate=gate))
    request = engine.plan(window(T0, dbfs=level, speech_ratio=speech))
    assert [q.key for q in request.questions] == (["r"] if asked else [])
    if asked:
        assert request.questions[0].prompt == "Does this recording contain a test sound? Answer yes or no."


def test_plan_skips_disabled_rules_and_asks_each_enabled_one_once(tmp_path: Path) -> None:
    text = yaml.safe_dump({"rules": [
        {"id": "a", "ask": "A? Answer yes or no."},
        {"id": "b", "ask": "B? Answer yes or no.", "enabled": False},
        {"id": "c", "ask": "C? Answer yes or no.", "gate": {"min_dbfs": -30}},
    ]})
    engine = engine_for(tmp_path, text)
    assert [q.key for q in engine.plan(window(T0, dbfs=-40)).questions] == ["a"]
    assert [q.key for q in engine.plan(window(T0, dbfs=-20)).questions] == ["a", "c"]
    assert "b" not in engine.on_states()


# ---------------------------------------------------------------------------- schedules in the engine


NIGHT = one_rule(schedule=["22:00-07:00"], hold="1h", cooldown="0s")


def test_rule_is_asked_and_fires_only_inside_its_schedule(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, NIGHT)  # tz UTC
    start = datetime(2026, 3, 2, 20, 0, tzinfo=timezone.utc).timestamp()
    asked_hours, events = [], []
    for i in range(27):  # every 30 min, Monday 20:00 to Tuesday 09:00, always "yes"
        t = start + i * 1800
        win = window(t, i)
        if engine.plan(win).questions:
            asked_hours.append(datetime.fromtimestamp(t, timezone.utc).strftime("%H:%M"))
        events += [(datetime.fromtimestamp(e.ts, timezone.utc).strftime("%H:%M"), e.kind)
                   for e in engine.update(win, answer(engine, win, 0.95))]
    assert asked_hours[0] == "22:00" and asked_hours[-1] == "06:30" and len(asked_hours) == 18
    # ON when the schedule starts; OFF at once when it ends, although hold (1h) has not run out
    assert events == [("22:00", "on"), ("07:00", "off")]


def test_no_event_outside_schedule_and_on_again_next_night(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, NIGHT)
    start = datetime(2026, 3, 2, 21, 0, tzinfo=timezone.utc).timestamp()
    seen = []
    for i in range(2 * 24 * 2):  # two days, every 30 min
        t = start + i * 1800
        win = window(t, i)
        for e in engine.update(win, answer(engine, win, 0.95)):
            seen.append((datetime.fromtimestamp(t, timezone.utc).strftime("%a %H:%M"), e.kind))
    assert seen == [("Mon 22:00", "on"), ("Tue 07:00", "off"), ("Tue 22:00", "on"), ("Wed 07:00", "off")]
    assert engine.status("r").active is False


# ---------------------------------------------------------------------------- events and read access


def test_on_event_carries_scores_and_window_times(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, one_rule(use="lift", threshold=0.3, release=0.1, name="Test sound"))
    win = window(T0 + 10)
    (event,) = engine.update(win, answer(engine, win, (0.9, 0.4)))
    assert (event.rule_id, event.rule_name, event.kind) == ("r", "Test sound", "on")
    assert event.ts == win.t_end and event.window_start == win.t_start and event.window_end == win.t_end
    assert event.score == pytest.approx(0.9) and event.lift == pytest.approx(0.5)
    assert engine.is_on("r") and engine.on_states() == {"r": True}
    assert engine.latest_scores()["r"] == Score(0.9, 0.4)
    status = engine.status("r")
    assert status.on and status.score == pytest.approx(0.9) and status.asked_at == win.t_end and status.streak == 1


def test_result_error_changes_nothing(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, one_rule(patience=2))
    drive(engine, [0.9])
    before = engine.status("r")
    win = window(T0 + 2, 1)
    assert engine.update(win, Result(window=win, scores={"r": Score(0.99, 0)}, error="OOM")) == []
    assert engine.status("r") == before


def test_missing_score_for_an_asked_question_changes_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = engine_for(tmp_path, one_rule())
    win = window(T0)
    with caplog.at_level(logging.WARNING, logger="monitor.rules.engine"):
        assert engine.update(win, Result(window=win)) == []
    assert engine.status("r").streak == 0 and "no score came back" in caplog.text


def test_the_same_window_twice_gives_its_events_once(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, one_rule(hold="0s"))
    win = window(T0)
    result = answer(engine, win, 0.9)
    assert kinds(engine.update(win, result)) == [("r", "on")]
    assert engine.update(win, result) == []


# ---------------------------------------------------------------------------- text and derived rules


SPEECH = """
rules:
  - id: speech
    answer: text
    ask: Transcribe the speech in this recording.
    max_new_tokens: 48
  - id: call_for_help
    from: speech
    match: '\\bhelp\\b'
  - id: exact_case
    from: speech
    match: 'Stop'
    case_sensitive: true
  - id: night_help
    from: speech
    match: 'help'
    schedule: "22:00-06:00"
  - id: off_rule
    from: speech
    match: 'help'
    enabled: false
"""

MATCHES = [
    ("Please HELP me", ["text", "match:call_for_help"]),
    ("help", ["text", "match:call_for_help"]),
    ("that was helpful", ["text"]),
    ("Stop it", ["text", "match:exact_case"]),
    ("stop it", ["text"]),
    ("", []),
    ("   \n ", []),
]


@pytest.mark.parametrize(("transcript", "expected"), MATCHES)
def test_derived_rule_matching(tmp_path: Path, transcript: str, expected: list[str]) -> None:
    engine = engine_for(tmp_path, SPEECH)  # noon UTC: night_help is outside its schedule
    win = window(T0, utterances=[Utterance(10_000, 30_000)])
    request = engine.plan(win)
    assert [(t.key, t.start, t.end, t.max_new_tokens) for t in request.texts] == [("speech", 10_000, 30_000, 48)]
    events = engine.update(win, answer(engine, win, texts={"speech": transcript}))
    assert [e.kind if e.kind == "text" else f"match:{e.rule_id}" for e in events] == expected
    for e in events:
        assert e.text == " ".join(transcript.split())
        assert e.window_start == pytest.approx(win.t_start + (10_000 - win.start) / RATE)
        assert e.window_end == pytest.approx(win.t_start + (30_000 - win.start) / RATE)
        if e.kind == "match":
            assert e.source_rule == "speech"


def test_derived_rule_follows_its_own_schedule(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, SPEECH)
    night = datetime(2026, 3, 2, 23, 0, tzinfo=timezone.utc).timestamp()
    win = window(night, utterances=[Utterance(*_span(night, 3))])
    events = engine.update(win, answer(engine, win, texts={"speech": "help"}))
    assert sorted(e.rule_id for e in events if e.kind == "match") == ["call_for_help", "night_help"]


def test_match_cooldown(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, edit(SPEECH, "match: '\\bhelp\\b'\n", "match: '\\bhelp\\b'\n    cooldown: 10s\n"))
    out = []
    for i in range(8):  # an utterance ending in every window, 2 s apart
        t = T0 + 2 * i
        win = window(t, i, utterances=[Utterance(*_span(t, 1))])
        out += [(i, e.rule_id) for e in engine.update(win, answer(engine, win, texts={"speech": "help!"})) if e.kind == "match"]
    assert out == [(0, "call_for_help"), (5, "call_for_help")]


def test_text_rule_out_of_schedule_asks_nothing(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, edit(SPEECH, "    max_new_tokens: 48\n", "    max_new_tokens: 48\n    schedule: ['08:00-10:00']\n"))
    win = window(T0, utterances=[Utterance(10_000, 30_000)])
    assert engine.plan(win).texts == ()
    stray = Result(window=win, texts=[Transcript("speech", "help", 10_000, 30_000)])
    assert engine.update(win, stray) == []


def test_an_utterance_offered_by_two_overlapping_windows_is_answered_once(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, SPEECH)
    utt = Utterance(*_span(T0, 2))
    first = window(T0, 0, utterances=[utt])
    assert len(engine.plan(first).texts) == 1
    assert kinds(engine.update(first, answer(engine, first, texts={"speech": "help"}))) == [
        ("speech", "text"), ("call_for_help", "match")]
    second = window(T0 + 2, 1, utterances=[utt])  # the same utterance again
    assert engine.plan(second).texts == ()
    again = Result(window=second, texts=[Transcript("speech", "help", utt.start, utt.end)])
    assert engine.update(second, again) == []


def test_text_gate_is_measured_on_each_utterance(tmp_path: Path) -> None:
    text = edit(SPEECH, "    max_new_tokens: 48\n", "    max_new_tokens: 48\n    gate: {min_dbfs: -40, speech: 0.5}\n")
    engine = engine_for(tmp_path, text)
    rng = np.random.default_rng(1)
    n = 8 * RATE
    audio = np.zeros(n, dtype=np.float32)
    loud = slice(RATE, 2 * RATE)  # 1 s of noise at about -25 dBFS, flagged as speech
    quiet = slice(4 * RATE, 5 * RATE)  # 1 s at about -65 dBFS, flagged as speech
    audio[loud] = rng.uniform(-0.1, 0.1, RATE)
    audio[quiet] = rng.uniform(-0.001, 0.001, RATE)
    speech = np.zeros(n // 480, dtype=bool)
    speech[RATE // 480: 2 * RATE // 480] = True
    speech[4 * RATE // 480: 5 * RATE // 480] = True
    speech[6 * RATE // 480: int(6.3 * RATE) // 480] = True  # a loud utterance that is mostly not speech
    audio[6 * RATE: 7 * RATE] = rng.uniform(-0.1, 0.1, RATE)
    base = window(T0)
    utts = [Utterance(base.start + RATE, base.start + 2 * RATE), Utterance(base.start + 4 * RATE, base.start + 5 * RATE),
            Utterance(base.start + 6 * RATE, base.start + 7 * RATE)]
    win = window(T0, audio=audio, speech=speech, utterances=utts, speech_ratio=0.3, dbfs=-30)
    assert [(t.start, t.end) for t in engine.plan(win).texts] == [(utts[0].start, utts[0].end)]


def edit(text: str, old: str, new: str) -> str:
    assert old in text, f"{old!r} not in the rule text"
    return text.replace(old, new)


def _span(t_end: float, seconds: float) -> tuple[int, int]:
    """Sample range of the last `seconds` before `t_end`, in test_rules_support's index scheme."""
    end = round((t_end - T0 + 8.0) * RATE)
    return end - int(seconds * RATE), end


# ---------------------------------------------------------------------------- real windows over real speech


LATE = datetime(2026, 3, 2, 23, 0, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize(("start", "matches"), [(T0, ["call_for_help"]), (LATE, ["call_for_help", "night_help"])],
                         ids=["noon", "night"])
def test_scheduler_windows_over_real_speech_give_one_transcript_per_utterance(
        tmp_path: Path, make_speech, start: float, matches: list[str]) -> None:
    """Overlapping windows (8 s every 2 s) over espeak-ng speech: each utterance is transcribed once.

    The file is stamped with a pinned start (never the time the test runs): `night_help` is
    scheduled 22:00-06:00 and must match only in the night run.
    """
    import soundfile as sf

    parts = [make_speech("Help me, please, I have fallen."), make_speech("The weather is very nice today.")]
    gap = np.zeros(3 * RATE, dtype=np.float32)
    clips = [sf.read(p, dtype="float32")[0] for p in parts]
    audio = np.concatenate([gap, clips[0], gap, clips[1], gap])
    path = tmp_path / "speech.wav"
    sf.write(path, audio, RATE)

    engine = engine_for(tmp_path, edit(SPEECH, "    max_new_tokens: 48\n", "    max_new_tokens: 48\n    gate: {speech: 0.5}\n"))
    source = FileSource(path, RingBuffer(60 * RATE, RATE), realtime=False, start_time=start)
    source.start()
    scheduler = WindowScheduler(source, length=8.0, hop=2.0)
    tasks, events = [], []
    for win in scheduler.windows():
        texts = []
        for task in engine.plan(win).texts:  # the stand-in model "hears" help in the first utterance only
            said = "nice weather today" if tasks else "help me please i have fallen"
            tasks.append((task.start, task.end))
            texts.append(Transcript(task.key, said, task.start, task.end))
        events += engine.update(win, Result(window=win, texts=texts))
    source.stop()
    assert len(tasks) >= 2, f"expected both phrases to be found as utterances, got {tasks}"
    assert len(set(tasks)) == len(tasks), "an utterance was planned twice"
    assert all(b <= c for (_, b), (c, _) in itertools.pairwise(tasks)), "utterances overlap"
    text_events = [e for e in events if e.kind == "text"]
    assert len(text_events) == len(tasks)
    assert [e.rule_id for e in events if e.kind == "match"] == matches
