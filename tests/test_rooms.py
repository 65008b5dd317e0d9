"""A whole home in one daemon: two microphones and a camera stream, one model, one engine, per-room MQTT.

End to end with real parts: a PulseAudio server with two virtual microphones (each an ALSA device
of its own), a GStreamer RTSP server sending video and audio, mosquitto, and the daemon as a
process with the tiny model.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from helpers.rtsp_server import RtspServer, have_gst_rtsp

from monitor.config import load_config
from monitor.yamlsource import ValidationFailed
from tests.conftest import VirtualMic, free_port, need
from tests.daemon_support import LOUD_RULES, DaemonProcess, events_of

RATE = 16_000
PASSWORD = "Cam-Secret-7731"  # must appear nowhere the daemon writes


def _rooms_config(tmp_path: Path, model: Path, broker_port: int, sources: dict, extra: dict | None = None) -> Path:
    rules = tmp_path / "rules.yaml"
    rules.write_text(LOUD_RULES)
    config = {
        "node_id": "home",
        "name": "Home",
        "sources": sources,
        "windows": {"length": "2s", "hop": "1s"},
        "model": {"path": str(model), "device": "cpu"},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "topic_prefix": "am", "birth_timeout": "1s"},
        "rules": str(rules),
        "state_dir": str(tmp_path / "state"),
        "metrics": {"port": 0},
        "web": {"port": 0},
        "stop_timeout": "5s",
        "log": {"level": "debug"},
        **(extra or {}),
    }
    path = tmp_path / "home.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _noise(path: Path, seconds: float, level: float = 0.2) -> Path:
    rng = np.random.default_rng(11)
    sf.write(path, (rng.standard_normal(int(seconds * RATE)) * level).astype(np.float32), RATE)
    return path


def _events(sub, room: str) -> list[dict]:
    return events_of(sub.messages, node=room)


def _hearing(sub, room: str, capture: str, after: int = 0, timeout: float = 30.0, reason: str | None = "any") -> int:
    """Index of the first message on the room's hearing topic with this capture (and reason) after `after`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for i, (t, p, _) in enumerate(list(sub.messages)[after:], start=after):
            if t == f"am/{room}/hearing":
                body = json.loads(p)
                if body["capture"] == capture and (reason == "any" or body["reason"] == reason):
                    return i
        time.sleep(0.05)
    raise TimeoutError(f"{room}: no hearing message with capture={capture} reason={reason}")


# ---------------------------------------------------------------------------- config


def test_sources_validate_every_room_and_refuse_a_shared_device(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "home.yaml").write_text(LOUD_RULES)
    config = tmp_path / "home.yaml"
    config.write_text(
        "node_id: home\n"
        "sources:\n"
        "  kitchen:\n"
        "    audio: {source: mic, device: room_a}\n"
        "  nursery:\n"
        "    audio: {source: mic, device: room_a}\n"
        "  porch:\n"
        "    audio: {source: 'rtsp://admin:${CAM_PASSWORD:-x}@cam/1', buffer_seconds: 5}\n"
        "    rules: missing\n")
    with pytest.raises(ValidationFailed) as exc:
        load_config(config)
    text = "\n".join(str(p) for p in exc.value.problems)
    assert f"{config}:6: sources.nursery.audio.device: the input device 'room_a' is also sources.kitchen's" in text
    assert f"{config}:8: sources.porch.audio.buffer_seconds: must hold" in text
    assert f"{config}:9: sources.porch.rules: not found" in text
    assert "admin:" not in text
    config.write_text("node_id: home\nsources:\n  Bad-Id:\n    audio: {source: mic}\n")
    with pytest.raises(ValidationFailed) as exc:
        load_config(config)
    assert str(exc.value.problems[0]).startswith(f"{config}:3: sources.Bad-Id: a source id is 1-64 of a-z 0-9 _")


