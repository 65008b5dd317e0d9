"""The publisher's parts without a broker: outbox (real SQLite files), settings, topics, discovery."""

from __future__ import annotations

import logging
import sqlite3
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from monitor.config import load_config
from monitor.publish.client import PublisherError, read_password, tls_context
from monitor.publish.discovery import ComponentMemory, EntitySpec, build_payload
from monitor.publish.outbox import Outbox, OutboxError
from monitor.publish.settings import MqttSettings
from monitor.publish.topics import Topics
from monitor.yamlsource import ValidationFailed

# ---------------------------------------------------------------------------- outbox


def test_outbox_keeps_order_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path)
    seqs = [box.add("t/a", f"m{i}".encode(), f"id{i}") for i in range(5)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    box.remove(seqs[:2])
    box.close()

    again = Outbox(path)
    assert again.depth == 3
    rows = again.after(0, 10)
    assert [r.payload for r in rows] == [b"m2", b"m3", b"m4"]
    assert [r.ident for r in rows] == ["id2", "id3", "id4"]
    assert again.after(rows[0].seq, 1)[0].payload == b"m3"
    assert again._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again.close()


def test_outbox_never_reuses_a_number_after_running_empty(tmp_path: Path) -> None:
    # The publisher remembers the last number it handed out; a reused (smaller) number would be skipped.
    box = Outbox(tmp_path / "o.sqlite3")
    first = box.add("t", b"x")
    box.remove([first])
    assert box.depth == 0
    second = box.add("t", b"y")
    assert second > first
    assert [r.payload for r in box.after(first, 10)] == [b"y"]
    box.close()


def test_outbox_full_drops_oldest_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    box = Outbox(tmp_path / "o.sqlite3", max_rows=100)
    for i in range(103):
        box.add("t", f"{i}".encode(), f"id{i}")
    assert box.depth == 100
    assert box.dropped == 3
    assert [r.payload for r in box.after(0, 2)] == [b"3", b"4"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "outbox full" in r.getMessage()]
    assert [e.getMessage().split("event ")[1].split(" ")[0] for e in errors] == ["id0", "id1", "id2"]
    box.close()


def test_outbox_moves_a_damaged_file_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "outbox.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    box = Outbox(path)
    assert box.depth == 0
    box.add("t", b"kept")
    assert box.after(0, 5)[0].payload == b"kept"
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert aside and aside[0].read_bytes().startswith(b"this is not a database")
    assert any("damaged" in r.getMessage() and str(aside[0]) in r.getMessage() for r in caplog.records)
    box.close()


def test_outbox_closed_refuses_with_a_clear_error(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    box.close()
    with pytest.raises(OutboxError, match="closed"):
        box.add("t", b"x")


def test_outbox_in_an_unwritable_place(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutboxError, match="state_dir"):
        Outbox(blocker / "sub" / "outbox.sqlite3")


def test_outbox_rows_are_committed_for_other_readers(tmp_path: Path) -> None:
    # What a crash leaves behind is what another connection sees after `add` returns.
    path = tmp_path / "o.sqlite3"
    box = Outbox(path)
    box.add("t", b"durable")
    other = sqlite3.connect(path)
    assert other.execute("SELECT payload FROM outbox").fetchall() == [(b"durable",)]
    other.close()
    box.close()


# ---------------------------------------------------------------------------- settings


def test_settings_defaults() -> None:
    s = MqttSettings()
    assert (s.qos, s.keepalive, s.discovery.prefix, s.discovery.enabled) == (1, 30, "homeassistant", True)
    assert s.scores.enabled is False and s.level.enabled is True
    assert not s.tls.active


@pytest.mark.parametrize("bad", [
    {"topic_prefix": "a/+/b"}, {"topic_prefix": "a/#"}, {"topic_prefix": "a//b"}, {"topic_prefix": "/a"},
    {"discovery": {"prefix": "home+assistant"}},
    {"password_file": "/x", "password_env": "X", "username": "u"},
    {"password_env": "X"},
    {"tls": {"keyfile": "/k.pem"}},
    {"qos": 0},
    {"reconnect_min": "10s", "reconnect_max": "1s"},
    {"outbox": {"max_events": 5}},
    {"pasword_file": "/x"},
])
def test_settings_reject(bad: dict) -> None:
    with pytest.raises(ValidationError):
        MqttSettings.model_validate(bad)


def test_settings_in_a_config_file_report_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()  # the default `rules:`; load_config checks that it has a rule file
    (tmp_path / "rules" / "home.yaml").touch()
    cfg = tmp_path / "monitor.yaml"
    cfg.write_text(textwrap.dedent("""\
        node_id: kitchen
        mqtt:
          host: broker.lan
          topic_prefix: "home/+"
          tls:
            ca_file: ca.pem
    """))
    with pytest.raises(ValidationFailed) as err:
        load_config(cfg)
    text = str(err.value)
    assert f"{cfg}:4: mqtt.topic_prefix" in text

    cfg.write_text(textwrap.dedent("""\
        mqtt:
          username: monitor
          password_file: secrets/mqtt.pw
          tls: {ca_file: ca.pem}
    """))
    s = load_config(cfg).mqtt
    assert s.password_file == tmp_path / "secrets" / "mqtt.pw"
    assert s.tls.ca_file == tmp_path / "ca.pem" and s.tls.active


def test_password_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    assert read_password(MqttSettings(username="u", password_file=pw)) == "s3cret"
    monkeypatch.setenv("MQTT_PW", "from-env")
    assert read_password(MqttSettings(username="u", password_env="MQTT_PW")) == "from-env"
    assert read_password(MqttSettings(username="u")) is None
    with pytest.raises(PublisherError, match=r"mqtt.password_file .*missing.*cannot read"):
        read_password(MqttSettings(username="u", password_file=tmp_path / "missing"))
    monkeypatch.delenv("MQTT_PW")
    with pytest.raises(PublisherError, match="MQTT_PW is not set"):
        read_password(MqttSettings(username="u", password_env="MQTT_PW"))


def test_tls_with_a_missing_ca_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(PublisherError, match="mqtt.tls.ca_file"):
        tls_context(MqttSettings(tls={"ca_file": tmp_path / "nope.pem"}))
    assert tls_context(MqttSettings()) is None
    assert tls_context(MqttSettings(tls={"enabled": True})) is not None  # system CAs


# ---------------------------------------------------------------------------- topics


def test_topics_layout() -> None:
    t = Topics("audio-monitor", "kitchen")
    assert t.status == "audio-monitor/kitchen/status"
    assert t.rule_state("baby_crying") == "audio-monitor/kitchen/baby_crying/state"
    assert t.rule_event("fall") == "audio-monitor/kitchen/fall/event"
    assert t.command("mute") == "audio-monitor/kitchen/set/mute"
    assert t.discovery == "homeassistant/device/kitchen/config"
    assert t.ha_status == "homeassistant/status"


@pytest.mark.parametrize("rule", ["a/b", "+", "#", "a+", "", "x" * 65, "fall/../../other", "a b", "é"])
def test_topic_injection_is_refused(rule: str) -> None:
    t = Topics("audio-monitor", "kitchen")
    with pytest.raises(ValueError, match="cannot be used in an MQTT topic"):
        t.rule_event(rule)


@pytest.mark.parametrize("node", ["kit/chen", "#", "+", ""])
def test_bad_node_is_refused(node: str) -> None:
    with pytest.raises(ValueError):
        Topics("audio-monitor", node)


# ---------------------------------------------------------------------------- discovery payload

RULES = [
    EntitySpec("baby_crying", "Baby crying", "yes_no", device_class="sound", icon="mdi:baby-face-outline"),
    EntitySpec("speech", "Speech", "text"),
    EntitySpec("call_for_help", "Call for help", "match"),
]


def test_discovery_payload_has_every_entity() -> None:
    t = Topics("audio-monitor", "kitchen")
    p = build_payload(RULES, t, "Kitchen", "1.2.3", 1)
    assert p["dev"]["ids"] == ["audio_monitor_kitchen"] and p["dev"]["name"] == "Kitchen" and p["dev"]["sw"] == "1.2.3"
    assert p["o"]["name"] == "audio-monitor"
    c = p["cmps"]
    assert set(c) == {"baby_crying_state", "baby_crying_event", "speech_text", "speech_event", "call_for_help_event",
                      "baby_crying_enabled", "speech_enabled", "call_for_help_enabled",
                      "mute", "level", "reload", "microphone", "model"}
    assert c["baby_crying_state"]["p"] == "binary_sensor" and c["baby_crying_state"]["device_class"] == "sound"
    assert c["baby_crying_state"]["state_topic"] == t.rule_state("baby_crying")
    assert c["baby_crying_event"]["event_types"] == ["on", "off"]
    assert c["speech_text"]["p"] == "sensor" and c["speech_text"]["state_topic"] == t.rule_text("speech")
    assert c["speech_event"]["event_types"] == ["text"] and c["call_for_help_event"]["event_types"] == ["match"]
    assert c["mute"]["p"] == "switch" and c["mute"]["command_topic"] == t.command("mute")
    assert c["level"]["unit_of_measurement"] == "dBFS"
    mic = c["microphone"]  # ON while the monitor cannot hear
    assert mic["p"] == "binary_sensor" and mic["device_class"] == "problem" and mic["state_topic"] == t.hearing
    assert mic["value_template"] == "{{ value_json.problem }}" and mic["json_attributes_topic"] == t.hearing
    model = c["model"]  # ON while the model does not answer (model_failed)
    assert model["p"] == "binary_sensor" and model["device_class"] == "problem" and model["name"] == "Model"
    assert model["state_topic"] == t.model == "audio-monitor/kitchen/model" and model["json_attributes_topic"] == t.model
    for cid, comp in c.items():
        assert comp["availability_topic"] == t.status, cid
        assert comp["payload_available"] == "online" and comp["payload_not_available"] == "offline"
    ids = [comp["unique_id"] for comp in c.values()]
    assert len(set(ids)) == len(ids)


def test_discovery_rejects_duplicate_and_bad_ids(caplog: pytest.LogCaptureFixture) -> None:
    t = Topics("audio-monitor", "kitchen")
    with pytest.raises(ValueError, match="twice"):
        build_payload([RULES[0], RULES[0]], t, "K", "1", 1)
    with pytest.raises(ValueError, match="MQTT topic"):
        build_payload([EntitySpec("a/b", "x", "match")], t, "K", "1", 1)
    p = build_payload([EntitySpec("x", "X", "yes_no", device_class="screaming")], t, "K", "1", 1)
    assert "device_class" not in p["cmps"]["x_state"]
    assert any("screaming" in r.getMessage() for r in caplog.records)


def test_component_memory_keeps_tombstones_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "discovery.json"
    mem = ComponentMemory(path)
    assert mem.update({"a_state": "binary_sensor", "a_event": "event", "mute": "switch"}) == {}
    assert ComponentMemory(path).update({"mute": "switch"}) == {"a_state": "binary_sensor", "a_event": "event"}
    # re-adding a rule takes its components off the removal list
    assert ComponentMemory(path).update({"a_event": "event", "mute": "switch"}) == {"a_state": "binary_sensor"}
    path.write_text("{broken")
    assert ComponentMemory(path).update({"mute": "switch"}) == {}


def test_rule_file_entity_category_and_match_device_class_reach_discovery(tmp_path: Path) -> None:
    """What a rule file says about its Home Assistant entities is what discovery sends (both were dropped)."""
    from monitor.daemon import entity_specs
    from monitor.rules import load_rules

    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - {id: cough, ask: 'Is someone coughing?', device_class: sound, entity_category: diagnostic}\n"
        "  - {id: speech, answer: text, ask: 'What is said?', entity_category: diagnostic}\n"
        "  - {id: doorbell_words, from: speech, match: 'door', device_class: doorbell}\n"
        "  - {id: plain, from: speech, match: 'x'}\n")
    t = Topics("audio-monitor", "kitchen")
    c = build_payload(entity_specs(load_rules(rules)), t, "Kitchen", "1", 1)["cmps"]
    for cid in ("cough_state", "cough_event", "speech_text", "speech_event"):
        assert c[cid]["entity_category"] == "diagnostic", cid
    for cid in ("doorbell_words_event", "plain_event"):
        assert "entity_category" not in c[cid], cid
    assert c["cough_state"]["device_class"] == "sound" and "device_class" not in c["cough_event"]
    assert c["doorbell_words_event"]["device_class"] == "doorbell"
    assert "device_class" not in c["plain_event"]
