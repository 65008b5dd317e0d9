"""SIGTERM with hung sources: the outbox is flushed and `offline` said within systemd's stop limit.

systemd kills the daemon `TimeoutStopSec=30s` (systemd/audio-monitor.service) after SIGTERM; what
the broker has not taken by then waits for the next start, and the hub sees the Last Will instead
of `offline`. A capture that hangs (a frozen sound server, a camera that accepted and went silent)
must not spend that time: sources are stopped all at once, under one deadline, after the outbox.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from helpers.mqtt_clients import Recorder, send

from monitor.config import load_config
from monitor.daemon import EXIT_GRACE, FLUSH_AT_LEAST
from monitor.yamlsource import ValidationFailed
from tests.conftest import REPO, VirtualMic
from tests.daemon_support import LOUD_RULES, DaemonProcess

RATE = 16_000
ROOMS = {"kitchen": "room_a", "nursery": "room_b", "hall": "room_c"}
SYSTEMD_LIMIT = 20.0  # the test's bound: well inside TimeoutStopSec=30s on a loaded machine


def _home(tmp_path: Path, model: Path, broker_port: int) -> Path:
    (tmp_path / "rules.yaml").write_text(LOUD_RULES)
    config = {
        "node_id": "home",
        "sources": {room: {"audio": {"source": "mic", "device": device, "silence_timeout": "0s"}}
                    for room, device in ROOMS.items()},
        "windows": {"length": "1s", "hop": "1s"},
        "model": {"path": str(model), "device": "cpu"},
        # a long hold after each (re)connect, ended by the birth message the test sends at start
        # only: after the broker's restart the events wait in the outbox until the stop flushes them
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "topic_prefix": "am", "birth_timeout": "120s",
                 "reconnect_min": "0.2s", "reconnect_max": "1s"},
        "rules": str(tmp_path / "rules.yaml"),
        "state_dir": str(tmp_path / "state"),
        "metrics": {"port": 0},
        "web": {"enabled": False},
        "stop_timeout": "10s",  # the default
        "log": {"level": "info"},
    }
    path = tmp_path / "home.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _capture(messages: list[tuple[str, bytes, bool]], room: str) -> str | None:
    """The room's latest `capture` (ok or lost) on its hearing topic."""
    said = [json.loads(p)["capture"] for t, p, _ in messages if t == f"am/{room}/hearing"]
    return said[-1] if said else None


def _held(output: str) -> list[tuple[str, str]]:
    """(room, event id) of the events the daemon stored in the outbox."""
    return re.findall(r"event (\w+)/loud on id=([0-9a-f]+) .*via=outbox", output)


def test_sigterm_with_three_hung_microphones_flushes_the_outbox_within_the_stop_limit(broker, tiny_model_dir, tmp_path):
    (tmp_path / "pulse").mkdir()
    mics = VirtualMic(tmp_path / "pulse", rooms=list(ROOMS.values()))
    noise = tmp_path / "noise.wav"
    sf.write(noise, (np.random.default_rng(3).standard_normal(2 * RATE) * 0.2).astype(np.float32), RATE)
    hub = Recorder(broker.host, broker.port, ["am/#"])
    daemon = DaemonProcess(_home(tmp_path, tiny_model_dir, broker.port), env=mics.env)
    code = None
    try:
        daemon.wait_log("listening:", timeout=120)
        hub.wait_until(lambda m: ("am/home/status", b"online") in [(t, p) for t, p, _ in m], what="online")
        send(broker.host, broker.port, "homeassistant/status", "online")  # the first connection's hold ends
        # the broker restarts; meanwhile every room hears something: ON events wait in the outbox,
        # and after the reconnect they are held for a birth message that never comes
        broker.stop()
        daemon.wait_log("lost the connection", timeout=15)
        for device in ROOMS.values():
            mics.play(noise, room=device, wait=False)
        deadline = time.monotonic() + 60
        while {room for room, _ in _held(daemon.output)} != set(ROOMS) and time.monotonic() < deadline:
            time.sleep(0.1)
        held = _held(daemon.output)
        assert {room for room, _ in held} == set(ROOMS), daemon.output
        broker.start()
        n = daemon.output.count("mqtt: connected")
        deadline = time.monotonic() + 30
        while daemon.output.count("mqtt: connected") == n and time.monotonic() < deadline:
            time.sleep(0.1)
        hub.wait_until(lambda m: [(t, p) for t, p, _ in m].count(("am/home/status", b"online")) >= 2, timeout=30,
                       what="online again")
        assert not any(t.endswith("/event") for t, _, _ in hub.messages)  # held: the stop must send them
        # the sound server freezes: every room's capture hangs inside PortAudio
        mics.proc.send_signal(signal.SIGSTOP)
        hub.wait_until(lambda m: all(_capture(m, room) == "lost" for room in ROOMS), timeout=30, what="capture lost")
        time.sleep(3)  # each capture thread is now blocked closing or reopening its device
        asked = time.monotonic()
        daemon.signal(signal.SIGTERM)
        try:
            code = daemon.wait(SYSTEMD_LIMIT)
        except subprocess.TimeoutExpired:
            daemon.kill()  # as systemd would, later
        took = time.monotonic() - asked
    finally:
        mics.proc.send_signal(signal.SIGCONT)
        daemon.kill()
        mics.stop()
        hub.close()
    print(daemon.output)
    assert code == 0, f"no exit within {SYSTEMD_LIMIT}s of SIGTERM"
    assert took < SYSTEMD_LIMIT
    # every event held in the outbox reached the broker before `offline`, and the outbox is empty
    delivered = {json.loads(p)["id"] for t, p, _ in hub.messages if t.endswith("/loud/event")}
    assert {i for _, i in held} <= delivered
    statuses = [p for t, p, _ in hub.messages if t == "am/home/status"]
    assert statuses[-1] == b"offline"
    db = sqlite3.connect(tmp_path / "state" / "outbox.sqlite3")
    try:
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
    finally:
        db.close()
    assert "Traceback" not in daemon.output


def test_stop_timeout_cannot_exceed_what_fits_in_the_units_stop_limit() -> None:
    unit = (REPO / "systemd" / "audio-monitor.service").read_text()
    limit = float(re.search(r"^TimeoutStopSec=(\d+)s$", unit, re.M).group(1))
    assert load_config(None, ["stop_timeout=20s"]).stop_timeout == 20.0
    # the stop's own overruns (FLUSH_AT_LEAST, the publisher's last second, EXIT_GRACE) still fit
    assert 20.0 + FLUSH_AT_LEAST + 1.5 + EXIT_GRACE < limit
    with pytest.raises(ValidationFailed) as exc:
        load_config(None, ["stop_timeout=25s"])
    (problem,) = exc.value.problems
    assert problem.path == "stop_timeout" and "at most 20s" in problem.message and "TimeoutStopSec=30s" in problem.message
