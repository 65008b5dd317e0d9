"""Fail-safe 3: a monitor that cannot hear says so, and no alarm stays ON behind it.

Muted, capture lost (the sound server gone), or digital silence (all-zero samples) for longer than
`audio.silence_timeout`: every ON rule turns OFF with `reason: muted` / `capture_lost`, the room's
Home Assistant "Microphone" problem sensor is ON, and the JSON status, the systemd STATUS= line and
the `audio_monitor_capture_ok{source}` metric show it — until it hears again.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.request
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml
from test_rules_support import T0, answer, engine_for, window

from tests.conftest import VirtualMic, need
from tests.daemon_support import DaemonProcess, NotifySocket, events_of, write_config

RATE = 16_000

HELD_RULES = """\
rules:
  - id: loud
    ask: Does this recording contain any sound at all? Answer yes or no.
    threshold: 0.0
    release: 0.0
    hold: 60s
    gate: {min_dbfs: -45}
    device_class: sound
"""


def test_deafen_turns_every_on_rule_off_with_the_reason(tmp_path: Path) -> None:
    rules = {"rules": [{"id": "a", "ask": "Is a dog barking?", "threshold": 0.5, "hold": "60s"},
                       {"id": "b", "ask": "Is a baby crying?", "threshold": 0.5, "patience": 3}]}
    engine = engine_for(tmp_path, yaml.safe_dump(rules))
    for i in range(2):  # a: ON; b: two hits towards its patience of 3
        win = window(T0 + 2 * i, i)
        engine.update(win, answer(engine, win, 0.9))
    assert engine.is_on("a") and not engine.is_on("b")
    events = engine.deafen("capture_lost", T0 + 10)
    assert [(e.rule_id, e.kind, e.reason, e.ts) for e in events] == [("a", "off", "capture_lost", T0 + 10)]
    assert events[0].payload("n", "v")["reason"] == "capture_lost"
    assert engine.deafen("muted", T0 + 11) == []  # nothing left ON
    win = window(T0 + 20, 3)  # hearing again: a fires afresh, b's patience starts over
    assert [(e.rule_id, e.kind) for e in engine.update(win, answer(engine, win, 0.9))] == [("a", "on")]
    assert engine.status("b").streak == 1


def _info(sub, predicate, after: int = 0, timeout: float = 20.0) -> dict:
    def match(t, p, r):
        return t == "am/test_node/info" and predicate(json.loads(p))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hits = [json.loads(p) for t, p, r in sub.messages[after:] if match(t, p, r)]
        if hits:
            return hits[-1]
        time.sleep(0.1)
    raise TimeoutError(f"no matching status; last: {[p[:300] for t, p, _ in sub.messages if t.endswith('/info')][-2:]}")


def _hearing(sub, problem: str, reason: str | None, after: int = 0, timeout: float = 20.0) -> int:
    """Index of the first retained hearing message with this problem state and reason after `after`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for i, (t, p, _) in enumerate(list(sub.messages)[after:], start=after):
            if t == "am/test_node/hearing":
                body = json.loads(p)
                if body["problem"] == problem and body["reason"] == reason:
                    return i
        time.sleep(0.05)
    seen = [p for t, p, _ in sub.messages if t == "am/test_node/hearing"]
    raise TimeoutError(f"no hearing message {problem}/{reason}; seen {seen}")


