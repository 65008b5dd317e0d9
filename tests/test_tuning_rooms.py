"""Tuning with the config the daemon runs: replay and eval on a whole-home (`sources:`) config, `--room`,
and `check` on a room whose own rule file sits in the folder the other rooms read."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, free_port
from tests.tuning_support import GATED_RULES, bursts_wav

# the nursery's own rules: ON while a window hears a burst, whatever the random model says
CRY_RULES = """\
rules:
  - id: cry
    ask: Is a baby crying in this recording? Answer yes or no.
    threshold: 0.0
    release: 0.0
    gate: {min_dbfs: -40}
"""


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "-m", "monitor", *args], capture_output=True, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`audio-monitor {' '.join(args)}` still running after {timeout:g}s (a room's device opened "
                    f"instead of the recording?):\n{(exc.stderr or b'')[-3000:]!r}")


def _home(tmp_path: Path, model: Path) -> Path:
    """Two microphones that do not exist here and a camera nobody serves: a replay must open none of them."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "home.yaml").write_text(GATED_RULES)
    (tmp_path / "nursery.yaml").write_text(CRY_RULES)
    config = {
        "node_id": "home",
        "sources": {
            "kitchen": {"name": "Kitchen", "audio": {"source": "mic", "device": "no such kitchen mic"}},
            "nursery": {"name": "Nursery", "audio": {"source": "mic", "device": "no such nursery mic"},
                        "rules": "nursery.yaml"},
            "porch": {"audio": {"source": f"rtsp://127.0.0.1:{free_port()}/stream"}},
        },
        "windows": {"length": "2s", "hop": "1s"},
        "model": {"path": str(model), "device": "cpu"},
        "rules": "rules",
        "state_dir": str(tmp_path / "state"),
        "log": {"level": "info"},
    }
    path = tmp_path / "home.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _events(out: Path) -> list[tuple]:
    return [(e["node"], e["rule"], e["kind"], e["at"]) for e in map(json.loads, (out / "events.jsonl").read_text().splitlines())]


def _said(stderr: str, text: str) -> list[str]:
    return [line for line in stderr.splitlines() if text in line]


# ---------------------------------------------------------------------------- replay


