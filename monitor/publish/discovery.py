"""Home Assistant device-based MQTT discovery for one monitor.

One retained payload on `{discovery_prefix}/device/{node}/config` describes the device (`dev`), the
software that made the payload (`o`) and every entity (`cmps`):

- per yes_no rule: a `binary_sensor` (ON/OFF state) and an `event` entity (event types on/off);
- per text rule: a `sensor` holding the last answer and an `event` entity (event type text);
- per match rule: an `event` entity (event type match);
- per yes_no rule of any room, on the daemon's own device: an `event` entity "{rule} incident"
  (event type incident: one sound, every room that heard it);
- per rule of any kind: a `switch` "{name} enabled" (entity category config): OFF, the rule is not asked;
- a mute `switch`, a sound-level `sensor`, a rule-reload `button`, a `problem` binary_sensor
  "Microphone" that is ON while the monitor cannot hear (muted, capture lost, digital silence),
  and a `problem` binary_sensor "Model" that is ON while the model does not answer (model_failed).

Every component is bound to the monitor's availability topic. Home Assistant keeps a component
that is merely left out of a later payload; it removes one that is sent with nothing but its
platform (`{"p": "binary_sensor"}`). The components ever published are therefore remembered in
`state_dir/discovery.json`, and those of removed rules keep being sent as such tombstones, so a
Home Assistant that was offline during the change still removes them when it reads the payload.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from monitor.publish.topics import Topics, check_segment
from monitor.rules.schema import BINARY_SENSOR_CLASSES  # anything else makes Home Assistant reject the entity
from monitor.rules.schema import EVENT_CLASSES
from monitor.rules.schema import RuleKind as EntityKind

log = logging.getLogger(__name__)

EVENT_TYPES: dict[str, list[str]] = {"yes_no": ["on", "off"], "text": ["text"], "match": ["match"]}

Layout = Literal["single", "room", "daemon"]
"""single: a one-microphone monitor (rules and controls on one device); room: one room of a
whole-home daemon; daemon: the hub device of such a daemon (whole-home mute, reload)."""

SENSOR_TEXT_MAX = 255  # Home Assistant refuses a sensor state longer than this


@dataclass(frozen=True)
class EntitySpec:
    """What the daemon tells the publisher about one rule, for Home Assistant."""

    id: str  # the rule id; names topics and entity unique ids
    name: str
    kind: EntityKind
    device_class: str | None = None  # yes_no: the binary_sensor's class; match: the event entity's class
    icon: str | None = None  # e.g. "mdi:baby-face-outline"
    entity_category: str | None = None  # "diagnostic": every entity of the rule is filed under Diagnostic
    describe: bool = False  # yes_no: its ON events are followed by a `described` event

    @classmethod
    def of(cls, rule: Any) -> EntitySpec:
        """The entity spec of a validated rule (any kind)."""
        return cls(id=rule.id, name=rule.name, kind=rule.kind, device_class=rule.device_class, icon=rule.icon,
                   entity_category=rule.entity_category, describe=bool(getattr(rule, "describes", False)))


def _availability(topics: Topics) -> dict[str, Any]:
    return {"availability_topic": topics.status, "payload_available": "online", "payload_not_available": "offline"}


def _room_availability(daemon: Topics, room: Topics) -> dict[str, Any]:
    """Available while the daemon is online *and* the room's capture works: a dead camera greys out its room alone."""
    return {"availability": [
        {"topic": daemon.status, "payload_available": "online", "payload_not_available": "offline"},
        {"topic": room.hearing, "value_template": "{{ value_json.capture }}", "payload_available": "ok",
         "payload_not_available": "lost"},
    ], "availability_mode": "all"}


def _unique(topics: Topics, component: str) -> str:
    # node ids are [a-z0-9_], so "-" separates node and component without ambiguity
    return f"audio_monitor-{topics.node}-{component}"


