"""`audio-monitor replay`: the daemon's path over a file, its three outputs, and its one-line errors."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from monitor.config import load_config
from monitor.rules import parse_rules
from monitor.scorelog import ScoreLog
from monitor.tuning.eval import decide
from monitor.tuning.replay import replay_file, summary_line, write_replay
from tests.conftest import REPO, speech_wav
from tests.daemon_support import TEXT_RULES, DaemonProcess, events_of, write_config
from tests.tuning_support import GATED_RULES, RATE, bursts_wav

TALK_RULES = GATED_RULES + TEXT_RULES


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "monitor", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=300)


def _strip(line: str) -> dict:
    """A scores.jsonl record without its wall-clock times (a replay and a run differ only there)."""
    return {k: v for k, v in json.loads(line).items() if k not in ("t_start", "t_end")}


def _talk_recording(path: Path) -> Path:
    speech = sf.read(speech_wav(path.with_name("words.wav"), "Dinner is ready, come to the kitchen."), dtype="float32")[0]
    rng = np.random.default_rng(11)
    quiet = lambda s: (rng.standard_normal(int(s * RATE)) * 1e-4).astype(np.float32)  # noqa: E731
    noise = (rng.standard_normal(3 * RATE) * 0.2).astype(np.float32)
    sf.write(path, np.concatenate([quiet(3), noise, quiet(3), speech, quiet(4)]), RATE)
    return path


def test_replay_scores_and_events_equal_the_daemons(broker, subscriber_factory, tiny_model_dir, tmp_path):
    recording = _talk_recording(tmp_path / "recording.wav")
    daemon_scores = tmp_path / "daemon-scores.jsonl"
    config = write_config(tmp_path, tiny_model_dir, broker.port, source=f"file:{recording}", rules=TALK_RULES,
                          extra={"audio.realtime": False, "scores_log": str(daemon_scores), "log.level": "info"})
    sub = subscriber_factory(broker, "am/test_node/+/event")
    daemon = DaemonProcess(config)
    assert daemon.wait(300) == 0, daemon.output  # a model load alone took 70 s on a loaded 2-core machine
    # the same config and file through `replay`, into the default folder replay-<stem> in the cwd
    proc = cli("replay", str(recording), "-c", str(config), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "%|" not in proc.stderr  # no progress bar: stderr is not a terminal
    out = tmp_path / "replay-recording"
    replayed = (out / "scores.jsonl").read_text().splitlines()
    logged = daemon_scores.read_text().splitlines()
    duration = sf.info(recording).duration
    assert len(replayed) == int(duration) - 1 + (duration % 1 > 0)  # 2 s windows every 1 s, plus the tail
    assert [_strip(x) for x in replayed] == [_strip(x) for x in logged]
    assert any("texts" in r["rules"].get("speech", {}) for r in map(json.loads, replayed))  # transcripts compared too
    # the events: what the daemon published equals what replay wrote, on the same file offsets
    sub.wait_for(lambda t, p, r: t.endswith("/loud/event") and json.loads(p)["kind"] == "off", timeout=10)
    time.sleep(0.3)
    published = events_of(sub.messages)
    written = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    key = lambda e, t0: (e["rule"], e["kind"], round(e["ts"] - t0, 3), e["score"], e.get("text"))  # noqa: E731
    assert [key(e, published[0]["ts"]) for e in published] == [key(e, written[0]["ts"]) for e in written]
    loud = [(e["kind"], e["at"], e["start"], e["end"]) for e in written if e["rule"] == "loud"]
    assert loud[:2] == [("on", 4.0, 2.0, 4.0), ("off", 8.0, 6.0, 8.0)]  # the noise burst over [3, 6)
    assert {"on", "off", "text", "match"} <= {e["kind"] for e in written}
    assert all(e["node"] == "test_node" and "id" in e for e in written)
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.match(rf"recording\.wav: {len(replayed)} windows over {duration:.1f}s of audio in [\d.]+s "
                    r"\([\d.]+x real time\); events: any_words \d+ match; (lifted [^;]+; )?loud 2 on 2 off; speech \d+ text "
                    r"-> .*replay-recording$", summary), summary


def test_replay_outputs_on_a_hand_computed_recording(tiny_model_dir, tmp_path):
    """A burst over [3, 6) in 11 s: the gated rule is ON at 4 s and OFF at 8 s, whatever the model says."""
    recording = bursts_wav(tmp_path / "burst.wav", 11, [(3, 6)])
    config = load_config(write_config(tmp_path, tiny_model_dir, 1883, rules=GATED_RULES),
                         [f"audio.source=file:{recording}", "audio.realtime=false"])
    ruleset = parse_rules(GATED_RULES)
    out = tmp_path / "out"
    scorelog = ScoreLog(out / "scores.jsonl", mode="w")
    run = replay_file(config, ruleset, scorelog=scorelog)
    scorelog.close()
    paths = write_replay(run, out, ruleset, "kitchen")
    assert run.windows == 10 and run.duration == 11.0 and run.failed == 0
    assert all(r.window.audio.size == 0 for r in run.results)  # kept without their audio
    records = [json.loads(line) for line in paths["scores"].read_text().splitlines()]
    assert [r["end"] for r in records] == [float(e) for e in range(2, 12)]
    assert [r["end"] for r in records if "loud" in r["rules"]] == [4.0, 5.0, 6.0, 7.0]  # the gate passed
    assert all(set(r["rules"]["lifted"]) == {"score", "lift", "baseline"} for r in records)
    events = [json.loads(line) for line in paths["events"].read_text().splitlines()]
    assert [(e["rule"], e["kind"], e["at"], e["start"], e["end"], e["node"]) for e in events if e["rule"] == "loud"] == \
        [("loud", "on", 4.0, 2.0, 4.0, "kitchen"), ("loud", "off", 8.0, 6.0, 8.0, "kitchen")]
    # re-deciding the recorded answers with a fresh rule engine gives the same events (what eval relies on)
    again = decide(run.results, ruleset)
    assert [(e.rule_id, e.kind, w.seq, e.score) for e, w in again] == [(e.rule_id, e.kind, w.seq, e.score) for e, w in run.events]
    import matplotlib.image

    image = matplotlib.image.imread(paths["timeline"])
    assert image.ndim == 3 and image.shape[1] >= 1000
    line = summary_line(run, out)
    assert line.startswith("burst.wav: 10 windows over 11.0s of audio") and "loud 1 on 1 off" in line


def test_progress_bar_only_on_a_terminal(tiny_model_dir, tmp_path):
    """A person running replay in a terminal sees a bar on stderr; -q takes it away."""
    recording = bursts_wav(tmp_path / "long.wav", 40, [(10, 12)])
    config = write_config(tmp_path, tiny_model_dir, 1883, rules=GATED_RULES, extra={"log.level": "warning"})
    seen = {}
    for flag in ("", "-q"):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        args = [sys.executable, "-m", "monitor", "replay", str(recording), "-c", str(config),
                "--out", str(tmp_path / f"out{flag}"), *([flag] if flag else [])]
        proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, cwd=REPO, close_fds=True)
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        os.close(master)
        assert proc.wait(120) == 0
        seen[flag] = b"".join(chunks).decode(errors="replace")
    assert re.search(r"long\.wav:\s+\d+%\|.*\| \d+/40s", seen[""]), seen[""][-2000:]
    assert "%|" not in seen["-q"] and "long.wav: 39 windows over 40.0s" in seen["-q"]


@pytest.mark.parametrize("case", ["missing file", "corrupt file", "bad rules", "no model"])
def test_replay_failures_are_one_line(case, tiny_model_dir, tmp_path):
    recording = bursts_wav(tmp_path / "ok.wav", 4)
    rules, model, expected = GATED_RULES, tiny_model_dir, None
    if case == "missing file":
        recording, expected = tmp_path / "nope.wav", f"audio.source: file not found: {tmp_path / 'nope.wav'}"
    elif case == "corrupt file":
        recording = tmp_path / "corrupt.wav"
        recording.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
        expected = f"audio.source: cannot decode {recording}"
    elif case == "bad rules":
        rules, expected = "rules:\n  - id: Bad Id\n    ask: x\n", "rules.yaml:2: rules[0].id"
    else:
        model, expected = tmp_path / "no-model", f"model.path {tmp_path / 'no-model'} does not exist"
    config = write_config(tmp_path, model, 1883, rules=rules, extra={"log.level": "info"})
    out = tmp_path / "out"
    proc = cli("replay", str(recording), "-c", str(config), "--out", str(out), "-q")
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and expected in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not out.exists()  # nothing half-written is left behind
