"""Descriptions and incidents with a served model (`backend: openai`): the description is the model's text
answer to `describe_prompt`, asked on the same window, and a one-room monitor publishes incidents too."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

from monitor.rules.schema import DESCRIBE_PROMPT
from tests.daemon_support import RATE, DaemonProcess, write_config
from tests.vllm_support import FakeServer, logprobs_answer

ASK = "Is glass breaking in this recording? Answer yes or no."
SAID = "A glass falls and shatters on a hard floor."


def _question(body: dict) -> str:
    return body["messages"][-1]["content"][1]["text"]


def _answer(body: dict) -> tuple[int, dict, float]:
    if _question(body) == DESCRIBE_PROMPT:
        return 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": SAID}}]}, 0.0
    return 200, logprobs_answer([("token_id:11", math.log(0.9)), ("token_id:21", math.log(0.1))]), 0.0


def test_a_served_model_describes_what_a_safety_rule_heard_and_one_room_publishes_its_incident(
        broker, subscriber_factory, tmp_path: Path) -> None:
    fake = FakeServer(_answer)
    sf.write(tmp_path / "room.wav", (np.random.default_rng(3).standard_normal(120 * RATE) * 0.1).astype(np.float32), RATE)
    rules = yaml.safe_dump({"rules": [{"id": "glass", "name": "Glass breaking", "ask": ASK, "device_class": "safety",
                                       "threshold": 0.5, "release": 0.4, "patience": 1, "hold": "60s",
                                       "cooldown": "0s", "gate": {"min_dbfs": -45}}]})
    config = write_config(tmp_path, tmp_path / "no-local-model", broker.port, source=f"file:{tmp_path / 'room.wav'}",
                          rules=rules, extra={"model": {"backend": "openai", "url": fake.url, "name": "fake",
                                                        "timeout": "5s"}, "log.level": "info"})
    sub = subscriber_factory(broker, ["am/#", "homeassistant/#"])
    daemon = DaemonProcess(config)
    try:
        on = json.loads(sub.wait_for(lambda t, p, r: t == "am/test_node/glass/event"
                                     and json.loads(p)["kind"] == "on", timeout=90)[1])
        described = json.loads(sub.wait_for(lambda t, p, r: t == "am/test_node/glass/event"
                                            and json.loads(p)["kind"] == "described", timeout=60)[1])
        first = json.loads(sub.wait_for(lambda t, p, r: t == "am/test_node/glass/incident"
                                        and not json.loads(p)["update"], timeout=30)[1])
        update = json.loads(sub.wait_for(lambda t, p, r: t == "am/test_node/glass/incident"
                                         and json.loads(p)["update"], timeout=30)[1])
        discovery = json.loads(sub.wait_for(lambda t, p, r: t == "homeassistant/device/test_node/config")[1])
    finally:
        code = daemon.stop()
        fake.close()
        print(daemon.output)  # shown when the test fails
    assert code == 0
    assert described["text"] == SAID and described["incident"] == on["incident"]
    assert first["incident"] == update["incident"] == on["incident"]
    assert first["room"] == "test_node" and [m["room"] for m in first["rooms"]] == ["test_node"]
    assert first["description"] is None and update["description"] == SAID
    assert discovery["cmps"]["glass_incident"]["state_topic"] == "am/test_node/glass/incident"
    # the description was asked once, on the served model, with the audio of a window
    descriptions = [b for b in fake.chats() if _question(b) == DESCRIBE_PROMPT]
    assert len(descriptions) == 1
    assert descriptions[0]["messages"][-1]["content"][0]["type"] == "input_audio"
    assert "Traceback" not in daemon.output
