"""The notification blueprint (contrib/home-assistant), loaded and run by Home Assistant's own code.

Home Assistant lives in its own environment (`.venv-ha`, made by `make test`); `helpers/ha_blueprint.py`
runs there: it reads the blueprint with Home Assistant's YAML loader, checks it against the blueprint
schema, substitutes the inputs, validates the automation and runs its condition and actions in a real
Home Assistant core on the incident messages below, recording the notify service calls.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import REPO, need

HA_PYTHON = REPO / ".venv-ha" / "bin" / "python"
BLUEPRINT = REPO / "contrib" / "home-assistant" / "audio_monitor_incident_notify.yaml"
TOPIC = "audio-monitor/audio_monitor/fall/incident"

FIRST = {  # the contract of {prefix}/{node}/{rule}/incident
    "incident": "4f1c2a", "rule": "fall", "rule_name": "Fall detection", "room": "kitchen", "room_name": "Kitchen",
    "time": "2026-12-06T03:12:05+00:00", "score": 0.93, "level": -23.1,
    "rooms": [{"room": "kitchen", "room_name": "Kitchen", "score": 0.93, "level": -23.1, "event": "e1"},
              {"room": "hall", "room_name": "Hall", "score": 0.71, "level": -31.0, "event": "e2"}],
    "description": None, "clip": "/var/lib/audio-monitor/clips/kitchen/20261206-031205-fall.wav",
    "clip_url": "https://monitor.example/clips/kitchen/20261206-031205-fall.wav", "update": False,
    "event_type": "incident"}
UPDATE = {**FIRST, "description": "A loud crash, then someone groaning.", "update": True}
# the label buttons: the attributed room's event, on that room's rule's set/label topic under the same prefix
BUTTONS = [{"action": "AUDIO_MONITOR_LABEL|right|audio-monitor/kitchen/fall/set/label|e1", "title": "Right"},
           {"action": "AUDIO_MONITOR_LABEL|wrong|audio-monitor/kitchen/fall/set/label|e1", "title": "False alarm"}]


def run_blueprint(cases: list[dict], tmp_path: Path) -> dict:
    need(HA_PYTHON.exists(), "the Home Assistant environment .venv-ha (`make test` creates it)")
    cases_file = tmp_path / "cases.json"
    cases_file.write_text(json.dumps(cases))
    done = subprocess.run([str(HA_PYTHON), str(REPO / "tests" / "helpers" / "ha_blueprint.py"), str(BLUEPRINT),
                           str(cases_file)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_home_assistant_loads_the_blueprint_and_notifies_once_per_incident(tmp_path: Path) -> None:
    cases = [
        {"input": {"notify_service": "notify.phones"}, "topic": TOPIC, "payload": FIRST},
        {"input": {"notify_service": "notify.phones"}, "topic": TOPIC, "payload": UPDATE},
        {"input": {}, "phone": "Pixel 7", "topic": TOPIC, "payload": {**UPDATE, "clip_url": None}},
        {"input": {"notify_service": "notify.phones"}, "topic": TOPIC, "payload": "not json"},
        {"input": {"notify_service": "notify.phones"}, "topic": TOPIC, "payload": {"kind": "on"}},
    ]
    out = run_blueprint(cases, tmp_path)
    assert out["name"] == "Audio monitor incident notification" and out["blueprint_errors"] is None
    assert out["inputs"] == ["incident_topic", "label_buttons", "notify_device", "notify_service"]
    first, update, phone, garbage, other = out["cases"]
    assert all(case["topic_matches"] for case in out["cases"])  # the default topic takes every rule's incidents

    (call,) = first["calls"]
    assert call["service"] == "notify.phones" and call["title"] == "Fall detection in Kitchen"
    assert call["message"] == "Heard in Kitchen. Also heard in Hall. At 03:12:05."
    clip = FIRST["clip_url"]
    assert call["data"] == {"tag": "4f1c2a", "group": "audio-monitor", "url": clip, "clickAction": clip,
                            "actions": [{"action": "URI", "title": "Play the clip", "uri": clip}, *BUTTONS]}
    # the update carries the description, under the same tag: it replaces the first notification
    (call,) = update["calls"]
    assert call["message"] == "A loud crash, then someone groaning. Also heard in Hall. At 03:12:05."
    assert call["data"]["tag"] == "4f1c2a" and call["data"]["url"] == clip
    # a phone chosen as the device: its companion-app notify service; no clip URL, no link
    (call,) = phone["calls"]
    assert call["service"] == "notify.mobile_app_pixel_7"
    assert call["data"] == {"tag": "4f1c2a", "group": "audio-monitor", "actions": BUTTONS}
    # anything that is not an incident notifies nobody
    assert garbage == {"topic_matches": True, "condition": False, "calls": []}
    assert other == {"topic_matches": True, "condition": False, "calls": []}


def test_the_label_buttons_send_the_label_to_the_monitor_even_after_a_restart(tmp_path: Path) -> None:
    """A button pressed comes back as the companion app's event; everything the label needs is in its action, so the
    automation publishes it as the monitor's set/label takes it (tests/test_labels_live.py: saved, also after the
    monitor restarted)."""
    given = {"notify_service": "notify.phones"}
    cases = [
        {"input": given, "action": BUTTONS[1]["action"]},
        {"input": given, "action": BUTTONS[0]["action"]},
        {"input": given, "action": "SOME_OTHER_APP_ACTION"},  # another automation's button: not ours
        {"input": given, "action": "AUDIO_MONITOR_LABEL|maybe|audio-monitor/kitchen/fall/set/label|e1"},
        {"input": {**given, "label_buttons": False}, "topic": TOPIC, "payload": FIRST},
        {"input": given, "topic": TOPIC, "payload": {**FIRST, "clip": None, "clip_url": None}},
    ]
    wrong, right, other, maybe, no_buttons, no_clip = run_blueprint(cases, tmp_path)["cases"]
    (call,) = wrong["calls"]
    assert call["service"] == "mqtt.publish" and call["topic"] == "audio-monitor/kitchen/fall/set/label"
    assert json.loads(call["payload"]) == {"event": "e1", "verdict": "wrong"} and call["qos"] == 1
    (call,) = right["calls"]
    assert json.loads(call["payload"]) == {"event": "e1", "verdict": "right"}
    assert other == {"topic_matches": True, "condition": False, "calls": []}
    assert maybe == {"topic_matches": True, "condition": False, "calls": []}
    # switched off: the clip's link only; no clip kept: nothing to label, so no buttons
    (call,) = no_buttons["calls"]
    assert call["data"]["actions"] == [{"action": "URI", "title": "Play the clip", "uri": FIRST["clip_url"]}]
    (call,) = no_clip["calls"]
    assert call["data"] == {"tag": "4f1c2a", "group": "audio-monitor"}
