"""`audio-monitor eval`: the counting rules by hand-computed tables, then whole runs on generated recordings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.config import load_config
from monitor.rules import parse_rules
from monitor.tuning.eval import THRESHOLDS, at_threshold, evaluate, format_table
from monitor.tuning.labels import load_dataset
from monitor.tuning.metrics import Tally, best_threshold, spans_of
from monitor.tuning.replay import SharedEngine, replay_file
from monitor.yamlsource import ValidationFailed
from tests.conftest import REPO
from tests.daemon_support import write_config
from tests.tuning_support import GATED_RULES, bursts_wav

# ---------------------------------------------------------------------------- counting, by hand

TOL = 2.0
COUNTS = [
    # (what, spans, intervals, duration, expected: intervals, detected, on, true, false, negative_s, latencies)
    ("an ON inside the interval", [(6.0, 10.0)], [(5.0, 8.0)], 30.0, (1, 1, 1, 1, 0, 25.0, [1.0])),
    ("an ON up to one window after the end is still true", [(10.0, 12.0)], [(5.0, 8.0)], 30.0, (1, 1, 1, 1, 0, 25.0, [5.0])),
    ("an ON just past the tolerance is a false alarm and a miss", [(10.5, 12.0)], [(5.0, 8.0)], 30.0,
     (1, 0, 1, 0, 1, 25.0, [])),
    ("an ON before the interval is false, but its span still detects it (latency 0)", [(3.0, 7.0)], [(5.0, 8.0)], 30.0,
     (1, 1, 1, 0, 1, 25.0, [0.0])),
    ("a span that ended before the interval detects nothing", [(2.0, 5.0)], [(5.0, 8.0)], 30.0, (1, 0, 1, 0, 1, 25.0, [])),
    ("still ON at the end of the file", [(6.0, None)], [(5.0, 8.0)], 30.0, (1, 1, 1, 1, 0, 25.0, [1.0])),
    ("two ONs in one interval: both true, detected once", [(6.0, 7.0), (9.0, 11.0)], [(5.0, 8.0)], 30.0,
     (1, 1, 2, 2, 0, 25.0, [1.0])),
    ("overlapping tolerance ranges are counted once in the negative time", [], [(5.0, 8.0), (9.0, 12.0)], 30.0,
     (2, 0, 0, 0, 0, 21.0, [])),
    ("ranges past the end are cut at the end", [], [(27.0, 29.0)], 30.0, (1, 0, 0, 0, 0, 27.0, [])),
    ("a match instant counts only inside [a, b + tol]", [(4.0, 4.0), (9.0, 9.0)], [(5.0, 8.0)], 30.0,
     (1, 1, 2, 1, 1, 25.0, [4.0])),
    ("a negative recording: every ON is false", [(11.0, 13.0), (41.0, 44.0)], [], 60.0, (0, 0, 2, 0, 2, 60.0, [])),
]


@pytest.mark.parametrize("what, spans, intervals, duration, expected", COUNTS, ids=[c[0] for c in COUNTS])
def test_counting(what, spans, intervals, duration, expected):
    tally = Tally()
    tally.add_recording(spans, intervals, duration, TOL, "rec.wav")
    n_int, detected, on, true, false, negative, latencies = expected
    assert (tally.intervals, tally.detected, tally.on_events, tally.true_on, tally.false_alarms) == (n_int, detected, on, true, false)
    assert tally.negative_s == pytest.approx(negative)
    assert tally.latencies == pytest.approx(latencies)
    assert len(tally.misses) == n_int - detected and len(tally.false_at) == false


def test_summed_metrics_and_undefined_figures():
    tally = Tally()
    assert tally.metrics() == {"intervals": 0, "detected": 0, "recall": None, "on_events": 0, "true_on": 0,
                               "false_alarms": 0, "precision": None, "negative_hours": 0.0, "fa_per_hour": None,
                               "mean_latency_s": None}
    tally.add_recording([(6.0, 10.0), (25.0, 27.0)], [(5.0, 8.0), (20.0, 21.0)], 30.0, TOL, "a.wav")
    tally.add_recording([(11.0, 13.0)], [], 60.0, TOL, "n.wav")
    m = tally.metrics(details=True)
    assert (m["recall"], m["precision"], m["false_alarms"]) == (0.5, pytest.approx(1 / 3, abs=1e-6), 2)
    # negative time: 30 - (5 + 3) in a.wav, 60 in n.wav -> 82 s; 2 false alarms in 82 s
    assert m["fa_per_hour"] == pytest.approx(2 * 3600 / 82, abs=1e-5)
    assert m["mean_latency_s"] == 1.0
    assert m["misses"] == [{"file": "a.wav", "start": 20.0, "end": 21.0}]
    assert m["false_alarms_at"] == [{"file": "a.wav", "at": 25.0}, {"file": "n.wav", "at": 11.0}]


def test_spans_of_events():
    assert spans_of([("on", 3.0), ("off", 5.0), ("on", 8.0)]) == [(3.0, 5.0), (8.0, None)]
    assert spans_of([("match", 4.0), ("text", 4.0)]) == [(4.0, 4.0)]
    assert spans_of([("off", 1.0), ("on", 2.0), ("on", 3.0), ("off", 4.0)]) == [(2.0, 4.0)]


def test_best_threshold_picks_recall_then_fewer_alarms_then_caution():
    def point(t, recall, fa):
        return {"threshold": t, "recall": recall, "fa_per_hour": fa}

    sweep = [point(0.5, 0.9, 3.0), point(0.6, 0.8, 1.0), point(0.7, 0.8, 0.5), point(0.8, 0.8, 0.5), point(0.9, 0.1, 0.0)]
    assert best_threshold(sweep, 1.0)["threshold"] == 0.8
    assert best_threshold(sweep, 5.0)["threshold"] == 0.5
    assert best_threshold(sweep, 0.0)["threshold"] == 0.9
    assert best_threshold([point(0.5, None, 0.0), point(0.6, 0.5, None)], 1.0) is None


def test_sweep_copies_keep_the_hysteresis_gap():
    ruleset = parse_rules(GATED_RULES)
    moved = at_threshold(ruleset, 0.5)
    assert (moved["loud"].threshold, moved["loud"].release) == (0.5, 0.5)
    assert (moved["lifted"].threshold, moved["lifted"].release) == (0.5, 0.45)
    low = at_threshold(ruleset, 0.0)
    assert (low["lifted"].threshold, low["lifted"].release) == (0.0, 0.0)
    assert moved["lifted"].patience == 2 and moved["loud"].gate.min_dbfs == -40
    assert ruleset["lifted"].threshold == 0.1  # the original is untouched
    assert THRESHOLDS[0] == 0.0 and THRESHOLDS[-1] == 1.0 and len(THRESHOLDS) == 21


# ---------------------------------------------------------------------------- labels


def test_labels_problems_are_reported_with_their_lines(tmp_path):
    ruleset = parse_rules(GATED_RULES + """\
  - id: speech
    answer: text
    ask: What is being said?
