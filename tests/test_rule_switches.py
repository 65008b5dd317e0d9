"""Rules switched on and off by a person (Home Assistant's switch, the page): the rule engine's part, the
publisher's topics and discovery, and the daemon end to end (a backend that counts the questions it is asked)."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from helpers.mqtt_clients import send
from test_rules_support import T0, answer, engine_for, kinds, window

from monitor.publish.discovery import EntitySpec
from monitor.publish.publisher import Publisher
from monitor.publish.settings import MqttSettings
from monitor.windows import Utterance
from tests.daemon_support import RATE, DaemonProcess, write_config
from tests.vllm_support import FakeServer, logprobs_answer

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


# ---------------------------------------------------------------------------- the daemon, end to end

ASK = {rule: f"Is there a {rule} sound in this recording? Answer yes or no." for rule in ("loud", "other", "extra")}


def _rules(*ids: str) -> str:
    return yaml.safe_dump({"rules": [
        {"id": rule, "name": f"{rule.title()} sound", "ask": ASK[rule], "threshold": 0.5, "release": 0.4, "patience": 1,
         "hold": "0s", "cooldown": "0s", "gate": {"min_dbfs": -45}} for rule in ids]})


def _by_question(body: dict) -> str:
    return body["messages"][-1]["content"][1]["text"]


def test_a_rule_switched_off_over_mqtt_is_not_asked_stays_off_across_a_restart_and_a_reload(broker, subscriber_factory,
                                                                                           tmp_path: Path) -> None:
    """The backend (an OpenAI-compatible server that counts what it is asked, one request per question) is asked
    the rule's question until it is switched off, never while off (through a restart and a reload), again once on."""
    fake = FakeServer(lambda body: (200, logprobs_answer([("token_id:11", math.log(0.9)), ("token_id:21", math.log(0.1))]),
                                    0.0))
    asked = lambda rule: sum(1 for b in fake.chats() if _by_question(b) == ASK[rule])  # noqa: E731
    rng = np.random.default_rng(11)
    sf.write(tmp_path / "room.wav", (rng.standard_normal(600 * RATE) * 0.1).astype(np.float32), RATE)
    config = write_config(tmp_path, tmp_path / "no-local-model", broker.port, source=f"file:{tmp_path / 'room.wav'}",
                          rules=_rules("loud", "other", "extra"),
                          extra={"model": {"backend": "openai", "url": fake.url, "name": "fake", "timeout": "5s"},
                                 "windows.hop": "500ms", "log.level": "info"})
    sub = subscriber_factory(broker, ["am/#", "homeassistant/#"])
    switch = lambda value: sub.client.publish("am/test_node/loud/set/enabled", value, qos=1).wait_for_publish(5)  # noqa: E731

    def quiet_while_other_is_asked(times: int) -> None:
        """`loud` is not asked while `other` is asked `times` times (after one round for answers in flight)."""
        wait_asked("other", asked("other") + 2)
        before = asked("loud")
        wait_asked("other", asked("other") + times)
        assert asked("loud") == before, "a rule switched off was asked"

    def wait_asked(rule: str, n: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while asked(rule) < n:
            assert time.monotonic() < deadline, f"{rule} asked {asked(rule)} time(s), waited for {n}"
            time.sleep(0.1)

    daemon = DaemonProcess(config)
    try:
        for rule in ("loud", "other"):
            sub.wait_for(lambda t, p, r, rule=rule: t == f"am/test_node/{rule}/state" and p == b"ON", timeout=60)
        sub.wait_for(lambda t, p, r: t == "am/test_node/loud/enabled" and p == b"ON")
        discovery = json.loads(sub.wait_for(lambda t, p, r: t == "homeassistant/device/test_node/config")[1])
        assert {cid for cid, c in discovery["cmps"].items() if c["p"] == "switch"} == {
            "loud_enabled", "other_enabled", "extra_enabled", "mute"}
        assert discovery["cmps"]["loud_enabled"]["name"] == "Loud sound enabled"

        mark = len(sub.messages)
        switch(b"OFF")
        off = sub.wait_for(lambda t, p, r: t == "am/test_node/loud/event" and json.loads(p)["kind"] == "off", after=mark)
        assert json.loads(off[1])["reason"] == "disabled"
        sub.wait_for(lambda t, p, r: t == "am/test_node/loud/state" and p == b"OFF", after=mark)
        sub.wait_for(lambda t, p, r: t == "am/test_node/loud/enabled" and p == b"OFF" and r is False, after=mark)
        daemon.wait_log("rule loud switched off: not asked until switched on again")
        quiet_while_other_is_asked(3)
        assert daemon.stop() == 0, daemon.output
        assert (tmp_path / "state" / "rules-off").read_text() == "loud\n"

        # a restart: still off (the retained switch says so again), still not asked
        mark = len(sub.messages)
        daemon = DaemonProcess(config)
        daemon.wait_log("rule(s) switched off (as left before the restart): loud", timeout=60)
        sub.wait_for(lambda t, p, r: t == "am/test_node/loud/enabled" and p == b"OFF", after=mark, timeout=60)
        quiet_while_other_is_asked(3)
        # a reload that removes `extra`: its switch leaves Home Assistant; `loud` stays off
        (tmp_path / "rules" / "rules.yaml").write_text(_rules("loud", "other"))
        daemon.wait_log("reloaded 2 rule(s)", timeout=30)
        reloaded = sub.wait_for(lambda t, p, r: t == "homeassistant/device/test_node/config"
                                and json.loads(p)["cmps"].get("extra_enabled") == {"p": "switch"}, after=mark)
        assert json.loads(reloaded[1])["cmps"]["loud_enabled"]["command_topic"] == "am/test_node/loud/set/enabled"
        quiet_while_other_is_asked(3)
        assert not [1 for t, p, _ in sub.messages[mark:] if t == "am/test_node/loud/state" and p == b"ON"]

        # on again: asked again, and ON again
        mark, before = len(sub.messages), asked("loud")
        switch(b"ON")
        sub.wait_for(lambda t, p, r: t == "am/test_node/loud/enabled" and p == b"ON", after=mark)
        wait_asked("loud", before + 2)
        sub.wait_for(lambda t, p, r: t == "am/test_node/loud/state" and p == b"ON", after=mark, timeout=15)
    finally:
        code = daemon.stop()
        fake.close()
        print(daemon.output)  # shown when the test fails
    assert code == 0
    assert (tmp_path / "state" / "rules-off").read_text() == ""
    assert "Traceback" not in daemon.output
