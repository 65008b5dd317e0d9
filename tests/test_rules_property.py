"""Properties of the rule engine over random rules, score sequences, gaps and schedules (hypothesis).

The yes_no engine is checked against the rules stated on the window history rather than on its
own state: ON and OFF alternate, cooldown holds, nothing but a closing OFF happens outside the
schedule, and an ON or OFF happens exactly when the history says it must.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_rules_support import RATE, T0, window

from monitor.engine.api import Result, Score, Transcript
from monitor.rules import RuleEngine, is_active, parse_rules
from monitor.windows import Utterance

ZONES = [timezone.utc, ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York")]
DAY_NAMES = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
HOPS = [0.5, 1.0, 2.0, 5.0, 60.0, 900.0, 3600.0]
STARTS = [  # plain days and the nights clocks change in Europe and the US
    T0, datetime(2026, 3, 28, 20, tzinfo=timezone.utc).timestamp(), datetime(2026, 10, 24, 20, tzinfo=timezone.utc).timestamp(),
    datetime(2026, 3, 7, 20, tzinfo=timezone.utc).timestamp(), datetime(2026, 10, 31, 20, tzinfo=timezone.utc).timestamp(),
]


@st.composite
def schedules(draw: st.DrawFn) -> str | None:
    if draw(st.booleans()):
        return None
    start, end = draw(st.integers(0, 47)), draw(st.integers(0, 47))
    if start == end:
        return None
    days = draw(st.sets(st.sampled_from(DAY_NAMES), min_size=1, max_size=7))
    hhmm = lambda half_hours: f"{half_hours // 2:02d}:{30 * (half_hours % 2):02d}"  # noqa: E731
    return f"{','.join(sorted(days, key=DAY_NAMES.index))} {hhmm(start)}-{hhmm(end)}"


@st.composite
def yes_no_rules(draw: st.DrawFn) -> dict:
    threshold = draw(st.floats(0.05, 1.0))
    rule = {
        "id": "r", "ask": "Does this recording contain a sound? Answer yes or no.",
        "threshold": threshold, "release": draw(st.floats(0.0, threshold)),
        "patience": draw(st.integers(1, 4)), "hold": draw(st.sampled_from([0, 1, 2, 5, 30, 600])),
        "cooldown": draw(st.sampled_from([0, 1, 2, 5, 30, 600, 7200])), "use": draw(st.sampled_from(["score", "lift"])),
        "gate": {"min_dbfs": -50},
    }
    schedule = draw(schedules())
    if schedule:
        rule["schedule"] = [schedule]
    return rule


steps = st.lists(
    st.tuples(
        st.sampled_from(HOPS),
        st.one_of(
            st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0)),  # (score, baseline)
            st.just("gated"), st.just("error"),
        ),
    ),
    min_size=1, max_size=60,
)


@dataclass
class Seen:
    t: float
    active: bool
    value: float | None  # None: not asked (gated or outside schedule)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rule=yes_no_rules(), seq=steps, tz=st.sampled_from(ZONES), start=st.sampled_from(STARTS))
def test_yes_no_engine_properties(rule: dict, seq: list, tz, start: float) -> None:
    ruleset = parse_rules(yaml.safe_dump({"rules": [rule]}))
    spec = ruleset["r"]
    engine = RuleEngine(ruleset, tz=tz)
    history: list[Seen] = []  # windows that were not errors
    on, last_on_t, last_sustain = False, None, 0.0
    t = start
    for i, (hop, outcome) in enumerate(seq):
        t += hop
        win = window(t, i, dbfs=-80.0 if outcome == "gated" else -20.0)
        request = engine.plan(win)
        active = is_active(spec.schedule, t, tz)
        asked = active and outcome != "gated"
        assert [q.key for q in request.questions] == (["r"] if asked else []), "asked outside schedule or gate"
        if outcome == "error":
            assert engine.update(win, Result(window=win, error="boom")) == []
            continue
        scores = {}
        value = None
        if asked:
            score, baseline = outcome
            scores["r"] = Score(score, baseline)
            value = score if spec.use == "score" else score - baseline
        events = engine.update(win, Result(window=win, scores=scores))
        history.append(Seen(t, active, value))
        assert len(events) <= 1
        kind = events[0].kind if events else None

        # what the history says must happen
        recent = history[-spec.patience:]
        streak_ok = len(recent) == spec.patience and all(s.value is not None and s.value >= spec.threshold for s in recent)
        cooled = last_on_t is None or t - last_on_t >= spec.cooldown
        sustained = value is not None and value >= spec.release
        if on:
            if not active:
                must = "off"  # the schedule ended: closed at once
            elif not sustained and t - last_sustain >= spec.hold:
                must = "off"
            else:
                must = None
        else:
            must = "on" if (active and streak_ok and cooled) else None
        assert kind == must, f"window {i} at t+{t - start:g}s: got {kind}, the history says {must}"

        if kind == "on":
            assert active and (last_on_t is None or t - last_on_t >= spec.cooldown)
            on, last_on_t, last_sustain = True, t, t
        elif kind == "off":
            on = False
        elif on and sustained:
            last_sustain = t
        if not active:
            assert kind in (None, "off"), "only a closing OFF may happen outside the schedule"
        assert engine.is_on("r") is on


@settings(max_examples=150, deadline=None)
@given(
    text_schedule=schedules(), match_schedule=schedules(), cooldown=st.sampled_from([0, 3, 10, 60]),
    seq=st.lists(st.tuples(st.sampled_from([1.0, 2.0, 600.0, 3600.0]), st.sampled_from(["help me", "hello", "", "HELP"]),
                           st.booleans()), min_size=1, max_size=40),
    tz=st.sampled_from(ZONES),
)
def test_text_and_match_properties(text_schedule, match_schedule, cooldown, seq, tz) -> None:
    speech = {"id": "speech", "answer": "text", "ask": "What is said?"}
    match = {"id": "help", "from": "speech", "match": r"\bhelp\b", "cooldown": cooldown}
    if text_schedule:
        speech["schedule"] = text_schedule
    if match_schedule:
        match["schedule"] = match_schedule
    ruleset = parse_rules(yaml.safe_dump({"rules": [speech, match]}))
    engine = RuleEngine(ruleset, tz=tz)
    t, answered, last_match = T0, set(), None
    previous: Utterance | None = None
    for i, (hop, said, repeat) in enumerate(seq):
        t += hop
        end = round((t - T0 + 8.0) * RATE)
        # a new utterance in this hop; sometimes the previous one is offered again (overlap)
        utts = [Utterance(end - RATE, end)] + ([previous] if repeat and previous else [])
        previous = utts[0]
        win = window(t, i, utterances=utts)
        request = engine.plan(win)
        assert all(task.end > task.start for task in request.texts)
        texts = [Transcript(task.key, said, task.start, task.end) for task in request.texts]
        # the engine must also cope with a model that answers the repeat anyway
        if repeat and previous is not None:
            texts.append(Transcript("speech", said, utts[-1].start, utts[-1].end))
        events = engine.update(win, Result(window=win, texts=texts))
        for e in events:
            if e.kind == "text":
                assert is_active(ruleset["speech"].schedule, t, tz), "text outside the text rule's schedule"
                key = (round(e.window_start, 6), round(e.window_end, 6))
                assert key not in answered, "the same utterance gave two text events"
                answered.add(key)
                assert e.text == said.strip() and e.text
            else:
                assert e.kind == "match" and e.rule_id == "help"
                assert is_active(ruleset["help"].schedule, t, tz) and is_active(ruleset["speech"].schedule, t, tz)
                assert last_match is None or t - last_match >= cooldown, "match cooldown violated"
                assert "help" in e.text.lower()
                last_match = t
