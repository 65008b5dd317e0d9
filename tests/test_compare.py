"""`audio-monitor compare`: phrasings of one question on a labelled set built here (espeak-ng speech, sox noises),
saved through the label writer, scored by the tiny Qwen2-Audio in one packed forward per clip; `--apply` edits the
rule file in place and a running daemon asks the new question."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from monitor.engine.api import Question, Request
from monitor.labels.store import Label, LabelStore, read_labels
from monitor.rules import load_rules
from monitor.tuning.compare import build_report, clip_window, format_table, phrasings_of, score_clips
from tests.conftest import REPO, sox_wav, speech_wav
from tests.daemon_support import DaemonProcess, write_config

T0 = 1_796_000_000.0
RATE = 16_000
CURRENT = "Does this recording contain someone speaking? Answer yes or no."
ASKS = ["Is a person talking in this recording? Answer yes or no.",
        "Can you hear human speech or words? Answer yes or no."]
RULES = f"""\
# Rules for the compare test: these comments must survive --apply.
rules:
  # someone talking
  - id: talk
    name: Someone talking
    ask: {CURRENT}
    threshold: 0.5          # tuned by hand, once
    patience: 1
    gate: {{min_dbfs: -60}}   # skip silence
    device_class: sound
  - id: words
    answer: text
    ask: What is being said?
