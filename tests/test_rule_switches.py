"""Rules switched on and off by a person (Home Assistant's switch, the page): the rule engine's part, the
publisher's topics and discovery, and the daemon end to end (a backend that counts the questions it is asked)."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest
import yaml
from helpers.mqtt_clients import send
from test_rules_support import T0, answer, engine_for, kinds, window

from monitor.publish.discovery import EntitySpec
from monitor.publish.publisher import Publisher
from monitor.publish.settings import MqttSettings
from monitor.windows import Utterance

TWO = yaml.safe_dump({"rules": [
    {"id": "a", "ask": "A? Answer yes or no.", "threshold": 0.7, "release": 0.5, "hold": "0s", "cooldown": "0s"},
    {"id": "b", "ask": "B? Answer yes or no.", "threshold": 0.7, "release": 0.5, "hold": "0s", "cooldown": "0s"},
    {"id": "words", "answer": "text", "ask": "What is said?"},
]})


def test_a_rule_switched_off_is_not_asked_goes_off_and_comes_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="monitor.rules")
    engine = engine_for(tmp_path, TWO)
    w = window(T0, 0)
    assert kinds(engine.update(w, answer(engine, w, 0.9))) == [("a", "on"), ("b", "on")]
    in_flight = window(T0 + 2, 1)
    planned_before = answer(engine, in_flight, 0.9)  # asked about `a` before it was switched off

    (off,) = engine.switch("a", False, T0 + 2.5)
    assert (off.rule_id, off.kind, off.reason, off.ts) == ("a", "off", "disabled", T0 + 2.5)
    assert engine.switch("a", False, T0 + 2.6) == []  # already off: nothing more
    assert engine.switched_off == {"a"} and engine.on_states() == {"a": False, "b": True}
    assert engine.update(in_flight, planned_before) == []  # its answer is not decided for `a` any more
    plan = engine.plan(window(T0 + 4, 2))
    assert [q.key for q in plan.questions] == ["b"]  # `a` leaves the request: the model is not asked

    # `b` (ON) goes OFF too; a text rule has no state to end, and its utterances are not asked either
    assert kinds(engine.switch("b", False, T0 + 5)) == [("b", "off")]
    assert engine.switch("words", False, T0 + 5) == []
    speech = window(T0 + 6, 3, utterances=[Utterance(1000, 20000)])
    assert engine.plan(speech).questions == () and engine.plan(speech).texts == ()

    # on again: an answer planned while it was off is not taken for it (no "no score came back"),
    # the next one is, and it turns ON again
    w = window(T0 + 8, 4)
    planned_off = answer(engine, w, 0.9)
    assert engine.switch("a", True, T0 + 8.5) == [] and engine.switched_off == {"b", "words"}
    assert engine.update(w, planned_off) == []
    assert "no score came back" not in caplog.text
    w = window(T0 + 10, 5)
    assert kinds(engine.update(w, answer(engine, w, 0.9))) == [("a", "on")]

    # a reload keeps the switches (ids, even of a rule that is gone and may come back)
    engine.swap(engine.ruleset)
    assert engine.switched_off == {"b", "words"}
    assert [q.key for q in engine.plan(window(T0 + 12, 6)).questions] == ["a"]


# ---------------------------------------------------------------------------- the publisher: discovery and commands

RULES = [EntitySpec("fall", "Fall detection", "yes_no", device_class="safety", entity_category="diagnostic"),
         EntitySpec("speech", "Speech", "text"), EntitySpec("help", "Call for help", "match")]


def test_every_rule_of_every_room_has_a_switch_and_its_commands_reach_that_room(broker, recorders, tmp_path: Path) -> None:
    calls: list[tuple[str, str, str]] = []
    seen = threading.Condition()

    def on_command(name: str, value: str, target: str) -> None:
        with seen:
            calls.append((name, value, target))
            seen.notify_all()

    rec = recorders(broker, ["homeassistant/device/+/config", "am/#"])
    s = MqttSettings(host=broker.host, port=broker.port, topic_prefix="am", reconnect_min=0.2, reconnect_max=1)
    pub = Publisher(s, "home", "Home", tmp_path / "state", on_command=on_command,
                    rooms=[("kitchen", "Kitchen"), ("hall", "Hall")])
    try:
        pub.node.set_entities([])  # the hub device, as the daemon's MQTT sink makes it
        for room in ("kitchen", "hall"):
            pub.room(room).set_entities(RULES)
        pub.room("hall").set_enabled("fall", False)
        pub.start()
        config = {room: f"homeassistant/device/{room}/config" for room in ("home", "kitchen", "hall")}
        rec.wait_until(lambda m: all(rec.payloads(t) for t in config.values()) and rec.payloads("am/hall/fall/enabled"),
                       what="discovery of every device")
        assert not any(c["p"] == "switch" and c["name"].endswith(" enabled")
                       for c in json.loads(rec.payloads(config["home"])[-1])["cmps"].values())  # the hub has no rules
        for room in ("kitchen", "hall"):
            cmps = json.loads(rec.payloads(config[room])[-1])["cmps"]
            switches = {cid: c for cid, c in cmps.items() if cid.endswith("_enabled")}
            assert set(switches) == {"fall_enabled", "speech_enabled", "help_enabled"}, room
            fall = switches["fall_enabled"]
            assert fall == {
                "p": "switch", "name": "Fall detection enabled", "unique_id": f"audio_monitor-{room}-fall_enabled",
                "command_topic": f"am/{room}/fall/set/enabled", "state_topic": f"am/{room}/fall/enabled",
                "payload_on": "ON", "payload_off": "OFF", "icon": "mdi:toggle-switch-outline",
                "entity_category": "config", "qos": 1, "availability_topic": "am/home/status",
                "payload_available": "online", "payload_not_available": "offline"}  # switchable while its capture is lost
            assert cmps["fall_state"]["entity_category"] == "diagnostic"  # the rule's own category stays on its entities
        assert rec.payloads("am/hall/fall/enabled") == [b"OFF"]

        h, p = broker.host, broker.port
        send(h, p, "am/hall/fall/set/enabled", "OFF")
        send(h, p, "am/kitchen/speech/set/enabled", " on\n")
        for topic, payload in [("am/hall/fall/set/enabled", b"maybe"), ("am/hall/fall/set/enabled", b""),
                               ("am/nowhere/fall/set/enabled", b"OFF"), ("am/hall/set/enabled", b"OFF")]:
            send(h, p, topic, payload)
        send(h, p, "am/kitchen/help/set/enabled", "OFF")  # sentinel: commands arrive in order
        with seen:
            assert seen.wait_for(lambda: len(calls) >= 3, timeout=15), calls
        assert calls == [("enabled", "OFF", "hall/fall"), ("enabled", "ON", "kitchen/speech"),
                         ("enabled", "OFF", "kitchen/help")]
        assert pub.stats.ignored_commands == 3  # bad payloads and a room-level `set/enabled`; another node is not ours

        # a rule removed from the file loses its switch: its components go as removals
        pub.room("hall").set_entities(RULES[1:])
        rec.wait_until(lambda m: len(rec.payloads(config["hall"])) >= 2, what="hall's discovery after the removal")
        cmps = json.loads(rec.payloads(config["hall"])[-1])["cmps"]
        assert cmps["fall_enabled"] == {"p": "switch"} and cmps["fall_state"] == {"p": "binary_sensor"}
        assert cmps["speech_enabled"]["p"] == "switch" and "unique_id" in cmps["speech_enabled"]
    finally:
        pub.stop(timeout=1)
