"""A whole home whose microphones come and go: one room's device trouble stays in that room.

The daemon as a process with the tiny model, mosquitto, and a PulseAudio server with one virtual
microphone per room (each an ALSA device of its own) that the test unplugs and plugs in, as a
person does with a USB microphone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from test_rooms import _hearing, _noise, _rooms_config

from tests.conftest import VirtualMic
from tests.daemon_support import DaemonProcess, NotifySocket


def _hearing_body(sub, room: str, index: int) -> dict:
    return json.loads(list(sub.messages)[index][1])


def _hears(sub, mics: VirtualMic, noise: Path, room: str, device: str, after: int, timeout: float = 20.0) -> None:
    """Sound into `device` turns the room's rule ON (a new ON event after message `after`)."""
    mics.play(noise, room=device)
    sub.wait_for(lambda t, p, r: t.startswith(f"am/{room}/") and t.endswith("/event") and json.loads(p)["kind"] == "on",
                 timeout=timeout, after=after)


def _status(sub, after: int, predicate, timeout: float = 30.0) -> dict:
    """The first whole-home status (after message `after`) for which predicate(status) is true."""
    _, payload, _ = sub.wait_for(lambda t, p, r: t == "am/home/info" and predicate(json.loads(p)), timeout=timeout,
                                 after=after)
    return json.loads(payload)


def test_an_unplugged_microphone_is_its_rooms_problem(broker, subscriber_factory, tiny_model_dir, tmp_path):
    (tmp_path / "pulse").mkdir()
    mics = VirtualMic(tmp_path / "pulse", rooms=["room_a", "room_b"])
    sources = {
        "kitchen": {"audio": {"source": "mic", "device": "room_a", "silence_timeout": "0s"}},
        "nursery": {"audio": {"source": "mic", "device": "room_b", "silence_timeout": "0s"}},
    }
    config = _rooms_config(tmp_path, tiny_model_dir, broker.port, sources)
    sub = subscriber_factory(broker, ["am/#"])
    noise = _noise(tmp_path / "noise.wav", 2.0)
    daemon = DaemonProcess(config, env=mics.env)
    try:
        daemon.wait_log("listening:", timeout=120)
        _hearing(sub, "kitchen", "ok")
        _hearing(sub, "nursery", "ok")
        _hears(sub, mics, noise, "nursery", "room_b", after=0)
        # the nursery's microphone is unplugged: that room cannot hear, and says why
        n = len(sub.messages)
        mics.unplug("room_b")
        lost = _hearing(sub, "nursery", "lost", after=n, timeout=30)
        assert _hearing_body(sub, "nursery", lost)["problem"] == "ON"
        unplugged = time.monotonic()
        # while it is away (several of its retries), the kitchen hears and publishes as before
        for _ in range(2):
            m = len(sub.messages)
            _hears(sub, mics, noise, "kitchen", "room_a", after=m)
            sub.wait_for(lambda t, p, r: t == "am/kitchen/loud/state" and p == b"OFF", timeout=20, after=m)
        time.sleep(max(0.0, 8.0 - (time.monotonic() - unplugged)))
        assert all(json.loads(p)["capture"] == "ok" for t, p, _ in list(sub.messages)[n:] if t == "am/kitchen/hearing")
        # plugged in again: the nursery hears again, the kitchen still does
        mics.plug("room_b")
        _hearing(sub, "nursery", "ok", after=lost, reason=None, timeout=45)
        m = len(sub.messages)
        _hears(sub, mics, noise, "nursery", "room_b", after=m)
        _hears(sub, mics, noise, "kitchen", "room_a", after=m)
        info = _status(sub, m, lambda s: s["rooms"]["nursery"]["lost_s"] > 0)
        kitchen, nursery = info["rooms"]["kitchen"], info["rooms"]["nursery"]
        # the outage is audio never captured: lost, not windows the engine failed to keep up with
        assert nursery["lost_s"] >= 5 and nursery["lost_windows"] >= 5, nursery
        assert kitchen["lost_s"] == 0 and kitchen["lost_windows"] == 0 and kitchen["capture"] == "running", kitchen
    finally:
        code = daemon.stop()
        print(daemon.output)  # shown when the test fails
        mics.stop()
    assert code == 0
    assert "Traceback" not in daemon.output and "Invalid stream pointer" not in daemon.output