""")
    bursts_wav(tmp_path / "a.wav", 10)
    (tmp_path / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    labels = tmp_path / "labels.yaml"
    labels.write_text("""\
recordings:
  - file: a.wav
    events:
      loud: [[5, 3]]
      dog: [[1, 2]]
      speech: [[1, 2]]
      lifted: [[12, 14]]
  - file: missing.wav
  - file: broken.wav
    ignore: [loud]
""")
    with pytest.raises(ValidationFailed) as info:
        load_dataset(tmp_path, ruleset)
    lines = [str(p) for p in info.value.problems]
    assert lines[0] == f"{labels}:4: recordings[0].events.loud[0]: the interval ends (3s) before it starts (5s)"
    assert lines[1] == f"{labels}:5: recordings[0].events.dog: no rule with id 'dog' (rules that can be scored: loud, lifted)"
    assert lines[2].startswith(f"{labels}:6: recordings[0].events.speech: 'speech' is a text rule")
    assert lines[3] == (f"{labels}:7: recordings[0].events.lifted[0]: the interval starts at 12s, after the end of "
                        f"the recording (10.0s)")
    assert lines[4] == f"{labels}:8: recordings[1].file: {tmp_path / 'missing.wav'}: recording not found"
    assert lines[5].startswith(f"{labels}:9: recordings[2].file: {tmp_path / 'broken.wav'}: cannot decode")
    assert len(lines) == 6


def test_labels_schema_errors_point_at_the_key(tmp_path):
    ruleset = parse_rules(GATED_RULES)
    labels = tmp_path / "labels.yaml"
    labels.write_text("recordings:\n  - file: a.wav\n    event: {loud: [[1, 2]]}\n  - file: b.wav\n    events: {loud: [[1, two]]}\n")
    with pytest.raises(ValidationFailed) as info:
        load_dataset(tmp_path, ruleset)
    lines = [str(p) for p in info.value.problems]
    assert lines[0].startswith(f"{labels}:3: recordings[0].event: unknown key")
    assert lines[1].startswith(f"{labels}:5: recordings[1].events.loud[0][1]: 'two' is not a duration")


def test_folder_layout_problems(tmp_path):
    ruleset = parse_rules(GATED_RULES)
    bursts_wav(tmp_path / "loud" / "a.wav", 5)
    bursts_wav(tmp_path / "barking" / "b.wav", 5)
    bursts_wav(tmp_path / "stray.wav", 5)
    (tmp_path / "negatives").mkdir()
    (tmp_path / "negatives" / "bad.wav").write_bytes(b"not audio at all")
    with pytest.raises(ValidationFailed) as info:
        load_dataset(tmp_path, ruleset)
    lines = [str(p) for p in info.value.problems]
    assert lines[0].startswith(f"{tmp_path / 'barking'}: no rule with id 'barking'") and "name folders after rule ids" in lines[0]
    assert lines[1].startswith(f"{tmp_path / 'negatives' / 'bad.wav'}: cannot decode")
    assert lines[2].startswith(f"{tmp_path / 'stray.wav'}: a recording outside a rule folder")
    assert len(lines) == 3
    with pytest.raises(ValidationFailed, match="not found"):
        load_dataset(tmp_path / "nowhere", ruleset)


# ---------------------------------------------------------------------------- whole runs


def _eval_config(tmp_path: Path, model_dir: Path) -> Path:
    # windows of 2 s every 1 s; MQTT is never contacted by eval
    return write_config(tmp_path, model_dir, 1883, rules=GATED_RULES, extra={"log.level": "warning"})


def test_labels_layout_hand_checked_through_the_command_line(tiny_model_dir, tmp_path):
    data = tmp_path / "data"
    # kitchen: labelled bursts [5,8] and [15,17], an unlabelled burst [24,25], a labelled but silent [20,21]
    bursts_wav(data / "kitchen.wav", 30, [(5, 8), (15, 17), (24, 25)], seed=1)
    bursts_wav(data / "night.wav", 60, [(10, 11), (40, 42)], seed=2)  # no labels: both bursts are false alarms
    bursts_wav(data / "ignored.wav", 10, [(3, 5)], seed=3)  # loud is not scored here
    (data / "labels.yaml").write_text("""\