"""
SPEECH = ["Help me, I have fallen down.", "Dinner is ready, come to the kitchen.", "Where did I put my keys?"]
NOISES = [("synth", "4", "whitenoise", "vol", "0.3"), ("synth", "4", "pinknoise", "vol", "0.4"),
          ("synth", "4", "brownnoise", "vol", "0.5")]


def clip_around(core: np.ndarray, seed: int) -> np.ndarray:
    """1 s before, the 2 s window, 1 s after: what the page hands the label writer (quiet hiss around the sound)."""
    rng = np.random.default_rng(seed)
    audio = (rng.standard_normal(4 * RATE) * 1e-3).astype(np.float32)
    core = core[: 2 * RATE]
    audio[RATE:RATE + len(core)] += core
    return audio


def build_set(tmp_path: Path, labels: Path, room: str) -> list[Path]:
    store = LabelStore(labels)
    saved = []
    sources = [("positive", speech_wav(tmp_path / f"speech{i}.wav", text)) for i, text in enumerate(SPEECH)]
    sources += [("negative", sox_wav(tmp_path / f"noise{i}.wav", *effects)) for i, effects in enumerate(NOISES)]
    for n, (verdict, wav) in enumerate(sources):
        core, rate = sf.read(wav, dtype="float32")
        assert rate == RATE
        result = store.save(Label(room, "talk", verdict, clip_around(core, n), T0 + n, event=f"event{n:04d}",
                                  question=CURRENT, model="tiny", score=0.5, window=(1.0, 3.0)))
        assert result.ok, result.reason
        saved.append(result.wav)
    return saved


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare-set")
    labels = tmp / "state" / "labels"
    build_set(tmp, labels, "test_node")
    return labels


def test_one_packed_forward_per_clip_equal_to_each_phrasing_alone(engine, labelled):
    clips = read_labels(labelled, room="test_node", rule="talk")
    assert [c.verdict for c in clips] == ["positive"] * 3 + ["negative"] * 3
    prompts = phrasings_of(load_rules_text().get("talk"), [*ASKS, ASKS[0]])  # a repeated phrasing is asked once
    assert prompts == [CURRENT, *ASKS]
    assert engine.scoring_path == "packed"
    engine.calibrate(prompts, 2.0)  # baselines first: what follows is the clips' own forwards
    forwards = []
    plain_forward = engine._forward

    def counting(**inputs):
        forwards.append(inputs["attention_mask"].shape[0])  # rows in this forward
        return plain_forward(**inputs)

    engine._forward = counting
    try:
        scored = score_clips(engine, clips, prompts, "score", 2.0, "test_node")
    finally:
        del engine._forward
    assert scored.requests == len(clips) == 6
    assert forwards == [1] * 6  # one forward of one packed row per clip, all three phrasings in it
    for clip, values in zip(scored.clips, scored.values):
        window = clip_window(clip)
        assert window.duration == 2.0
        for k, prompt in enumerate(prompts):
            alone = engine.answer([Request(window, (Question("alone", prompt),))])[0].scores["alone"].score
            assert values[k] == pytest.approx(alone, abs=1e-4)
            assert values[k] == pytest.approx(engine.score_plain(window.audio, [prompt])[prompt][0], abs=1e-4)
    report = build_report(load_rules_text().get("talk"), scored, prompts, 1.0)
    assert report["clips"] == {"positive": 3, "negative": 3, "negative_seconds": 12.0}
    assert [p["ask"] for p in report["phrasings"]] == prompts
    table = format_table(report)
    assert "few labels" in table and "6 request(s), one per clip" in table


def load_rules_text():
    from monitor.rules import parse_rules

    return parse_rules(RULES)


def run_compare(config: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "monitor", "compare", "talk", "-c", str(config), "-q", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=timeout)


def test_compare_command_report_apply_and_a_running_daemon(tiny_model_dir, tmp_path, broker):
    config = write_config(tmp_path, tiny_model_dir, broker.port, rules=RULES, source=f"file:{long_noise(tmp_path)}")
    build_set(tmp_path, tmp_path / "state" / "labels", "test_node")
    rule_file = tmp_path / "rules" / "rules.yaml"
    daemon = DaemonProcess(config)
    try:
        daemon.wait_log("baseline", timeout=120)  # asking its questions
        out = tmp_path / "cmp"
        proc = run_compare(config, "--ask", ASKS[0], "--ask", ASKS[1], "--out", str(out), "--apply", "2", "--force")
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        report = json.loads((out / "report.json").read_text())
        assert report["rule"] == "talk" and report["clips"]["positive"] == 3 and report["clips"]["negative"] == 3
        assert report["backend_requests"] == 6
        assert [p["ask"] for p in report["phrasings"]] == [CURRENT, *ASKS]
        for p in report["phrasings"]:
            assert {"ask", "auc", "recall_at_budget", "threshold", "wrong"} <= set(p)
            assert 0.0 <= p["auc"] <= 1.0 and 0.0 <= p["threshold"] <= 1.0
            assert len(p["recall_ci"]) == 2 and p["positives"] == 3 and p["negatives"] == 3
            wrong = {w["clip"] for w in p["wrong"]}
            assert len(wrong) == (3 - p["hits"]) + p["false_alarms"]
        lines = proc.stdout.splitlines()
        for n in ("1", "2", "3"):
            row = next(line for line in lines if line.startswith(f"{n}  "))
            p = report["phrasings"][int(n) - 1]
            assert f"{p['auc']:.2f}" in row and f"{p['hits']}/3" in row and f"{p['threshold']:g}" in row
        assert (out / "compare.png").stat().st_size > 10_000
        # --apply 2: only the ask and threshold lines changed, comments kept
        new = rule_file.read_text().splitlines()
        old = RULES.splitlines()
        changed = [i for i, (a, b) in enumerate(zip(old, new)) if a != b]
        assert len(new) == len(old) and [old[i].split(":")[0] for i in changed] == ["    ask", "    threshold"]
        assert new[changed[0]] == f"    ask: {ASKS[0]}"
        threshold = report["phrasings"][1]["threshold"]
        assert new[changed[1]].startswith(f"    threshold: {threshold:g} ")
        assert new[changed[1]].index("# tuned by hand, once") == old[changed[1]].index("#")  # the comment, where it was
        assert load_rules(rule_file).get("talk").ask == ASKS[0]
        # the running daemon reloads the file and asks the new question
        daemon.wait_log("reloaded 2 rule(s)", timeout=60)
        daemon.wait_log(f"silence: {ASKS[0]}", timeout=60)
    finally:
        daemon.stop()


def long_noise(tmp_path: Path) -> Path:
    """Two minutes of quiet noise, played in real time: a daemon that keeps listening through the test."""
    rng = np.random.default_rng(3)
    path = tmp_path / "room.wav"
    sf.write(path, (rng.standard_normal(120 * RATE) * 0.01).astype(np.float32), RATE)
    return path


def test_an_advantage_within_the_noise_is_refused_without_force(tiny_model_dir, tmp_path, capsys):
    """Every clip the same sound: no phrasing can separate better than another, so --apply 2 is refused.

    In this process (`monitor.cli.main`): torch is imported once for the whole file."""
    from monitor.cli import main

    config = write_config(tmp_path, tiny_model_dir, 1883, rules=RULES, extra={"log.level": "warning"})
    store = LabelStore(tmp_path / "state" / "labels")
    same = clip_around(np.zeros(2 * RATE, dtype=np.float32), 0)
    for n in range(4):
        assert store.save(Label("test_node", "talk", ("positive", "negative")[n % 2], same, T0 + n,
                                event=f"e{n}", window=(1.0, 3.0))).ok
    rule_file = tmp_path / "rules" / "rules.yaml"
    args = ["compare", "talk", "-c", str(config), "-q", "--ask", ASKS[0], "--out", str(tmp_path / "out"), "--apply", "2"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "within the noise" in err and "Traceback" not in err
    assert rule_file.read_text() == RULES  # untouched
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["phrasings"][1]["vs_current"] == {"auc_diff": 0.0, "low": 0.0, "high": 0.0, "clear": False}
    # with --force it is written; a text rule or an unknown one is one line
    assert main([*args, "--force"]) == 0
    assert load_rules(rule_file).get("talk").ask == ASKS[0] and "# tuned by hand, once" in rule_file.read_text()
    capsys.readouterr()
    for rule, says in (("words", "a text rule"), ("nope", "no rule")):
        assert main(["compare", rule, "-c", str(config)]) == 1
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err
