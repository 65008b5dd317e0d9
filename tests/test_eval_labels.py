"""`audio-monitor eval --labels`: the rules scored on the labelled set the daemon keeps, hand-counted.

The rule `loud` (threshold 0, a level gate) is ON exactly while a window hears a burst
(tests/tuning_support.py): with windows of 2 s every 1 s, a burst [a, b] turns it ON at a + 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import yaml

from monitor.config import load_config
from monitor.labels.store import Label, LabelStore
from monitor.rules import parse_rules
from monitor.tuning.eval import evaluate
from monitor.tuning.labels import load_label_set
from monitor.yamlsource import ValidationFailed
from tests.conftest import REPO
from tests.daemon_support import write_config
from tests.tuning_support import GATED_RULES, bursts_wav

T0 = 1_796_000_000.0


def label_from(store: LabelStore, room: str, wav: Path, verdict: str, n: int, window=(2.0, 4.0), rule="loud"):
    audio, _ = sf.read(wav, dtype="float32")
    saved = store.save(Label(room, rule, verdict, audio, T0 + n, event=f"ev{n:06d}", question="q", model="tiny",
                             score=0.5, window=window))
    assert saved.ok, saved.reason
    return saved


def kitchen_set(tmp: Path, store: LabelStore, room: str) -> None:
    """P1 heard (ON at 3 inside [2, 4 + 2]), P2 silent (a miss), N1 a burst at [5, 6] (a false alarm at 6), N2 quiet.

    Negative time: N1 10 s + N2 10 s + what the positives leave outside [2, 6]: 2 s each -> 24 s.
    """
    label_from(store, room, bursts_wav(tmp / "p1.wav", 6, [(2, 4)], seed=1), "positive", 1)
    label_from(store, room, bursts_wav(tmp / "p2.wav", 6, seed=2), "positive", 2)
    label_from(store, room, bursts_wav(tmp / "n1.wav", 10, [(5, 6)], seed=3), "negative", 3, window=None)
    label_from(store, room, bursts_wav(tmp / "n2.wav", 10, seed=4), "negative", 4, window=None)


def test_eval_labels_in_process_counts_by_hand(tiny_model_dir, tmp_path):
    config = load_config(write_config(tmp_path, tiny_model_dir, 1883, rules=GATED_RULES,
                                      extra={"log.level": "warning"}))
    store = LabelStore(config.state_dir / "labels")
    kitchen_set(tmp_path, store, config.rooms[0].id)
    # a label of a rule these rules no longer have is left out, not an error
    label_from(store, config.rooms[0].id, tmp_path / "p1.wav", "positive", 5, rule="gone")
    ruleset = parse_rules(GATED_RULES)
    dataset = load_label_set(store.folder, config.rooms[0].id, ruleset)
    assert dataset.layout == "labelset" and [r.role for r in dataset.recordings] == \
        ["positive", "positive", "negative", "negative"]
    assert dataset.recordings[0].intervals == {"loud": ((2.0, 4.0),)} and dataset.recordings[2].scope == {"loud"}
    report = evaluate(config, ruleset, dataset, max_fa_per_hour=200.0)
    c = report["rules"]["loud"]["current"]
    assert (c["intervals"], c["detected"], c["on_events"], c["true_on"], c["false_alarms"]) == (2, 1, 2, 1, 1)
    assert (c["recall"], c["precision"]) == (0.5, 0.5)
    assert c["negative_hours"] == pytest.approx(24 / 3600, abs=1e-6)
    assert c["fa_per_hour"] == pytest.approx(150.0)
    assert [m["start"] for m in c["misses"]] == [2.0]
    assert report["rules"]["lifted"]["current"]["intervals"] == 0  # no labels of its own: nothing to count
    with pytest.raises(ValidationFailed, match="no labelled clips"):
        load_label_set(store.folder, "attic", ruleset)


def test_eval_labels_of_every_room_of_a_whole_home(tiny_model_dir, tmp_path):
    """Each room's labels with that room's own rules, a report each; the default folder is state_dir/labels."""
    path = write_config(tmp_path, tiny_model_dir, 1883, rules=GATED_RULES, extra={"log.level": "info"})
    raw = yaml.safe_load(path.read_text())
    porch_rules = tmp_path / "porch.yaml"
    porch_rules.write_text(GATED_RULES.replace("threshold: 0.0\n    release: 0.0", "threshold: 1.0\n    release: 1.0"))
    audio = raw.pop("audio")
    raw["sources"] = {room: {"audio": {**audio, "device": f"{room} mic"}} for room in ("kitchen", "porch", "attic")}
    raw["sources"]["porch"]["rules"] = str(porch_rules)
    path.write_text(yaml.safe_dump(raw))
    store = LabelStore(Path(raw["state_dir"]) / "labels")
    kitchen_set(tmp_path, store, "kitchen")
    kitchen_set(tmp_path, store, "porch")  # the same clips; at threshold 1 nothing ever fires
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "monitor", "eval", "--labels", "-c", str(path), "--out", str(out),
                           "--max-fa-per-hour", "200", "-q"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    kitchen = json.loads((out / "kitchen" / "report.json").read_text())["rules"]["loud"]["current"]
    porch = json.loads((out / "porch" / "report.json").read_text())["rules"]["loud"]["current"]
    assert (kitchen["detected"], kitchen["false_alarms"], kitchen["fa_per_hour"]) == (1, 1, pytest.approx(150.0))
    assert (porch["intervals"], porch["detected"], porch["on_events"]) == (2, 0, 0)
    assert not (out / "attic").exists() and "attic" in proc.stderr  # no labels there: said, not an error
    assert "room kitchen (Kitchen):" in proc.stdout and "room porch (Porch):" in proc.stdout
    assert "1/2 0.50" in next(line for line in proc.stdout.splitlines() if line.startswith("loud "))
    # one room by --room; a folder named on the command line; neither DIR nor --labels is one line
    proc = subprocess.run([sys.executable, "-m", "monitor", "eval", "--labels", str(store.folder), "-c", str(path),
                           "--room", "porch", "--out", str(tmp_path / "one"), "-q"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "one" / "report.json").read_text())["layout"] == "labelset"
    proc = subprocess.run([sys.executable, "-m", "monitor", "eval", "-c", str(path)], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert proc.returncode == 1 and "one of the two" in proc.stderr and "Traceback" not in proc.stderr