def test_a_microphone_missing_at_start_is_its_rooms_problem(broker, subscriber_factory, tiny_model_dir, tmp_path):
    """One USB microphone unplugged at boot: that room starts deaf and joins when it is plugged in."""
    (tmp_path / "pulse").mkdir()
    mics = VirtualMic(tmp_path / "pulse", rooms=["room_a"])
    sources = {
        "kitchen": {"audio": {"source": "mic", "device": "room_a", "silence_timeout": "0s"}},
        "nursery": {"audio": {"source": "mic", "device": "USB", "silence_timeout": "0s"}},
    }
    config = _rooms_config(tmp_path, tiny_model_dir, broker.port, sources)
    sub = subscriber_factory(broker, ["am/#"])
    notify = NotifySocket(tmp_path / "notify.sock")
    noise = _noise(tmp_path / "noise.wav", 2.0)
    daemon = DaemonProcess(config, env={**mics.env, "NOTIFY_SOCKET": notify.path})
    try:
        line = daemon.wait_log("sources.nursery.audio.device", timeout=60)
        assert "no input device matches 'USB'" in line and "starting without it" in line
        daemon.wait_log("listening:", timeout=120)
        lost = _hearing(sub, "nursery", "lost", timeout=30)
        body = _hearing_body(sub, "nursery", lost)
        assert body == {"problem": "ON", "reason": "capture_lost", "detail": "device not found: 'USB'", "capture": "lost"}
        _hearing(sub, "kitchen", "ok")
        notify.wait("READY=1", timeout=30)
        statuses = [m for _, m in notify.messages if m.startswith("STATUS=")]
        assert any("cannot hear: nursery (capture_lost)" in s and "1/2 rooms listening" in s for s in statuses), statuses
        _hears(sub, mics, noise, "kitchen", "room_a", after=0)
        # plugged in: found (the device list is re-read), the room hears; the kitchen keeps hearing
        m = len(sub.messages)
        mics.plug("usb")
        _hearing(sub, "nursery", "ok", after=lost, reason=None, timeout=60)
        _hears(sub, mics, noise, "nursery", "usb", after=m)
        _hears(sub, mics, noise, "kitchen", "room_a", after=m)
    finally:
        code = daemon.stop()
        notify.close()
        print(daemon.output)
        mics.stop()
    assert code == 0
    errors = [line for line in daemon.lines if " ERROR " in line]
    assert len(errors) == 1, errors  # the one line at start; no retry repeats it
    assert "Traceback" not in daemon.output


def test_a_home_where_no_room_can_hear_does_not_start(tiny_model_dir, tmp_path):
    (tmp_path / "pulse").mkdir()
    mics = VirtualMic(tmp_path / "pulse", rooms=["room_a"])
    sources = {
        "kitchen": {"audio": {"source": "mic", "device": "USB kitchen"}},
        "nursery": {"audio": {"source": "mic", "device": "USB nursery"}},
    }
    config = _rooms_config(tmp_path, tiny_model_dir, 1, sources)
    daemon = DaemonProcess(config, env=mics.env)
    try:
        assert daemon.wait(60) == 1
    finally:
        mics.stop()
    errors = [line for line in daemon.lines if " ERROR " in line]
    assert len(errors) == 2, daemon.output  # one line per room
    assert "sources.nursery.audio.device: no input device matches 'USB nursery'" in errors[0]
    assert "sources.kitchen.audio.device: no input device matches 'USB kitchen'" in errors[1]
    assert errors[1].endswith("(and 1 more above): no room can hear; plug the microphones in or fix the names")
    assert "Traceback" not in daemon.output