def test_check_names_every_room(capsys) -> None:
    from monitor.cli import main

    config = Path(__file__).parent.parent / "configs" / "home.yaml"
    assert main(["check", "-c", str(config)]) == 0
    assert "3 rooms: kitchen (11 rule(s)), nursery (11 rule(s)), porch (11 rule(s))" in capsys.readouterr().out


def test_the_single_audio_section_is_one_room_named_by_node_id(tmp_path: Path) -> None:
    config = load_config(None, ["node_id=kitchen", f"rules={Path(__file__).parent.parent / 'rules'}"])
    (room,) = config.rooms
    assert room.id == "kitchen" and room.name == "Kitchen" and room.audio == config.audio and not config.multi_room


# ---------------------------------------------------------------------------- end to end


@pytest.fixture
def camera(tmp_path):
    need(have_gst_rtsp(), "GStreamer's RTSP server for the system python3 (gir1.2-gst-rtsp-server-1.0 and plugins)")
    # quiet background (not digital silence) for longer than the test: the stream never ends by itself
    wav = _noise(tmp_path / "porch.wav", 240, level=3e-4)
    server = RtspServer(wav, free_port(), "admin", PASSWORD, log=tmp_path / "rtsp.log")
    yield server.start()
    server.stop()


def test_two_microphones_and_a_camera_in_one_daemon(broker, subscriber_factory, tiny_model_dir, camera, tmp_path):
    (tmp_path / "pulse").mkdir()
    mics = VirtualMic(tmp_path / "pulse", rooms=["room_a", "room_b"])
    sources = {
        "kitchen": {"name": "Kitchen", "audio": {"source": "mic", "device": "room_a", "silence_timeout": "0s"}},
        "nursery": {"name": "Nursery", "audio": {"source": "mic", "device": "room_b", "silence_timeout": "0s"}},
        "porch": {"name": "Porch", "audio": {"source": camera.url(password="${CAM_PASSWORD}")}},
    }
    config = _rooms_config(tmp_path, tiny_model_dir, broker.port, sources)
    assert PASSWORD not in config.read_text()
    sub = subscriber_factory(broker, ["am/#", "homeassistant/#"])
    noise = _noise(tmp_path / "noise.wav", 2.0)
    daemon = DaemonProcess(config, env={**mics.env, "CAM_PASSWORD": PASSWORD})
    metrics = ""
    try:
        daemon.wait_log("listening:", timeout=120)
        assert daemon.output.count("loaded on cpu") == 1  # one model for the whole home
        # one Home Assistant device per room, and the daemon's own (whole-home mute, reload)
        for room, name in (("kitchen", "Kitchen"), ("nursery", "Nursery"), ("porch", "Porch")):
            payload = json.loads(sub.wait_for(lambda t, p, r, room=room: t == f"homeassistant/device/{room}/config")[1])
            assert payload["dev"]["name"] == name and payload["dev"]["via_device"] == "audio_monitor_home"
            state = payload["cmps"]["loud_state"]
            assert state["state_topic"] == f"am/{room}/loud/state" and state["availability_mode"] == "all"
            assert [a["topic"] for a in state["availability"]] == ["am/home/status", f"am/{room}/hearing"]
            assert payload["cmps"]["mute"]["command_topic"] == f"am/{room}/set/mute"
            switch = payload["cmps"]["loud_enabled"]  # each rule of each room has its switch, on the room's device
            assert switch["command_topic"] == f"am/{room}/loud/set/enabled" and switch["availability_topic"] == "am/home/status"
        # one room's rule switched off: that room's alone, remembered in that room's file
        n = len(sub.messages)
        sub.client.publish("am/porch/loud/set/enabled", b"OFF", qos=1).wait_for_publish(5)
        sub.wait_for(lambda t, p, r: t == "am/porch/loud/enabled" and p == b"OFF", after=n)
        daemon.wait_log("porch: rule loud switched off", timeout=10)
        assert (tmp_path / "state" / "rules-off-porch").read_text() == "loud\n"
        assert not (tmp_path / "state" / "rules-off-kitchen").exists()
        hub = json.loads(sub.wait_for(lambda t, p, r: t == "homeassistant/device/home/config")[1])
        assert set(hub["cmps"]) == {"mute", "reload", "model", "loud_incident"}  # one model, one incident entity per rule
        for room in ("kitchen", "nursery", "porch"):
            _hearing(sub, room, "ok")
        # sound in the kitchen: events on the kitchen's topics only
        mics.play(noise, room="room_a")
        sub.wait_for(lambda t, p, r: t == "am/kitchen/loud/state" and p == b"ON", timeout=15)
        time.sleep(3)
        assert [e["kind"] for e in _events(sub, "kitchen")][:1] == ["on"]
        assert _events(sub, "nursery") == [] and _events(sub, "porch") == []
        # the camera goes away for 20 s: its room is unavailable, the others keep publishing
        n = len(sub.messages)
        camera.kill()
        killed = time.monotonic()
        lost = _hearing(sub, "porch", "lost", after=n, timeout=30)
        mics.play(noise, room="room_b")
        sub.wait_for(lambda t, p, r: t == "am/nursery/loud/state" and p == b"ON", timeout=15)
        info = json.loads(sub.wait_for(lambda t, p, r: t == "am/home/info" and b'"capture_lost"' in p, timeout=15)[1])
        assert info["rooms"]["porch"]["hearing"] == "capture_lost"
        assert info["rooms"]["kitchen"]["hearing"] == "ok" and info["rooms"]["nursery"]["hearing"] == "ok"
        time.sleep(max(0.0, 20 - (time.monotonic() - killed)))
        camera.start()
        _hearing(sub, "porch", "ok", after=lost, timeout=45)  # within the backoff cap (30 s) and a reconnect
        # mute: the whole home from the daemon's switch, then one room from its own
        n = len(sub.messages)
        sub.client.publish("am/home/set/mute", b"ON", qos=1).wait_for_publish(5)
        for room in ("kitchen", "nursery", "porch"):
            _hearing(sub, room, "ok", after=n, reason="muted", timeout=15)
        sub.wait_for(lambda t, p, r: t == "am/home/mute" and p == b"ON")
        n = len(sub.messages)
        sub.client.publish("am/home/set/mute", b"OFF", qos=1).wait_for_publish(5)
        for room in ("kitchen", "nursery", "porch"):
            _hearing(sub, room, "ok", after=n, reason=None, timeout=15)
        n = len(sub.messages)
        sub.client.publish("am/kitchen/set/mute", b"ON", qos=1).wait_for_publish(5)
        _hearing(sub, "kitchen", "ok", after=n, reason="muted", timeout=15)
        sub.wait_for(lambda t, p, r: t == "am/kitchen/mute" and p == b"ON", after=n)
        # the first status after the kitchen's mute (not one left from the whole-home mute above)
        info = json.loads(sub.wait_for(lambda t, p, r: t == "am/home/info" and b'"muted"' in p,
                                       timeout=15, after=n)[1])
        assert {room: s["state"] for room, s in info["rooms"].items()} == {
            "kitchen": "muted", "nursery": "listening", "porch": "listening"}
        port = re.search(r"metrics on http://127.0.0.1:(\d+)/metrics", daemon.wait_log("metrics on")).group(1)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        for room in ("kitchen", "nursery", "porch"):
            assert f'audio_monitor_windows_processed_total{{source="{room}"}}' in metrics
    finally:
        code = daemon.stop()
        print(daemon.output)  # shown when the test fails
        mics.stop()
    assert code == 0
    assert "Traceback" not in daemon.output
    # the camera's password: nowhere in the log, on MQTT (status included) or in the metrics
    assert PASSWORD not in daemon.output
    assert all(PASSWORD.encode() not in p and PASSWORD not in t for t, p, _ in sub.messages)
    assert PASSWORD not in metrics
    assert "rtsp://***@127.0.0.1" in daemon.output  # named, without credentials

