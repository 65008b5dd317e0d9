"""What was said stays out of the log at INFO: a transcript is logged as made, with its length; its words at DEBUG.

The events go through the daemon's MQTT sink to a real broker (the line is logged once the event is safe), and
the words must still reach MQTT and the page: only the log leaves them out.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from helpers.mqtt_clients import has_events, make_event, wait_for

from monitor.publish.publisher import Publisher
from monitor.publish.settings import MqttSettings
from monitor.publish.sink import MqttSink

NODE = "kitchen"
SAID = "please call my sister Anna at home"
MATCHED = "the door code is 4711"


def test_transcripts_are_not_logged_at_info(broker, recorders, tmp_path: Path, caplog) -> None:
    settings = MqttSettings.model_validate({"host": broker.host, "port": broker.port, "reconnect_min": 0.2,
                                            "reconnect_max": 1, "birth_timeout": 0.3})
    rec = recorders(broker, f"audio-monitor/{NODE}/#")
    publisher = Publisher(settings, NODE, "Kitchen", tmp_path / "state")
    publisher.start()
    try:
        sink = MqttSink(publisher)
        caplog.set_level(logging.DEBUG)
        sink.event(NODE, make_event("said-1", rule="speech", kind="text", score=None, lift=None, text=SAID))
        sink.event(NODE, make_event("code-1", rule="door", kind="match", score=None, lift=None, text=MATCHED))
        sink.event(NODE, make_event("fall-1", kind="on"))
        rec.wait_until(has_events(["said-1"], f"audio-monitor/{NODE}/speech/event"), what="the transcript's event")
        wait_for(lambda: publisher.outbox_depth == 0, what="the outbox to empty")
    finally:
        publisher.stop(timeout=1)
    assert json.loads(rec.payloads(f"audio-monitor/{NODE}/speech/event")[0])["text"] == SAID  # MQTT still has it

    mine = [r for r in caplog.records if r.name == "monitor.sinks"]
    info = [r.getMessage() for r in mine if r.levelno >= logging.INFO]
    debug = [r.getMessage() for r in mine if r.levelno == logging.DEBUG]
    assert not [line for line in info if "Anna" in line or "sister" in line or "4711" in line], info
    said = [line for line in info if "id=said-1" in line]
    code = [line for line in info if "id=code-1" in line]
    assert len(said) == 1 and f"text={len(SAID)} chars" in said[0], info  # that a transcript was made, its length
    assert len(code) == 1 and f"text={len(MATCHED)} chars" in code[0], info
    assert any("id=fall-1" in line and "score=0.910" in line for line in info), info  # the rest as before
    assert any("id=said-1" in line and repr(SAID) in line for line in debug), debug  # the words, at DEBUG only
    assert any("id=code-1" in line and repr(MATCHED) in line for line in debug), debug