def _metric(port: str, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match, f"{name} not in metrics:\n{text}"
    return float(match.group(1))


def _noise(path: Path, seconds: float) -> Path:
    rng = np.random.default_rng(4)
    sf.write(path, (rng.standard_normal(int(seconds * RATE)) * 0.2).astype(np.float32), RATE)
    return path


def test_digital_silence_and_mute_make_the_room_deaf(vmic, broker, subscriber_factory, tiny_model_dir, tmp_path):
    config = write_config(tmp_path, tiny_model_dir, broker.port, rules=HELD_RULES,
                          extra={"audio.device": "pulse", "audio.silence_timeout": "4s"})
    notify = NotifySocket(tmp_path / "notify.sock")
    sub = subscriber_factory(broker, ["am/#", "homeassistant/#"])
    noise = _noise(tmp_path / "noise.wav", 3.0)
    daemon = DaemonProcess(config, env={**vmic.env, "NOTIFY_SOCKET": notify.path})
    ok_metric = 'audio_monitor_capture_ok{source="test_node"}'
    try:
        daemon.wait_log("listening:", timeout=120)
        port = re.search(r"metrics on http://127.0.0.1:(\d+)/metrics", daemon.wait_log("metrics on")).group(1)
        # Home Assistant is told about the problem sensor
        discovery = json.loads(sub.wait_for(lambda t, p, r: t == "homeassistant/device/test_node/config")[1])
        mic = discovery["cmps"]["microphone"]
        assert mic["p"] == "binary_sensor" and mic["device_class"] == "problem" and mic["name"] == "Microphone"
        assert mic["state_topic"] == "am/test_node/hearing"
        # the virtual microphone delivers exact zeros while nothing plays: after 4 s that is a dead capture
        i = _hearing(sub, "ON", "capture_lost")
        daemon.wait_log("cannot hear: capture lost (only digital silence")
        assert _info(sub, lambda s: s["hearing"] == "capture_lost")["state"] == "deaf"
        assert _metric(port, ok_metric) == 0.0
        notify.wait("STATUS=cannot hear (capture_lost")
        # sound: hearing again, and the rule turns ON (and holds: hold 60 s)
        vmic.play(noise)
        i = _hearing(sub, "OFF", None, after=i)
        sub.wait_for(lambda t, p, r: t == "am/test_node/loud/state" and p == b"ON", timeout=15)
        assert _metric(port, ok_metric) == 1.0
        # 4 s of zeros: capture lost; the ON rule is turned OFF now, not 60 s later, saying why
        off = json.loads(sub.wait_for(lambda t, p, r: t == "am/test_node/loud/event" and b'"off"' in p, timeout=15)[1])
        assert off["reason"] == "capture_lost"
        i = _hearing(sub, "ON", "capture_lost", after=i)
        # ON again, then muted: OFF with reason muted, the problem sensor says muted
        n = len(events_of(sub.messages))
        vmic.play(noise)
        i = _hearing(sub, "OFF", None, after=i)
        sub.wait_for(lambda t, p, r: len(events_of(sub.messages)) > n and events_of(sub.messages)[-1]["kind"] == "on",
                     timeout=15)
        sub.client.publish("am/test_node/set/mute", b"ON", qos=1).wait_for_publish(5)
        i = _hearing(sub, "ON", "muted", after=i)
        assert events_of(sub.messages)[-1]["kind"] == "off" and events_of(sub.messages)[-1]["reason"] == "muted"
        assert _info(sub, lambda s: s["hearing"] == "muted")["state"] == "muted"
        assert _metric(port, ok_metric) == 0.0
    finally:
        code = daemon.stop()
        print(daemon.output)  # shown when the test fails
        notify.close()
    assert code == 0, daemon.output
    kinds = [(e["kind"], e.get("reason")) for e in events_of(sub.messages)]
    assert kinds == [("on", None), ("off", "capture_lost"), ("on", None), ("off", "muted")], kinds
    assert "Traceback" not in daemon.output


def test_sound_server_gone_is_capture_lost_until_it_returns(vmic, broker, subscriber_factory, tiny_model_dir,
                                                             tmp_path):
    need(shutil.which("pulseaudio") is not None, "pulseaudio")
    (tmp_path / "own").mkdir()
    own = VirtualMic(tmp_path / "own")  # a microphone of this test's own, to pull away
    config = write_config(tmp_path, tiny_model_dir, broker.port, rules=HELD_RULES,
                          extra={"audio.device": "pulse", "audio.silence_timeout": "0s"})
    sub = subscriber_factory(broker, "am/#")
    daemon = DaemonProcess(config, env=own.env)
    try:
        daemon.wait_log("listening:", timeout=120)
        own.play(_noise(tmp_path / "noise.wav", 2.0))
        sub.wait_for(lambda t, p, r: t == "am/test_node/loud/state" and p == b"ON", timeout=15)
        own.stop()  # the device is gone
        off = json.loads(sub.wait_for(lambda t, p, r: t == "am/test_node/loud/event" and b'"off"' in p, timeout=20)[1])
        assert off["reason"] == "capture_lost"
        i = _hearing(sub, "ON", "capture_lost")
        status = _info(sub, lambda s: s["hearing"] == "capture_lost")
        assert status["capture"] == "retrying" and status["hearing_detail"]
        own = VirtualMic(tmp_path / "own")  # and back
        _hearing(sub, "OFF", None, after=i, timeout=40)
        daemon.wait_log("hearing again")
    finally:
        code = daemon.stop()
        print(daemon.output)  # shown when the test fails
        own.stop()
    assert code == 0, daemon.output
    assert "Traceback" not in daemon.output


class _HeldEngine:
    """Says yes to everything, once the test lets it answer."""

    name = "held"
    max_batch = 1

    def __init__(self) -> None:
        import threading

        self.entered, self.release = threading.Event(), threading.Event()

    def calibrate(self, prompts, seconds=None):
        return {p: 0.0 for p in prompts}

    def answer(self, requests):
        from monitor.engine.api import Result, Score

        self.entered.set()
        assert self.release.wait(30)
        return [Result(r.window, {q.key: Score(0.99, 0.0) for q in r.questions}) for r in requests]


def test_an_answer_about_audio_heard_before_the_loss_still_alarms_then_clears(tmp_path):
    """The smoke alarm sounded, then the microphone died: the hub gets the alarm, and its end."""
    from monitor.config import load_config
    from monitor.pipeline import Pipeline
    from monitor.rules import load_rules

    recording = tmp_path / "alarm.wav"
    sf.write(recording, (np.random.default_rng(2).standard_normal(3 * RATE) * 0.2).astype(np.float32), RATE)
    config = load_config(write_config(tmp_path, tmp_path, 1, source=f"file:{recording}", rules=HELD_RULES,
                                      extra={"audio.realtime": False}))
    engine = _HeldEngine()
    pipeline = Pipeline(config, load_rules(config.rules), engine_factory=lambda _s: engine)
    pipeline.source.capture = True  # stands in for a microphone
    assert pipeline.load_model(10) is None
    pipeline.start_audio()
    try:
        assert engine.entered.wait(10)  # the first window is with the model when the capture dies
        pipeline.source.stats.state = "retrying"
        changed, off = pipeline.check_hearing()
        assert changed and off == [] and pipeline.hearing.reason == "capture_lost"
        engine.release.set()
        result = pipeline.next_result(10)
        events = pipeline.process(result)
        assert [(e.kind, e.reason) for e in events] == [("on", None), ("off", "capture_lost")]
        assert not pipeline.rules.is_on("loud")
    finally:
        engine.release.set()
        pipeline.stop()
