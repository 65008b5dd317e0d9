"""One room's topics and Home Assistant device on the publisher's one MQTT connection.

A daemon has one connection (one Last Will, on `{prefix}/{node}/status`) and one outbox, and a
`RoomChannel` per source: `{prefix}/{room}/...` as a node had them, and a Home Assistant device
named after the room. With a single `audio:` section the one room *is* the node (layout
`single`): the same topics and discovery as a one-microphone monitor always had. With `sources:`
the node becomes a hub device (layout `daemon`: the whole-home mute and the reload button) and
each room a device of its own (layout `room`), whose rule entities are available only while the
daemon is online and that room's capture works.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from monitor import __version__
from monitor.events import Event
from monitor.publish.discovery import SENSOR_TEXT_MAX, ComponentMemory, EntitySpec, Layout, build_payload
from monitor.publish.settings import MqttSettings
from monitor.publish.store import Route
from monitor.publish.topics import Topics


class Connection(Protocol):
    """What a room's channel needs of the publisher that owns the one connection (`Publisher`)."""

    settings: MqttSettings
    state_dir: Path
    topics: Topics  # the daemon's (node's) topics: its status and Last Will

    def send_event(self, topic: str, payload: bytes, event: Event) -> Route: ...

    def set_retained(self, topic: str, payload: bytes) -> None: ...

    def note_removed(self, room_id: str, components: list[str]) -> None: ...

    def publish_low(self, topic: str, interval: float, make: Callable[[], bytes]) -> None: ...


class RoomChannel:
    """Publishes what one room hears; every call only queues work for the publisher's worker."""

    def __init__(self, publisher: Connection, room_id: str, name: str, layout: Layout):
        self.publisher = publisher
        self.id = room_id
        self.name = name
        self.layout = layout
        s = publisher.settings
        self.topics = Topics(s.topic_prefix, room_id, s.discovery.prefix)
        memory = "discovery.json" if layout != "room" else f"discovery-{room_id}.json"
        self._components = ComponentMemory(publisher.state_dir / memory)
        self._entities: list[EntitySpec] = []
        self._incidents: list[EntitySpec] = []  # the daemon's (or a single room's) incident entities

    # ------------------------------------------------------------------ events and states

    def publish_event(self, event: Event) -> Route:
        """Queue an event for {prefix}/{room}/{rule}/event (JSON, QoS 1, not retained): see Publisher.send_event."""
        topic = self.topics.rule_event(event.rule_id)
        payload = json.dumps(event.payload(self.id, __version__), ensure_ascii=False).encode()
        return self.publisher.send_event(topic, payload, event)

    def publish_state(self, rule_id: str, on: bool) -> None:
        """{prefix}/{room}/{rule}/state = ON/OFF, retained."""
        self.publisher.set_retained(self.topics.rule_state(rule_id), b"ON" if on else b"OFF")

    def publish_text(self, rule_id: str, text: str) -> None:
        """The last answer of a text rule on {prefix}/{room}/{rule}/text, retained (the HA sensor).

        Cut to 255 characters, the most a Home Assistant sensor state may hold; the event payload
        carries the full text.
        """
        self.publisher.set_retained(self.topics.rule_text(rule_id), text[:SENSOR_TEXT_MAX].encode())

    def set_hearing(self, ok: bool, reason: str | None = None, detail: str = "") -> None:
        """Whether the room can hear, on {prefix}/{room}/hearing (retained).

        `problem` drives the Microphone problem sensor (ON while muted or deaf); `capture` (ok or
        lost) drives the availability of the room's other entities: muted is still a working room.
        """
        body = {"problem": "OFF" if ok else "ON", "reason": reason, "detail": detail or None,
                "capture": "lost" if reason == "capture_lost" else "ok"}
        self.publisher.set_retained(self.topics.hearing, json.dumps(body).encode())

    def set_model(self, ok: bool, detail: str = "", rooms: list[str] | None = None) -> None:
        """Whether the model answers, on {prefix}/{node}/model (retained): the Model problem sensor.

        `rooms`: those in `model_failed` (a whole home; one model answers them all).
        """
        body = {"problem": "OFF" if ok else "ON", "reason": None if ok else "model_failed", "detail": detail or None,
                "rooms": sorted(rooms or [])}
        self.publisher.set_retained(self.topics.model, json.dumps(body).encode())

    def set_muted(self, muted: bool) -> None:
        """The mute switch's state on {prefix}/{room}/mute, retained."""
        self.publisher.set_retained(self.topics.mute_state, b"ON" if muted else b"OFF")

    def set_enabled(self, rule_id: str, enabled: bool) -> None:
        """A rule's switch on {prefix}/{room}/{rule}/enabled, retained: OFF, the rule is not asked."""
        self.publisher.set_retained(self.topics.rule_enabled(rule_id), b"ON" if enabled else b"OFF")

    def set_entities(self, entities: list[EntitySpec]) -> None:
        """Publish the room's Home Assistant device; components of removed rules are deleted."""
        self._entities = list(entities)
        s = self.publisher.settings
        if not s.discovery.enabled:
            return
        daemon = self.publisher.topics
        current = build_payload(entities, self.topics, self.name, __version__, s.qos, layout=self.layout, daemon=daemon,
                                incidents=self._incidents)
        tombstones = self._components.update({cid: comp["p"] for cid, comp in current["cmps"].items()})
        payload = build_payload(entities, self.topics, self.name, __version__, s.qos, tombstones,
                                layout=self.layout, daemon=daemon, incidents=self._incidents)
        if tombstones:
            self.publisher.note_removed(self.id, sorted(tombstones))
        self.publisher.set_retained(self.topics.discovery, json.dumps(payload, ensure_ascii=False).encode())

    def set_incidents(self, rules: list[EntitySpec]) -> None:
        """The incident event entities this device carries (the yes_no rules of every room); published again."""
        if rules != self._incidents:
            self._incidents = list(rules)
            self.set_entities(self._entities)

    # ------------------------------------------------------------------ low value

    def publish_scores(self, scores: dict[str, dict]) -> None:
        """Every rule's latest score on {prefix}/{room}/scores (tuning aid; low value)."""
        cfg = self.publisher.settings.scores
        if cfg.enabled:
            self.publisher.publish_low(self.topics.scores, cfg.interval, lambda: json.dumps(scores, default=_num).encode())

    def publish_level(self, dbfs: float) -> None:
        """The sound level on {prefix}/{room}/level as a number in dBFS (low value)."""
        cfg = self.publisher.settings.level
        if not cfg.enabled or math.isnan(dbfs):
            return
        value = max(-120.0, min(0.0, dbfs)) if math.isfinite(dbfs) else (-120.0 if dbfs < 0 else 0.0)
        self.publisher.publish_low(self.topics.level, cfg.interval, lambda: f"{value:.1f}".encode())


def _num(value: Any) -> Any:
    """JSON fallback for numpy scalars and the like in score dicts."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)