def rule_components(spec: EntitySpec, topics: Topics, qos: int,
                    avail: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The components of one rule, keyed by component id."""
    check_segment(spec.id, "rule id")
    if spec.kind not in EVENT_TYPES:
        raise ValueError(f"rule {spec.id}: unknown entity kind {spec.kind!r} (yes_no, text or match)")
    avail = avail if avail is not None else _availability(topics)
    out: dict[str, dict[str, Any]] = {}
    icon = {"icon": spec.icon} if spec.icon else {}
    if spec.kind == "yes_no":
        comp: dict[str, Any] = {
            "p": "binary_sensor", "name": spec.name, "unique_id": _unique(topics, f"{spec.id}_state"),
            "state_topic": topics.rule_state(spec.id), "payload_on": "ON", "payload_off": "OFF", "qos": qos, **avail, **icon,
        }
        comp.update(_device_class(spec, BINARY_SENSOR_CLASSES, "binary_sensor"))
        out[f"{spec.id}_state"] = comp
    if spec.kind == "text":
        out[f"{spec.id}_text"] = {
            "p": "sensor", "name": spec.name, "unique_id": _unique(topics, f"{spec.id}_text"),
            "state_topic": topics.rule_text(spec.id), "qos": qos, **avail, **(icon or {"icon": "mdi:text-box-outline"}),
        }
    event_name = spec.name if spec.kind == "match" else f"{spec.name} event"
    event: dict[str, Any] = {
        "p": "event", "name": event_name, "unique_id": _unique(topics, f"{spec.id}_event"),
        "state_topic": topics.rule_event(spec.id), "event_types": _event_types(spec), "qos": qos, **avail, **icon,
    }
    if spec.kind == "match":  # a match rule's class is its event entity's (button, doorbell, motion)
        event.update(_device_class(spec, EVENT_CLASSES, "event"))
    out[f"{spec.id}_event"] = event
    if spec.entity_category:
        for component in out.values():
            component["entity_category"] = spec.entity_category
    return out


def _event_types(spec: EntitySpec) -> list[str]:
    return EVENT_TYPES[spec.kind] + (["described"] if spec.kind == "yes_no" and spec.describe else [])


def incident_components(specs: list[EntitySpec], topics: Topics, qos: int) -> dict[str, dict[str, Any]]:
    """The daemon's own device: an `event` entity per yes_no rule of any room, fed by {prefix}/{node}/{rule}/incident."""
    return {f"{spec.id}_incident": {
        "p": "event", "name": f"{spec.name} incident", "unique_id": _unique(topics, f"{spec.id}_incident"),
        "state_topic": topics.rule_incident(check_segment(spec.id, "rule id")), "event_types": ["incident"],
        "icon": spec.icon or "mdi:home-sound-in", "qos": qos, **_availability(topics),
    } for spec in specs if spec.kind == "yes_no"}


def rule_switch(spec: EntitySpec, topics: Topics, qos: int, avail: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The rule's on/off switch, keyed by component id.

    Available whenever the daemon is online (`avail`), like the mute switch: a rule of a room whose
    capture is lost can still be switched.
    """
    return {f"{spec.id}_enabled": {
        "p": "switch", "name": f"{spec.name} enabled", "unique_id": _unique(topics, f"{spec.id}_enabled"),
        "command_topic": topics.rule_command(spec.id), "state_topic": topics.rule_enabled(spec.id),
        "payload_on": "ON", "payload_off": "OFF", "icon": "mdi:toggle-switch-outline", "entity_category": "config",
        "qos": qos, **avail,
    }}


def _device_class(spec: EntitySpec, allowed: tuple[str, ...], platform: str) -> dict[str, str]:
    """`{"device_class": ...}` when the rule names one Home Assistant accepts on `platform`, else nothing."""
    if not spec.device_class:
        return {}
    if spec.device_class in allowed:
        return {"device_class": spec.device_class}
    log.warning("rule %s: device_class %r is not a Home Assistant %s class; left out (use one of %s)",
                spec.id, spec.device_class, platform, ", ".join(sorted(allowed)))
    return {}


def fixed_components(topics: Topics, qos: int, layout: Layout = "single",
                     daemon: Topics | None = None) -> dict[str, dict[str, Any]]:
    """The controls and diagnostics of a device: mute, Microphone and Model problem sensors, sound level, reload.

    A single monitor has all five. A room has its mute, Microphone and level (the level only while
    its capture works; mute and Microphone whenever the daemon is online, so a dead room can still
    be seen and muted); the daemon's hub device has the whole-home mute, the reload button and the
    Model sensor (one model answers every room).
    """
    daemon = daemon or topics
    avail = _availability(daemon)
    out = _fixed(topics, qos, avail, _room_availability(daemon, topics) if layout == "room" else avail)
    if layout == "room":
        del out["reload"], out["model"]
    elif layout == "daemon":
        out = {"mute": {**out["mute"], "name": "Mute all rooms"}, "reload": out["reload"], "model": out["model"]}
    return out


def _fixed(topics: Topics, qos: int, avail: dict[str, Any], level_avail: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        "mute": {
            "p": "switch", "name": "Mute", "unique_id": _unique(topics, "mute"),
            "command_topic": topics.command("mute"), "state_topic": topics.mute_state,
            "payload_on": "ON", "payload_off": "OFF", "icon": "mdi:microphone-off", "entity_category": "config",
            "qos": qos, **avail,
        },
        "microphone": {
            "p": "binary_sensor", "name": "Microphone", "unique_id": _unique(topics, "microphone"),
            "device_class": "problem", "state_topic": topics.hearing, "value_template": "{{ value_json.problem }}",
            "json_attributes_topic": topics.hearing, "payload_on": "ON", "payload_off": "OFF",
            "entity_category": "diagnostic", "qos": qos, **avail,
        },
        "model": {
            "p": "binary_sensor", "name": "Model", "unique_id": _unique(topics, "model"),
            "device_class": "problem", "state_topic": topics.model, "value_template": "{{ value_json.problem }}",
            "json_attributes_topic": topics.model, "payload_on": "ON", "payload_off": "OFF",
            "entity_category": "diagnostic", "qos": qos, **avail,
        },
        "level": {
            "p": "sensor", "name": "Sound level", "unique_id": _unique(topics, "level"),
            "state_topic": topics.level, "unit_of_measurement": "dBFS", "state_class": "measurement",
            "suggested_display_precision": 1, "icon": "mdi:waveform", "entity_category": "diagnostic", **level_avail,
        },
        "reload": {
            "p": "button", "name": "Reload rules", "unique_id": _unique(topics, "reload"),
            "command_topic": topics.command("reload"), "payload_press": "PRESS", "icon": "mdi:reload",
            "entity_category": "config", "qos": qos, **avail,
        },
    }


def build_payload(
    entities: list[EntitySpec], topics: Topics, node_name: str, version: str, qos: int,
    tombstones: dict[str, str] | None = None, *, layout: Layout = "single", daemon: Topics | None = None,
    incidents: list[EntitySpec] | None = None,
) -> dict[str, Any]:
    """The device discovery payload; `tombstones` (component id -> platform) are sent for removal.

    `daemon`: the daemon's own topics (its status is the Last Will), for a room's payload.
    `incidents`: the rules whose incidents this device (single, or the daemon's) has an event entity for.
    """
    daemon = daemon or topics
    seen: set[str] = set()
    cmps: dict[str, dict[str, Any]] = {}
    avail = _room_availability(daemon, topics) if layout == "room" else _availability(daemon)
    for spec in entities:
        if spec.id in seen:
            raise ValueError(f"rule id {spec.id!r} appears twice; rule ids must be unique")
        seen.add(spec.id)
        cmps.update(rule_components(spec, topics, qos, avail))
        cmps.update(rule_switch(spec, topics, qos, _availability(daemon)))
    cmps.update(fixed_components(topics, qos, layout, daemon))
    if layout != "room":
        cmps.update(incident_components(incidents or [], topics, qos))
    for comp_id, platform in sorted((tombstones or {}).items()):
        if comp_id not in cmps:
            cmps[comp_id] = {"p": platform}
    dev: dict[str, Any] = {
        "ids": [f"audio_monitor_{topics.node}"],
        "name": node_name,
        "mf": "audio-monitor",
        "mdl": "audio-monitor",
        "sw": version,
    }
    if layout == "room":
        dev["via_device"] = f"audio_monitor_{daemon.node}"
        dev["sa"] = node_name  # suggested area: a room device belongs in that room
    return {"dev": dev, "o": {"name": "audio-monitor", "sw": version}, "cmps": cmps}


class ComponentMemory:
    """Which components were published, and the removed ones still sent as tombstones."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.components: dict[str, str] = {}
        self.removed: dict[str, str] = {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self.components = {str(k): str(v) for k, v in dict(data.get("components", {})).items()}
            self.removed = {str(k): str(v) for k, v in dict(data.get("removed", {})).items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("%s is unreadable (%s); Home Assistant entities of rules removed earlier may stay until "
                        "deleted by hand", self.path, exc)

    def update(self, current: dict[str, str]) -> dict[str, str]:
        """Record the current components (id -> platform); return the tombstones to send."""
        for comp_id, platform in self.components.items():
            if comp_id not in current:
                self.removed[comp_id] = platform
        for comp_id in current:
            self.removed.pop(comp_id, None)
        self.components = dict(current)
        self._save()
        return dict(self.removed)

    def _save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"components": self.components, "removed": self.removed}, indent=1, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot save %s (%s); entities of rules removed before a restart may stay in Home Assistant",
                        self.path, exc)