def test_replay_hears_a_recording_as_one_room_of_a_whole_home_config(tiny_model_dir, tmp_path):
    """A burst over [3, 6) in 11 s: a gated rule is ON at 4 s and OFF at 8 s, as the chosen room's rule."""
    config = _home(tmp_path, tiny_model_dir)
    recording = bursts_wav(tmp_path / "burst.wav", 11, [(3, 6)])
    # no --room: the first room, kitchen, with the shared rules; said in one line
    proc = cli("replay", str(recording), "-c", str(config), "--out", str(tmp_path / "kitchen"), "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "cannot open" not in proc.stderr
    said = _said(proc.stderr, "replay as room")
    assert len(said) == 1 and said[0].endswith(
        f"replay as room kitchen (Kitchen), the first of kitchen, nursery, porch (--room ID picks another): "
        f"its rules ({tmp_path / 'rules'}) and audio settings apply"), proc.stderr
    kitchen = _events(tmp_path / "kitchen")
    assert [e for e in kitchen if e[1] == "loud"] == [("kitchen", "loud", "on", 4.0), ("kitchen", "loud", "off", 8.0)]
    assert {e[1] for e in kitchen} <= {"loud", "lifted"}
    # --room nursery: its own rules, and its id on the events (the node the daemon publishes them under)
    proc = cli("replay", str(recording), "-c", str(config), "--room", "nursery", "--out", str(tmp_path / "nursery"), "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _said(proc.stderr, "replay as room")[0].endswith(
        f"replay as room nursery (Nursery): its rules ({tmp_path / 'nursery.yaml'}) and audio settings apply")
    assert _events(tmp_path / "nursery") == [("nursery", "cry", "on", 4.0), ("nursery", "cry", "off", 8.0)]
    # --rules replaces the room's own rules too
    other = tmp_path / "try.yaml"
    other.write_text(CRY_RULES.replace("id: cry", "id: wail"))
    proc = cli("replay", str(recording), "-c", str(config), "--room", "nursery", "--rules", str(other),
               "--out", str(tmp_path / "tried"), "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _events(tmp_path / "tried") == [("nursery", "wail", "on", 4.0), ("nursery", "wail", "off", 8.0)]


# ---------------------------------------------------------------------------- eval


def test_eval_scores_the_recordings_as_one_room_of_a_whole_home_config(tiny_model_dir, tmp_path):
    config = _home(tmp_path, tiny_model_dir)
    kitchen, nursery = tmp_path / "kitchen-data", tmp_path / "nursery-data"
    bursts_wav(kitchen / "loud" / "door.wav", 10, [(3, 6)], seed=1)
    bursts_wav(kitchen / "negatives" / "evening.wav", 20, seed=2)
    bursts_wav(nursery / "cry" / "night.wav", 10, [(3, 6)], seed=3)
    bursts_wav(nursery / "negatives" / "nap.wav", 20, [(10, 12)], seed=4)
    # no --room: kitchen and the shared rules; its microphone is never opened
    proc = cli("eval", str(kitchen), "-c", str(config), "--out", str(tmp_path / "eval-kitchen"), "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "cannot open" not in proc.stderr
    assert len(_said(proc.stderr, "eval as room kitchen (Kitchen), the first of kitchen, nursery, porch")) == 1
    report = json.loads((tmp_path / "eval-kitchen" / "report.json").read_text())
    assert set(report["rules"]) == {"loud", "lifted"} and report["rules_path"] == str(tmp_path / "rules")
    loud = report["rules"]["loud"]["current"]
    assert (loud["intervals"], loud["detected"], loud["false_alarms"]) == (1, 1, 0)
    # --room nursery: the nursery's rules score the nursery's recordings
    proc = cli("eval", str(nursery), "-c", str(config), "--room", "nursery", "--out", str(tmp_path / "eval-nursery"),
               "--max-fa-per-hour", "500", "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "eval-nursery" / "report.json").read_text())
    assert set(report["rules"]) == {"cry"} and report["rules_path"] == str(tmp_path / "nursery.yaml")
    cry = report["rules"]["cry"]["current"]
    assert (cry["intervals"], cry["detected"], cry["on_events"], cry["false_alarms"]) == (1, 1, 2, 1)
    assert [r["windows"] for r in report["recordings"]] == [9, 19]
    # the kitchen's rules do not know the nursery's labels: one line before any model time is spent
    proc = cli("eval", str(nursery), "-c", str(config), "-q")
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"{nursery / 'cry'}: no rule with id 'cry'" in errors[0], proc.stderr


# ---------------------------------------------------------------------------- a --room there is not


@pytest.mark.parametrize("command", ["replay", "eval"])
def test_a_room_that_does_not_exist_is_one_line(command, tiny_model_dir, tmp_path):
    config = _home(tmp_path, tiny_model_dir)
    target = bursts_wav(tmp_path / "a.wav", 3) if command == "replay" else tmp_path
    proc = cli(command, str(target), "-c", str(config), "--room", "attic", "--out", str(tmp_path / "out"), "-q")
    assert proc.returncode == 1 and proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].endswith(
        f"ERROR   monitor.tuning.commands: --room attic: no such room in {config}; its rooms: kitchen, nursery, porch"), proc.stderr
    assert not (tmp_path / "out").exists()
    # a single-room config has one room, named by node_id
    single = tmp_path / "single.yaml"
    single.write_text(yaml.safe_dump({"node_id": "den", "rules": str(tmp_path / "rules"), "log": {"level": "info"},
                                      "model": {"path": str(tiny_model_dir), "device": "cpu"}}))
    proc = cli(command, str(target), "-c", str(single), "--room", "kitchen", "-q")
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith(f"--room kitchen: {single} has one room, den (its `audio:` section); "
                                        "--room names a room of a config with `sources:`"), proc.stderr


# ---------------------------------------------------------------------------- check


def test_check_refuses_a_rooms_rule_file_inside_the_folder_other_rooms_read(tmp_path, capsys):
    from monitor.cli import main

    shared = tmp_path / "rules"
    shared.mkdir()
    (shared / "home.yaml").write_text(GATED_RULES)
    (shared / "nursery.yaml").write_text(CRY_RULES)
    config = tmp_path / "home.yaml"
    text = ("node_id: home\n"
            "rules: rules\n"
            "sources:\n"
            "  kitchen:\n"
            "    audio: {source: mic, device: a}\n"
            "  nursery:\n"
            "    audio: {source: mic, device: b}\n"
            "    rules: rules/nursery.yaml\n"
            "  porch:\n"
            "    audio: {source: mic, device: c}\n")
    config.write_text(text)
    with pytest.raises(SystemExit) as exc:
        main(["check", "-c", str(config)])
    assert exc.value.code == 1
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [
        f"{config}:8: sources.nursery.rules: {shared / 'nursery.yaml'} is in the folder {shared} (the top-level "
        f"`rules:`) that kitchen and porch also read: they would load this room's rules too; move the file out "
        f"of that folder"]
    # out of the folder: each room loads what it names
    (shared / "nursery.yaml").rename(tmp_path / "nursery.yaml")
    config.write_text(text.replace("rules: rules/nursery.yaml", "rules: nursery.yaml"))
    assert main(["check", "-c", str(config)]) == 0
    assert "3 rooms: kitchen (2 rule(s)), nursery (1 rule(s)), porch (2 rule(s))" in capsys.readouterr().out


def test_the_home_example_keeps_a_rooms_own_rules_in_that_room(tmp_path, capsys):
    """configs/home.yaml with its commented `rules:` of the nursery taken in, and that file written."""
    from monitor.cli import main

    (tmp_path / "configs").mkdir()
    shutil.copytree(REPO / "rules", tmp_path / "rules")
    text = (REPO / "configs" / "home.yaml").read_text()
    found = re.search(r"^(    )# (rules: (\S+))", text, re.M)
    assert found, "configs/home.yaml no longer shows a room's own rules"
    config = tmp_path / "configs" / "home.yaml"
    config.write_text(text.replace(found.group(0), found.group(1) + found.group(2)))
    own = (config.parent / found.group(3)).resolve()
    own.parent.mkdir(parents=True, exist_ok=True)
    own.write_text(CRY_RULES)
    assert main(["check", "-c", str(config)]) == 0, capsys.readouterr().err
    shared = len(yaml.safe_load((REPO / "rules" / "home.yaml").read_text())["rules"])
    assert (f"3 rooms: kitchen ({shared} rule(s)), nursery (1 rule(s)), porch ({shared} rule(s))"
            in capsys.readouterr().out)
