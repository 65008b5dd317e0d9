"""The daemon as a product: a separate process from a microphone or a file to an MQTT subscriber."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import soundfile as sf

from tests.conftest import REPO, need, speech_wav
from tests.daemon_support import LOUD_RULES, TEXT_RULES, DaemonProcess, events_of, talk_file, write_config

RATE = 16000


def _state(topic_suffix: str, value: bytes):
    return lambda t, p, r: t == f"am/test_node/{topic_suffix}" and p == value


def test_microphone_to_subscriber(vmic, broker, subscriber_factory, tiny_model_dir, tmp_path):
    wav = speech_wav(tmp_path / "hello.wav", "Hello, is anybody home? I am in the kitchen.")
    config = write_config(tmp_path, tiny_model_dir, broker.port, extra={"audio.device": "pulse"})
    sub = subscriber_factory(broker, "am/#")
    daemon = DaemonProcess(config, env=vmic.env)
    try:
        daemon.wait_log("listening:", timeout=120)
        port = re.search(r"metrics on http://127.0.0.1:(\d+)/metrics", daemon.wait_log("metrics on")).group(1)
        sub.wait_for(_state("status", b"online"))
        sub.wait_for(_state("loud/state", b"OFF"))  # retained initial state
        processed = _processed(port)
        deadline = time.monotonic() + 10
        while _processed(port) < processed + 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _processed(port) >= processed + 3  # windows of silence were answered ...
        assert not events_of(sub.messages)  # ... gated: nothing fired
        played = time.monotonic()
        player = vmic.play(wav, wait=False)
        sub.wait_for(lambda t, p, r: t == "am/test_node/loud/event" and json.loads(p)["kind"] == "on", timeout=15)
        latency = time.monotonic() - played
        assert player.wait(60) == 0
        sub.wait_for(_state("loud/state", b"ON"))
        # a window of 2 s every 1 s: the first one that hears the speech ends within about a hop of
        # its start, and the tiny model answers in milliseconds
        assert latency < 4, latency
        (on,) = [e for e in events_of(sub.messages) if e["kind"] == "on"]
        assert on["rule"] == "loud" and on["node"] == "test_node" and 0.0 <= on["score"] <= 1.0
        assert on["window_start"] < on["window_end"] and re.match(r"\d{4}-\d\d-\d\dT.*[+-]\d\d:\d\d$", on["time"])
        assert Path(on["clip"]).exists() and sf.info(on["clip"]).duration >= 2.0
        sub.wait_for(_state("loud/state", b"OFF"), timeout=20)  # speech over: OFF once hold expires
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        room = 'source="test_node"'
        for name in (f"audio_monitor_windows_processed_total{{{room}}}", "audio_monitor_engine_milliseconds_bucket",
                     f'audio_monitor_rule_score{{rule="loud",{room}}}',
                     f'audio_monitor_events_total{{kind="on",rule="loud",{room}}}',
                     "audio_monitor_capture_overflows", "audio_monitor_outbox_depth", "audio_monitor_mqtt_connected 1.0",
                     "audio_monitor_real_time_factor", "audio_monitor_windows_skipped", f"audio_monitor_capture_ok{{{room}}} 1.0"):
            assert name in text, name
        values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
        windows = float(values[f"audio_monitor_windows_total{{{room}}}"])
        assert windows >= float(values[f"audio_monitor_windows_processed_total{{{room}}}"]) > 3
        assert float(values[f"audio_monitor_capture_overflows_total{{{room}}}"]) == 0
    finally:
        code = daemon.stop()
    assert code == 0, daemon.output
    sub.wait_for(lambda t, p, r: t == "am/test_node/status" and p == b"offline")
    assert "Traceback" not in daemon.output


def _processed(port: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return float(re.search(r'^audio_monitor_windows_processed_total\{source="test_node"\} (\S+)$', text, re.M).group(1))


def test_file_source_to_subscriber(broker, subscriber_factory, tiny_model_dir, tmp_path):
    path = talk_file(tmp_path, [("silence", 3), ("noise", 3), ("silence", 5)])
    config = write_config(tmp_path, tiny_model_dir, broker.port, source=f"file:{path}",
                          extra={"mqtt.scores": {"enabled": True, "interval": 0}})
    sub = subscriber_factory(broker, "am/#")
    daemon = DaemonProcess(config)
    code = daemon.wait(120)
    assert code == 0, daemon.output
    assert "end of file:" in daemon.output
    sub.wait_for(_state("loud/state", b"OFF"))
    events = events_of(sub.messages)
    assert [e["kind"] for e in events] == ["on", "off"], events
    on, off = events
    # ON is decided by a window that hears the noise (3-6 s into the file), OFF by a later one
    assert off["ts"] > on["ts"] and on["rule"] == off["rule"] == "loud"
    scores = [json.loads(p) for t, p, _ in sub.messages if t == "am/test_node/scores"]
    assert scores and all(0.0 <= v["score"] <= 1.0 for s in scores for v in s.values())
    sub.wait_for(lambda t, p, r: t == "am/test_node/status" and p == b"offline")


TALK_RULES = LOUD_RULES + TEXT_RULES


def test_fast_file_replay_is_deterministic(broker, subscriber_factory, tiny_model_dir, tmp_path):
    """The same 10-minute recording, read as fast as possible twice, gives the same events."""
    pattern: list[tuple[str, float]] = []
    sentences = ["Good morning.", "Where are my keys?", "Dinner is ready.", "Help me please."]
    for i in range(30):  # 30 x 20 s = 10 minutes
        pattern += [("silence", 8), ("noise", 2 + i % 3), ("silence", 4)]
        if i % 5 == 0:
            pattern += [(f"speech:{sentences[(i // 5) % 4]}", 0)]
        pattern += [("silence", 20 - 14 - i % 3 - (2 if i % 5 == 0 else 0))]
    path = talk_file(tmp_path, pattern)
    assert sf.info(path).duration == pytest.approx(600, abs=15)
    runs = []
    for run in range(2):
        out = tmp_path / f"run{run}"
        out.mkdir()
        config = write_config(out, tiny_model_dir, broker.port, source=f"file:{path}", rules=TALK_RULES,
                              extra={"audio.realtime": False, "windows.length": "4s", "windows.hop": "2s",
                                     "scores_log": str(out / "scores.jsonl"), "log.level": "info"})
        sub = subscriber_factory(broker, "am/test_node/+/event")
        daemon = DaemonProcess(config)
        assert daemon.wait(300) == 0, daemon.output
        time.sleep(0.5)
        events = events_of(sub.messages)
        first = events[0]["ts"]
        runs.append([(e["rule"], e["kind"], round(e["ts"] - first, 3), e["score"], e.get("text")) for e in events])
        sub.close()
    assert runs[0] == runs[1]
    kinds = {k for _, k, *_ in runs[0]}
    assert {"on", "off", "text", "match"} <= kinds, kinds
    assert sum(1 for _, k, *_ in runs[0] if k == "on") >= 25
    lines0 = (tmp_path / "run0" / "scores.jsonl").read_text().splitlines()
    lines1 = (tmp_path / "run1" / "scores.jsonl").read_text().splitlines()
    assert len(lines0) >= 290
    strip = lambda line: {k: v for k, v in json.loads(line).items() if k not in ("t_start", "t_end")}  # noqa: E731
    assert [strip(x) for x in lines0] == [strip(x) for x in lines1]


def test_sigterm_drains_sighup_reloads(vmic, broker, subscriber_factory, tiny_model_dir, tmp_path):
    config = write_config(tmp_path, tiny_model_dir, broker.port, extra={"audio.device": "pulse"})
    rules_file = tmp_path / "rules" / "rules.yaml"
    sub = subscriber_factory(broker, ["am/#", "homeassistant/#"])
    daemon = DaemonProcess(config, env=vmic.env)
    try:
        daemon.wait_log("listening:", timeout=120)
        # a valid edit: a second rule appears in discovery and the status reports the reload
        rules_file.write_text(LOUD_RULES + LOUD_RULES.split("rules:\n", 1)[1].replace("id: loud", "id: loud_too"))
        daemon.signal(signal.SIGHUP)
        daemon.wait_log("reloaded 2 rule(s)", timeout=20)
        sub.wait_for(lambda t, p, r: t == "homeassistant/device/test_node/config" and b"loud_too" in p, timeout=10)
        # an invalid edit: every problem logged with its line, the running rules stay in force
        rules_file.write_text(LOUD_RULES.replace("threshold: 0.0", "threshold: 1.5"))
        daemon.signal(signal.SIGHUP)
        line = daemon.wait_log("rule reload failed", timeout=20)
        assert "keeping the running rules" in line
        assert f"{rules_file}:5: rules[0].threshold" in daemon.output
        sub.wait_for(lambda t, p, r: t == "am/test_node/info" and b'"ok": false' in p, timeout=15)
        wav = speech_wav(tmp_path / "hi.wav", "Still listening to the old rules.")
        vmic.play(wav)
        sub.wait_for(_state("loud_too/state", b"ON"), timeout=15)
        # saving a fixed file is enough: the daemon notices the change without a signal
        rules_file.write_text(LOUD_RULES)
        daemon.wait_log("rule files changed", timeout=20)
        daemon.wait_log("reloaded 1 rule(s)", timeout=20)
        # and the MQTT command reloads too
        import paho.mqtt.publish as mqtt_publish

        mqtt_publish.single("am/test_node/set/reload", "", hostname="127.0.0.1", port=broker.port)
        daemon.wait_log("reload requested", timeout=20)
    finally:
        daemon.signal(signal.SIGTERM)
        code = daemon.wait(30)
    assert code == 0, daemon.output
    assert "stopped" in daemon.output
    sub.wait_for(lambda t, p, r: t == "am/test_node/status" and p == b"offline")


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"model.path": "/nonexistent/model"}, "model.path"),
        ({"audio.device": "no such microphone"}, "audio.device: no input device matches 'no such microphone'"),
        ({"audio.source": "file:/nonexistent.wav"}, "audio.source: file not found: /nonexistent.wav"),
    ],
)
def test_startup_failures_are_one_line(vmic, broker, tiny_model_dir, tmp_path, change, expected):
    config = write_config(tmp_path, tiny_model_dir, broker.port, extra={"audio.device": "pulse", **change})
    daemon = DaemonProcess(config, env=vmic.env)
    assert daemon.wait(120) == 1
    errors = [line for line in daemon.lines if " ERROR " in line]
    assert len(errors) == 1 and expected in errors[0], daemon.output
    assert "Traceback" not in daemon.output


def test_broken_rules_at_startup(broker, tiny_model_dir, tmp_path):
    config = write_config(tmp_path, tiny_model_dir, broker.port, rules="rules:\n  - id: Bad Id\n    ask: x\n")
    daemon = DaemonProcess(config)
    assert daemon.wait(60) == 1
    assert re.search(r"rules\.yaml:2: rules\[0\]\.id", daemon.output), daemon.output
    assert "Traceback" not in daemon.output


def test_make_run_stops_with_one_line_when_the_model_cannot_be_fetched(tmp_path):
    """`make run` on the default config, with no way to reach the model hub."""
    need(shutil.which("make") is not None, "make")
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "STATE_DIRECTORY": str(tmp_path / "state"),
           "PATH": f"{REPO / '.venv' / 'bin'}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}
    import os

    proc = subprocess.run(["make", "--no-print-directory", "run"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, proc.stderr
    assert "Qwen/Qwen2-Audio-7B-Instruct" in errors[0] and "model.path" in errors[0]
    assert "Traceback" not in proc.stderr


def test_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    need(analyze is not None, "systemd-analyze (package systemd)")
    unit = (REPO / "systemd" / "audio-monitor.service").read_text()
    for key in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict",
                "StateDirectory=audio-monitor", "ConfigurationDirectory=audio-monitor", "ProtectHome=yes",
                "PrivateTmp=yes", "SupplementaryGroups=audio", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert key in unit, key
    assert "\nEnvironment=MALLOC_ARENA_MAX=2\n" in unit  # measured by bench/soak.py (bench/README.md)
    # verify the unit as installed: ExecStart pointing at the installed program
    program = REPO / ".venv" / "bin" / "audio-monitor"
    installed = tmp_path / "audio-monitor.service"
    installed.write_text(unit.replace("/opt/audio-monitor/.venv/bin/audio-monitor", str(program)))
    proc = subprocess.run([analyze, "verify", str(installed)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_last_will_when_the_daemon_is_killed(broker, subscriber_factory, tiny_model_dir, tmp_path):
    path = talk_file(tmp_path, [("silence", 60)])
    config = write_config(tmp_path, tiny_model_dir, broker.port, source=f"file:{path}")
    sub = subscriber_factory(broker, "am/test_node/status")
    daemon = DaemonProcess(config)
    try:
        daemon.wait_log("listening:", timeout=120)
        sub.wait_for(lambda t, p, r: p == b"online")
        daemon.proc.kill()
        sub.wait_for(lambda t, p, r: p == b"offline", timeout=60)  # the broker notices the dead TCP link
    finally:
        daemon.kill()


def test_events_survive_a_kill_while_the_broker_is_down(broker, subscriber_factory, tiny_model_dir, tmp_path):
    """Events accepted while the broker is away are in the outbox; a SIGKILL does not lose them."""
    path = talk_file(tmp_path, [("silence", 4), ("noise", 2), ("silence", 4), ("noise", 2), ("silence", 60)])
    config = write_config(tmp_path, tiny_model_dir, broker.port, source=f"file:{path}",
                          extra={"mqtt.reconnect_max": "1s"})
    daemon = DaemonProcess(config)
    try:
        daemon.wait_log("listening:", timeout=120)
        broker.stop()
        # both noise bursts: on, off, on, off — decided and written to the outbox, not delivered
        deadline = time.monotonic() + 60
        while len(re.findall(r"event loud (?:on|off) id=", daemon.output)) < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        accepted = re.findall(r"event loud (on|off) id=([0-9a-f]+)", daemon.output)
        assert [k for k, _ in accepted] == ["on", "off", "on", "off"], daemon.output
        daemon.proc.kill()
        daemon.wait(10)
    finally:
        daemon.kill()
    broker.start()
    sub = subscriber_factory(broker, "am/test_node/+/event")
    # the same state_dir, with nothing new to say: only the outbox speaks
    (tmp_path / "quiet").mkdir()
    quiet = talk_file(tmp_path / "quiet", [("silence", 20)])
    config = write_config(tmp_path, tiny_model_dir, broker.port, source=f"file:{quiet}")
    again = DaemonProcess(config)
    try:
        sub.wait_for(lambda t, p, r: json.loads(p)["id"] == accepted[-1][1], timeout=60)
        delivered = [(e["kind"], e["id"]) for e in events_of(sub.messages)]
        assert delivered == accepted  # every event, in order
    finally:
        again.stop()