recordings:
  - file: kitchen.wav
    events:
      loud: [[5, 8], [15, 17], [20, 21]]
  - file: night.wav
  - file: ignored.wav
    ignore: [loud]
""")
    config = _eval_config(tmp_path, tiny_model_dir)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "monitor", "eval", str(data), "-c", str(config), "--out", str(out),
                           "--max-fa-per-hour", "200"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    report = json.loads((out / "report.json").read_text())
    loud = report["rules"]["loud"]
    # ONs at 6, 16, 25 (kitchen) and 11, 41 (night). Positive ranges with the 2 s tolerance in kitchen:
    # [5,10] [15,19] [20,23] = 12 s, so negative time = 18 s + 60 s = 78 s.
    c = loud["current"]
    assert (c["intervals"], c["detected"], c["on_events"], c["true_on"], c["false_alarms"]) == (3, 2, 5, 2, 3)
    assert c["recall"] == pytest.approx(2 / 3, abs=1e-6)
    assert c["precision"] == pytest.approx(2 / 5, abs=1e-6)
    assert c["fa_per_hour"] == pytest.approx(3 * 3600 / 78, abs=1e-4)
    assert c["negative_hours"] == pytest.approx(78 / 3600, abs=1e-6)
    assert c["mean_latency_s"] == pytest.approx(1.0)
    assert c["misses"] == [{"file": str(data / "kitchen.wav"), "start": 20.0, "end": 21.0}]
    assert c["false_alarms_at"] == [{"file": str(data / "kitchen.wav"), "at": 25.0},
                                    {"file": str(data / "night.wav"), "at": 11.0},
                                    {"file": str(data / "night.wav"), "at": 41.0}]
    # the sweep: 21 steps; threshold 0 is the configured rule; nothing reaches a score of 1.0
    assert [p["threshold"] for p in loud["sweep"]] == report["thresholds"] == list(THRESHOLDS)
    assert {k: loud["sweep"][0][k] for k in ("recall", "precision", "fa_per_hour", "on_events")} == \
        {k: c[k] for k in ("recall", "precision", "fa_per_hour", "on_events")}
    top = loud["sweep"][-1]
    assert (top["on_events"], top["recall"], top["precision"], top["fa_per_hour"]) == (0, 0.0, None, 0.0)
    assert loud["best"] == best_threshold(loud["sweep"], 200.0)
    assert loud["best"]["recall"] == pytest.approx(2 / 3, abs=1e-6)  # the silent interval can never be found
    lifted = report["rules"]["lifted"]
    assert lifted["use"] == "lift" and lifted["current"]["intervals"] == 0 and lifted["best"] is None
    assert [r["role"] for r in report["recordings"]] == ["labelled"] * 3
    assert [r["windows"] for r in report["recordings"]] == [29, 59, 9]
    # the table a person reads
    row = next(line for line in proc.stdout.splitlines() if line.startswith("loud "))
    for cell in ("yes_no", "0.00", "2/3 0.67", "2/5 0.40", "138.5", "1.0s"):
        assert cell in row, (cell, row)
    assert "lifted: no labelled intervals" in proc.stdout
    import matplotlib.image

    image = matplotlib.image.imread(out / "eval.png")
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 600


def test_folder_layout_in_process(tiny_model_dir, tmp_path):
    data = tmp_path / "data"
    bursts_wav(data / "loud" / "door.wav", 10, [(3, 6)], seed=4)  # ON at 4: detected, latency 4 from the file start
    bursts_wav(data / "loud" / "quiet.wav", 10, seed=5)  # never loud: a miss
    bursts_wav(data / "negatives" / "evening.wav", 40, [(10, 12)], seed=6)  # one false alarm at 11
    config = load_config(_eval_config(tmp_path, tiny_model_dir))
    ruleset = parse_rules(GATED_RULES)
    dataset = load_dataset(data, ruleset)
    assert dataset.layout == "folders" and [r.role for r in dataset.recordings] == ["positive", "positive", "negative"]
    shared = SharedEngine()  # the model loaded once, for the evaluation and the replays below
    report = evaluate(config, ruleset, dataset, max_fa_per_hour=100.0, engine_factory=shared)
    c = report["rules"]["loud"]["current"]
    assert (c["intervals"], c["detected"], c["on_events"], c["true_on"], c["false_alarms"]) == (2, 1, 2, 1, 1)
    assert (c["recall"], c["precision"], c["mean_latency_s"]) == (0.5, 0.5, 4.0)
    assert c["fa_per_hour"] == pytest.approx(90.0)  # 1 in 40 s of negatives; positive files add no negative time
    # the best threshold, from what the model said about each window: at a step t the gated rule is
    # ON over every run of asked windows scoring >= t (release moves with it, hold is 0), so a
    # recording gives as many ONs as it has such runs. door.wav is found while one of its windows
    # reaches t; each run in the negatives is a false alarm (90 per hour each, in 40 s).
    scores = {rec.path.name: _loud_scores(config, rec.path, shared) for rec in dataset.recordings}
    assert [s for s in scores["quiet.wav"] if s is not None] == []  # never asked: never found
    fits = []
    for t in THRESHOLDS:
        recall = 0.5 if _runs(scores["door.wav"], t) else 0.0
        false_alarms = _runs(scores["evening.wav"], t)
        if false_alarms * 90.0 <= 100.0:
            fits.append((recall, -false_alarms, t))
    expected = max(fits)
    best = report["rules"]["loud"]["best"]
    assert (best["recall"], -best["false_alarms"], best["threshold"]) == expected
    # `lifted` has no positives here: it is scored on the negatives only
    lifted = report["rules"]["lifted"]["current"]
    assert lifted["intervals"] == 0 and lifted["negative_hours"] == pytest.approx(40 / 3600, abs=1e-6)
    table = format_table(report)
    assert table.splitlines()[0].split()[:3] == ["rule", "kind", "thr"]
    assert "3 recording(s)" in table


def _loud_scores(config, recording: Path, engine: SharedEngine) -> list[float | None]:
    """The `loud` score of each window of a recording replayed alone (None: the gate did not ask)."""
    cfg = config.model_copy(update={"audio": config.audio.model_copy(update={"source": f"file:{recording}",
                                                                            "realtime": False})})
    run = replay_file(cfg, parse_rules(GATED_RULES), engine_factory=engine)
    return [r.scores["loud"].score if "loud" in r.scores else None for r in run.results]


def _runs(scores: list[float | None], threshold: float) -> int:
    """Maximal runs of windows asked and scoring at least `threshold`."""
    hits = [s is not None and s >= threshold for s in scores]
    return sum(1 for i, hit in enumerate(hits) if hit and (i == 0 or not hits[i - 1]))
