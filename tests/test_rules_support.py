"""Helpers shared by the rule tests: windows at chosen times and a stand-in for the model's answers.

The rule engine is pure, so its tests drive it with `Window` objects built here (the same type
the window scheduler makes) and with `Result`s that answer exactly the questions `plan` asked,
as the model engine does. Scheduler-made windows over real audio are used in test_rules_engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from monitor.engine.api import Result, Score, Transcript
from monitor.events import Event
from monitor.rules import RuleEngine, RuleSet, load_rules
from monitor.windows import Utterance, Window

RATE = 16_000
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc).timestamp()  # a Monday, noon UTC
LENGTH = 8.0
_SILENCE = np.zeros(int(LENGTH * RATE), dtype=np.float32)

GATED = "gated"  # a window below every test rule's gate: the question is not asked
ERROR = "error"  # a window whose Result carries an error


def window(t_end: float, seq: int = 0, *, dbfs: float = -20.0, speech_ratio: float = 0.0,
           utterances: Sequence[Utterance] = (), audio: np.ndarray | None = None,
           speech: np.ndarray | None = None, length: float = LENGTH) -> Window:
    """A window ending at epoch `t_end`, its sample indices counted from T0 - LENGTH."""
    n = int(length * RATE)
    end = round((t_end - T0 + LENGTH) * RATE)
    samples = audio if audio is not None else (_SILENCE if n == len(_SILENCE) else np.zeros(n, dtype=np.float32))
    return Window(seq=seq, start=end - n, end=end, sample_rate=RATE, t_start=t_end - length, t_end=t_end,
                  audio=samples, dbfs=dbfs, speech_ratio=speech_ratio,
                  speech=speech if speech is not None else np.zeros(n // 480, dtype=bool),
                  utterances=tuple(utterances))


def answer(engine: RuleEngine, win: Window, values: dict[str, Any] | float | None = None,
           texts: dict[str, str] | None = None, error: str | None = None) -> Result:
    """The Result the model engine (through its worker, which copies the generation) would give for `engine.plan(win)`.

    `values`: per rule id a score, or (score, baseline); a bare one answers every question; None: all 0.
    `texts`: per text rule id the transcript returned for each of its planned utterances.
    """
    request = engine.plan(win)
    if error is not None:
        return Result(window=win, error=error, generation=request.generation)
    scores = {}
    for q in request.questions:
        v = (values or {}).get(q.key, 0.0) if isinstance(values, dict) or values is None else values
        score, baseline = v if isinstance(v, tuple) else (v, 0.0)
        scores[q.key] = Score(score=float(score), baseline=float(baseline))
    transcripts = [Transcript(t.key, (texts or {}).get(t.key, ""), t.start, t.end) for t in request.texts]
    return Result(window=win, scores=scores, texts=transcripts, generation=request.generation)


def drive(engine: RuleEngine, steps: Iterable[Any], hop: float = 2.0, start: float = T0,
          rule_id: str | None = None) -> list[tuple[int, str]]:
    """Feed one window per step (a score, GATED or ERROR), `hop` seconds apart; -> [(step, kind)]."""
    out = []
    for i, step in enumerate(steps):
        t = start + i * hop
        if step == GATED:
            win = window(t, i, dbfs=-100.0)
            result = answer(engine, win)
        elif step == ERROR:
            win = window(t, i)
            result = answer(engine, win, error="CUDA out of memory")
        else:
            win = window(t, i)
            result = answer(engine, win, step if rule_id is None else {rule_id: step})
        out.extend((i, e.kind) for e in engine.update(win, result))
    return out


def engine_for(tmp_path: Path, yaml_text: str, tz: Any = timezone.utc) -> RuleEngine:
    return RuleEngine(ruleset_for(tmp_path, yaml_text), tz=tz)


def ruleset_for(tmp_path: Path, yaml_text: str, name: str = "rules.yaml") -> RuleSet:
    """Write `yaml_text` to a real file and load it the way the daemon does."""
    path = tmp_path / name
    path.write_text(yaml_text, encoding="utf-8")
    return load_rules(path)


def kinds(events: Iterable[Event]) -> list[tuple[str, str]]:
    return [(e.rule_id, e.kind) for e in events]
