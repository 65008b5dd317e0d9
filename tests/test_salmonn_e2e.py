"""`model.backend: salmonn` end to end: the daemon on a file, and `audio-monitor replay`, on the tiny SALMONN."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO, salmonn_model_section
from tests.daemon_support import DaemonProcess, events_of, talk_file, write_config
from tests.tuning_support import GATED_RULES, bursts_wav


def test_the_daemon_publishes_events_answered_by_salmonn(broker, subscriber_factory, tiny_salmonn_dir, tmp_path):
    path = talk_file(tmp_path, [("silence", 2), ("noise", 3), ("silence", 4)])
    config = write_config(tmp_path, tiny_salmonn_dir, broker.port, source=f"file:{path}",
                          extra={"model": salmonn_model_section(tiny_salmonn_dir), "audio.realtime": False,
                                 "mqtt.scores": {"enabled": True, "interval": 0}, "log.level": "info"})
    sub = subscriber_factory(broker, "am/#")
    daemon = DaemonProcess(config)
    assert daemon.wait(120) == 0, daemon.output
    assert "SALMONN" in daemon.output and "Traceback" not in daemon.output
    sub.wait_for(lambda t, p, r: t == "am/test_node/status" and p == b"offline")
    assert [e["kind"] for e in events_of(sub.messages)] == ["on", "off"]
    scores = [json.loads(p)["loud"] for t, p, _ in sub.messages if t == "am/test_node/scores"]
    assert scores and all(0.0 < s["score"] < 1.0 for s in scores)  # SALMONN's answers, not a stand-in
    assert len({round(s["score"], 6) for s in scores}) > 1


def test_replay_runs_salmonn_over_a_file(tiny_salmonn_dir, tmp_path):
    recording = bursts_wav(tmp_path / "burst.wav", 7, [(2, 4)])
    config = write_config(tmp_path, tiny_salmonn_dir, 1883, rules=GATED_RULES,
                          extra={"model": salmonn_model_section(tiny_salmonn_dir)})
    proc = subprocess.run([sys.executable, "-m", "monitor", "replay", str(recording), "-c", str(config)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "replay-burst"
    records = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert len(records) == 6
    lifted = [r["rules"]["lifted"] for r in records]
    assert all(0.0 < r["score"] < 1.0 and set(r) == {"score", "lift", "baseline"} for r in lifted)
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert [(e["rule"], e["kind"]) for e in events if e["rule"] == "loud"] == [("loud", "on"), ("loud", "off")]
    assert proc.stdout.strip().splitlines()[-1].startswith("burst.wav: 6 windows over 7.0s of audio")
