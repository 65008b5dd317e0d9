"""Home Assistant discovery and inbound commands against a real mosquitto."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.mqtt_clients import Recorder, send

from monitor import __version__
from monitor.publish.discovery import EntitySpec
from monitor.publish.publisher import Publisher
from monitor.publish.settings import MqttSettings

NODE = "nursery"
BASE = f"audio-monitor/{NODE}"
DISCOVERY = f"homeassistant/device/{NODE}/config"

RULES = [
    EntitySpec("baby_crying", "Baby crying", "yes_no", device_class="sound", icon="mdi:baby-face-outline"),
    EntitySpec("fall", "Fall", "yes_no", device_class="safety"),
    EntitySpec("speech", "Speech", "text"),
    EntitySpec("call_for_help", "Call for help", "match"),
]


@pytest.fixture
def publishers() -> Iterator:
    made: list[Publisher] = []

    def factory(broker, state_dir: Path, **kw) -> Publisher:
        s = MqttSettings(host=broker.host, port=broker.port, reconnect_min=0.2, reconnect_max=1)
        made.append(Publisher(s, NODE, "Nursery", state_dir, **kw))
        return made[-1]

    yield factory
    for p in made:
        p.stop(timeout=1)


def discovery_payloads(rec: Recorder) -> list[dict]:
    return [json.loads(p) for p in rec.payloads(DISCOVERY)]


def test_discovery_has_every_entity_and_removes_deleted_rules(broker, publishers, recorders, tmp_path: Path) -> None:
    rec = recorders(broker, [DISCOVERY, f"{BASE}/#"])
    pub = publishers(broker, tmp_path / "state")
    pub.set_entities(RULES)
    pub.start()
    rec.wait_until(lambda m: len(discovery_payloads(rec)) >= 1, what="discovery")
    first = discovery_payloads(rec)[0]
    assert first["dev"] == {"ids": [f"audio_monitor_{NODE}"], "name": "Nursery", "mf": "audio-monitor",
                            "mdl": "audio-monitor", "sw": __version__}
    assert first["o"] == {"name": "audio-monitor", "sw": __version__}
    cmps = first["cmps"]
    expected = {
        "baby_crying_state": "binary_sensor", "baby_crying_event": "event",
        "fall_state": "binary_sensor", "fall_event": "event",
        "speech_text": "sensor", "speech_event": "event",
        "call_for_help_event": "event",
        "baby_crying_enabled": "switch", "fall_enabled": "switch", "speech_enabled": "switch",
        "call_for_help_enabled": "switch",
        "mute": "switch", "level": "sensor", "reload": "button", "microphone": "binary_sensor",
        "model": "binary_sensor",
    }
    assert {k: v["p"] for k, v in cmps.items()} == expected
    assert cmps["fall_state"]["device_class"] == "safety"
    assert cmps["baby_crying_state"]["icon"] == "mdi:baby-face-outline"
    for comp in cmps.values():
        assert comp["availability_topic"] == f"{BASE}/status"
        assert comp["unique_id"].startswith(f"audio_monitor-{NODE}-")
    # every topic the entities listen on is one the publisher writes
    assert cmps["fall_state"]["state_topic"] == f"{BASE}/fall/state"
    assert cmps["speech_text"]["state_topic"] == f"{BASE}/speech/text"
    assert cmps["call_for_help_event"]["state_topic"] == f"{BASE}/call_for_help/event"
    assert cmps["mute"]["command_topic"] == f"{BASE}/set/mute" and cmps["mute"]["state_topic"] == f"{BASE}/mute"
    assert cmps["reload"]["command_topic"] == f"{BASE}/set/reload"
    # the discovery payload went out before any state, so Home Assistant knows the entities first
    rec.wait_until(lambda m: any(t == f"{BASE}/mute" for t, _, _ in m), what="mute state")
    topics = [t for t, _, _ in rec.messages]
    assert topics.index(DISCOVERY) < topics.index(f"{BASE}/mute")

    # the "fall" rule is deleted: its components are sent with nothing but their platform
    pub.set_entities([r for r in RULES if r.id != "fall"])
    rec.wait_until(lambda m: len(discovery_payloads(rec)) >= 2, what="updated discovery")
    cmps = discovery_payloads(rec)[-1]["cmps"]
    assert cmps["fall_state"] == {"p": "binary_sensor"} and cmps["fall_event"] == {"p": "event"}
    assert cmps["baby_crying_state"]["p"] == "binary_sensor" and "unique_id" in cmps["baby_crying_state"]

    # after a restart with fewer rules, earlier removals are still announced, and the new one too
    pub.stop()
    pub2 = publishers(broker, tmp_path / "state")
    pub2.set_entities([RULES[0]])
    pub2.start()
    rec.wait_until(lambda m: len(discovery_payloads(rec)) >= 3, what="discovery after restart")
    cmps = discovery_payloads(rec)[-1]["cmps"]
    for gone, platform in [("fall_state", "binary_sensor"), ("fall_event", "event"), ("speech_text", "sensor"),
                           ("speech_event", "event"), ("call_for_help_event", "event")]:
        assert cmps[gone] == {"p": platform}, gone
    assert "unique_id" in cmps["baby_crying_event"]

    # retained: a Home Assistant that starts later reads the latest payload
    late = recorders(broker, DISCOVERY)
    late.wait_until(lambda m: len(m) >= 1, what="retained discovery")
    assert late.messages[0][2] is True
    assert json.loads(late.messages[0][1]) == discovery_payloads(rec)[-1]


def test_home_assistant_birth_republishes_discovery_and_states(broker, publishers, recorders, tmp_path: Path) -> None:
    rec = recorders(broker, [DISCOVERY, f"{BASE}/#"])
    pub = publishers(broker, tmp_path / "state")
    pub.set_entities(RULES)
    pub.start()
    pub.publish_state("fall", True)
    pub.set_muted(True)
    rec.wait_until(lambda m: (f"{BASE}/fall/state", b"ON", False) in m and (f"{BASE}/mute", b"ON", False) in m,
                   what="states")
    n_disc, n_state = len(rec.payloads(DISCOVERY)), len(rec.payloads(f"{BASE}/fall/state"))
    send(broker.host, broker.port, "homeassistant/status", "offline")
    send(broker.host, broker.port, "homeassistant/status", "online")
    rec.wait_until(lambda m: len(rec.payloads(DISCOVERY)) > n_disc and len(rec.payloads(f"{BASE}/fall/state")) > n_state,
                   what="republished discovery and state")
    assert rec.payloads(f"{BASE}/fall/state")[-1] == b"ON" and rec.payloads(f"{BASE}/mute")[-1] == b"ON"


def test_commands_mute_and_reload_and_garbage_changes_nothing(broker, publishers, recorders, tmp_path: Path) -> None:
    calls: list[tuple[str, str]] = []
    seen = threading.Condition()

    def on_command(name: str, value: str, target: str) -> None:
        assert target == NODE
        with seen:
            calls.append((name, value))
            seen.notify_all()

    def wait_calls(n: int) -> None:
        with seen:
            assert seen.wait_for(lambda: len(calls) >= n, timeout=15), calls

    pub = publishers(broker, tmp_path / "state", on_command=on_command)
    pub.start()
    deadline = time.monotonic() + 15
    while not pub._ready and time.monotonic() < deadline:
        time.sleep(0.02)
    h, p = broker.host, broker.port
    send(h, p, f"{BASE}/set/mute", "ON")
    wait_calls(1)
    send(h, p, f"{BASE}/set/mute", " off\n")
    send(h, p, f"{BASE}/set/reload", "")
    send(h, p, f"{BASE}/set/reload", "PRESS")
    wait_calls(4)
    assert calls == [("mute", "ON"), ("mute", "OFF"), ("reload", ""), ("reload", "")]

    garbage = [
        (f"{BASE}/set/mute", b"maybe"),
        (f"{BASE}/set/mute", b"ON OFF"),
        (f"{BASE}/set/mute", b"\xff\xfe\x00"),
        (f"{BASE}/set/mute", b"ON" * 5000),
        (f"{BASE}/set/mute", b""),
        (f"{BASE}/set/reload", b"rm -rf /"),
        (f"{BASE}/set/shutdown", b"ON"),
    ]
    for topic, payload in garbage:
        send(h, p, topic, payload)
    send(h, p, f"{BASE}/set/mute", "OFF")  # sentinel: commands arrive in order, so the garbage was handled
    wait_calls(5)
    assert calls[4:] == [("mute", "OFF")]
    assert pub.stats.ignored_commands == len(garbage)

    # A retained reload is a command when it is sent, but must not fire again at every reconnect.
    send(h, p, f"{BASE}/set/reload", "RELOAD", retain=True)
    wait_calls(6)
    pub.stop()
    later: list[tuple[str, str]] = []
    pub2 = publishers(broker, tmp_path / "state", on_command=lambda n, v, t: later.append((n, v)))
    pub2.start()
    deadline = time.monotonic() + 15
    while pub2.stats.ignored_commands < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pub2.stats.ignored_commands == 1 and later == []
    send(h, p, f"{BASE}/set/reload", "", retain=True)  # clears the retained message (and is a reload)

    # the daemon reports the mute state back; it is retained
    live = recorders(broker, f"{BASE}/mute")
    pub2.set_muted(True)
    live.wait_until(lambda m: (f"{BASE}/mute", b"ON", False) in m, what="mute state")
    late = recorders(broker, f"{BASE}/mute")
    late.wait_until(lambda m: (f"{BASE}/mute", b"ON", True) in m, what="retained mute state")


def test_discovery_can_be_turned_off(broker, recorders, tmp_path: Path) -> None:
    rec = recorders(broker, ["homeassistant/#", f"{BASE}/status"])
    s = MqttSettings(host=broker.host, port=broker.port, discovery={"enabled": False})
    pub = Publisher(s, NODE, "Nursery", tmp_path / "state")
    try:
        pub.set_entities(RULES)
        pub.start()
        rec.wait_until(lambda m: any(p == b"online" for _, p, _ in m), what="online")
        pub.publish_state("fall", True)
        pub.stop()
        rec.wait_until(lambda m: any(p == b"offline" for _, p, _ in m), what="offline")
        assert not any(t.startswith("homeassistant/") for t, _, _ in rec.messages)
    finally:
        pub.stop()
