"""The publisher: MQTT for every room of the daemon, over one connection (see `room` and `link`).

How delivery works (the outbox, the gate after a reconnect, the hold for Home Assistant, low-value
messages) is told in `monitor.publish.link`, which owns the connection and its worker thread;
events wait in `monitor.publish.store` (the outbox, and memory while it cannot write).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor import __version__
from monitor.events import Event
from monitor.labels.requests import parse_label
from monitor.publish.client import make_client
from monitor.publish.discovery import EntitySpec
from monitor.publish.link import Link
from monitor.publish.room import RoomChannel
from monitor.publish.settings import MqttSettings
from monitor.publish.store import EventStore, Route
from monitor.publish.topics import Topics

log = logging.getLogger(__name__)

CommandHandler = Callable[[str, str, str], None]
"""(command, value, target): target is the node id (the whole daemon) or a room's source id; for a
rule's switch (`enabled`) and a label (`label`, whose value is its JSON body), `{room}/{rule}`."""


_RELOAD_WORDS = {"", "PRESS", "RELOAD", "ON", "1", "TRUE"}
_MAX_COMMAND_BYTES = 64
_MAX_LABEL_BYTES = 512


@dataclass(frozen=True)
class PublisherStats:
    """Counters since start (a snapshot)."""

    published: int  # events acknowledged by the broker
    dropped_low_value: int  # scores/levels not sent because the broker was away or events were draining
    rate_limited: int  # scores/levels skipped by their interval
    dropped_events: int  # events dropped because the outbox was full (each logged as an error)
    connects: int  # successful connections
    connect_failures: int  # failed attempts to connect since start (unreachable, refused, TLS); not lost connections
    ignored_commands: int  # malformed or unknown inbound commands
    direct_events: int  # events published directly because the outbox could not store them


class Publisher:
    """Publishes events, states and Home Assistant discovery; receives mute/reload commands."""

    def __init__(self, settings: MqttSettings, node_id: str, node_name: str, state_dir: Path,
                 on_command: CommandHandler | None = None, rooms: list[tuple[str, str]] | None = None):
        """`rooms`: (source id, name) of each room of a whole-home daemon; None: the node is the one room."""
        self.settings = settings
        self.topics = Topics(settings.topic_prefix, node_id, settings.discovery.prefix)
        self.node_id = node_id
        self.node_name = node_name
        self.state_dir = Path(state_dir)
        self.on_command = on_command
        self.client_id = settings.client_id or f"audio-monitor-{node_id}"
        self._client = make_client(settings, self.client_id, self.topics.status)
        self._last_status: dict[str, Any] | None = None  # sent again with the new condition when it changes
        self.node = RoomChannel(self, node_id, node_name, "single" if rooms is None else "daemon")
        self.rooms: dict[str, RoomChannel] = {node_id: self.node} if rooms is None else {
            room_id: RoomChannel(self, room_id, name, "room") for room_id, name in rooms}
        self._started = False
        self._stopped = False
        self._last_low: dict[str, float] = {}
        self._dropped_low = 0
        self._rate_limited = 0
        self._ignored_commands = 0
        # when the outbox cannot be opened the publisher still starts, publishing directly
        self.store = EventStore(self.state_dir / "outbox.sqlite3", settings.outbox, on_change=self._republish_status)
        subscriptions = [(self.topics.command_filter, 1)] + [(r.topics.command_filter, 1) for r in self.rooms.values()
                                                             if r.id != node_id]
        subscriptions += [(r.topics.rule_command_filter, 1) for r in self.rooms.values()]  # the rules' switches
        subscriptions += [(r.topics.rule_label_filter, 1) for r in self.rooms.values()]  # labels from the phone
        if settings.discovery.enabled:
            subscriptions.append((self.topics.ha_status, 1))
        discovery = {r.topics.discovery for r in self.rooms.values()} | {self.topics.discovery}
        self._link = Link(settings, self._client, self.topics, self.store, subscriptions, discovery, self._command)
        self._link.set_retained(self.topics.mute_state, b"OFF")

    # ------------------------------------------------------------------ public API

    @property
    def connected(self) -> bool:
        """True between a successful CONNACK and the loss of that connection."""
        return self._link.connected

    @property
    def outbox_depth(self) -> int:
        """Events in the outbox waiting for the broker's acknowledgement (sent or not)."""
        return self.store.depth

    @property
    def direct_waiting(self) -> int:
        """Events published directly (not stored) that the broker has not acknowledged yet."""
        return self.store.direct_waiting

    @property
    def outbox_ok(self) -> bool:
        """False while the outbox cannot store events (they are published directly meanwhile)."""
        return self.store.ok

    @property
    def outbox_problem(self) -> str | None:
        """Why the outbox cannot store events now (None while it can)."""
        return self.store.problem

    @property
    def stats(self) -> PublisherStats:
        link = self._link
        return PublisherStats(link.published, self._dropped_low, self._rate_limited, self.store.dropped,
                              link.connects, link.connect_failures, self._ignored_commands, self.store.direct_events)

    def start(self) -> None:
        """Connect in the background (retrying with capped backoff) and start sending."""
        if self._started:
            raise RuntimeError("Publisher.start() called twice")
        self._started = True
        self._link.start()
        log.info("mqtt: connecting to %s:%d as %s (topics under %s)", self.settings.host, self.settings.port,
                 self.client_id, self.topics.base)

    def stop(self, timeout: float = 5.0) -> None:
        """Send what the broker takes within `timeout`, publish `offline`, disconnect.

        Events not acknowledged by then stay in the outbox and go first at the next start.
        """
        if self._stopped:
            return
        self._stopped = True
        if not self._started:
            self.store.close()
            return
        self._link.stop(time.monotonic() + timeout)
        left, lost = self.outbox_depth, self.direct_waiting
        self.store.close()
        if left:
            log.warning("mqtt: stopped with %d event(s) not yet acknowledged; they are kept in %s and sent at the next start",
                        left, self.state_dir / "outbox.sqlite3")
        if lost:
            log.error("mqtt: stopped with %d event(s) published directly (the outbox could not store them) and not "
                      "acknowledged; they are lost", lost)
        if not left and not lost:
            log.info("mqtt: stopped; outbox empty")

    def room(self, room_id: str) -> RoomChannel:
        """The topics and device of one room (a one-microphone monitor has one: the node)."""
        return self.rooms[room_id]

    def publish_event(self, event: Event) -> Route:
        """Queue an event on its room's topic (the node's when it names none); see `send_event`."""
        room = self.rooms.get(event.source) if event.source else self.node
        if room is None:
            if event.source != self.node_id:
                raise ValueError(f"event of unknown source {event.source!r}: not one of {', '.join(self.rooms)}")
            room = self.node
        return room.publish_event(event)

    def send_event(self, topic: str, payload: bytes, event: Event) -> Route:
        """Queue an event's JSON for `topic` (QoS 1, not retained); say how.

        "outbox": it is stored durably. "direct": the outbox cannot store it (logged when that
        starts, shown in the status), so it is sent from memory, after the events stored before
        it: at most once, and lost if the process ends before the broker has it. Raises
        OutboxError only after stop().
        """
        route = self.store.add(topic, payload, event.id, event.clip)
        self._link.notify("event")
        return route

    def publish_incident(self, rule_id: str, payload: bytes, ident: str, clip: str | None) -> Route:
        """Queue an incident's JSON for {prefix}/{node}/{rule}/incident (QoS 1, not retained), durably like an event."""
        route = self.store.add(self.topics.rule_incident(rule_id), payload, ident, clip)
        self._link.notify("event")
        return route

    def pending_clips(self) -> set[str]:
        """Clip paths of events not yet acknowledged: clip retention must not delete them."""
        return self.store.pending_clips()

    # The node's own room (a one-microphone monitor): see RoomChannel.
    def publish_state(self, rule_id: str, on: bool) -> None:
        self.node.publish_state(rule_id, on)

    def publish_text(self, rule_id: str, text: str) -> None:
        self.node.publish_text(rule_id, text)

    def set_hearing(self, ok: bool, reason: str | None = None, detail: str = "") -> None:
        self.node.set_hearing(ok, reason, detail)

    def set_muted(self, muted: bool) -> None:
        """The node's mute switch ({prefix}/{node}/mute; in a whole-home daemon: all rooms)."""
        self.node.set_muted(muted)

    def publish_status(self, status: dict[str, Any]) -> None:
        """Retained JSON health on {prefix}/{node}/info; the publisher adds its counters under `publisher`.

        Sent again by the publisher when the outbox stops or starts storing events, so a hub sees
        that at once rather than at the next status.
        """
        self._last_status = status
        problem = self.store.problem
        body = {"version": __version__, **status,
                "publisher": {"outbox_depth": self.outbox_depth, "outbox_ok": problem is None, "outbox_problem": problem,
                              "direct_waiting": self.direct_waiting, **dataclasses.asdict(self.stats)}}
        self.set_retained(self.topics.info, json.dumps(body, ensure_ascii=False, default=str).encode())

    def set_entities(self, entities: list[EntitySpec]) -> None:
        self.node.set_entities(entities)

    def publish_scores(self, scores: dict[str, dict]) -> None:
        self.node.publish_scores(scores)

    def publish_level(self, dbfs: float) -> None:
        self.node.publish_level(dbfs)

    # ------------------------------------------------------------------ for RoomChannel

    def set_retained(self, topic: str, payload: bytes) -> None:
        """Keep `payload` as the latest retained value of `topic`, sent now and after every (re)connect."""
        self._link.set_retained(topic, payload)

    def note_removed(self, room_id: str, components: list[str]) -> None:
        log.info("mqtt: Home Assistant entities of %s removed: %s", room_id, ", ".join(components))

    # ------------------------------------------------------------------ the outbox's condition; low-value messages

    def _republish_status(self) -> None:
        if self._last_status is not None:
            self.publish_status(self._last_status)

    def publish_low(self, topic: str, interval: float, make: Callable[[], bytes]) -> None:
        """A low-value message (QoS 0) at most every `interval` seconds; dropped (counted) when it cannot go now."""
        now = time.monotonic()
        last = self._last_low.get(topic)
        if last is not None and now - last < interval:
            self._rate_limited += 1
            return
        if not self._link.publish_low(topic, make):
            self._dropped_low += 1
            return
        self._last_low[topic] = now

    # ------------------------------------------------------------------ for tests that watch the connection closely

    @property
    def _ready(self) -> bool:
        return self._link.ready

    @property
    def _inflight_events(self) -> int:
        return self._link.inflight_events

    # ------------------------------------------------------------------ commands (paho's thread)

    def _command(self, topic: str, raw: bytes, retained: bool) -> None:
        target, name = topic.rsplit("/", 3)[-3], topic.rsplit("/", 1)[-1]  # {prefix}/{target}/set/{name}
        labelled = self._rule_switch(topic, "label")  # {prefix}/{room}/{rule}/set/label
        if labelled is not None:
            self._label(topic, raw, retained, labelled)
            return
        text = None
        if len(raw) <= _MAX_COMMAND_BYTES:
            try:
                text = raw.decode("ascii").strip().upper()
            except UnicodeDecodeError:
                text = None
        switched = self._rule_switch(topic)  # {prefix}/{room}/{rule}/set/enabled
        if switched is not None:
            name = "{rule}/set/enabled"
        if switched is not None and text in ("ON", "OFF"):
            self._call("enabled", text, switched)
        elif name == "mute" and text in ("ON", "OFF"):
            self._call("mute", text, target)
        elif name == "reload" and text in _RELOAD_WORDS and not retained:
            self._call("reload", "", target)
        else:
            self._ignored_commands += 1
            shown = raw[:40] + (b"..." if len(raw) > 40 else b"")
            hint = {"mute": "expected ON or OFF", "{rule}/set/enabled": "expected ON or OFF",
                    "reload": "expected an empty payload or PRESS (not retained)"}.get(
                name, "known commands: set/mute, set/reload, {rule}/set/enabled, {rule}/set/label")
            log.warning("mqtt: ignored command on %s: payload %r (%s)", topic, shown, hint)

    def _label(self, topic: str, raw: bytes, retained: bool, target: str) -> None:
        """A label from the phone: a checked JSON body goes on as the `label` command, anything else is one line."""
        room, _, rule = target.partition("/")
        problem = "a retained label would be applied again on every reconnect" if retained else None
        body = None
        if problem is None and len(raw) <= _MAX_LABEL_BYTES:
            try:
                body = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                body = None
        request = parse_label(body, room, rule, "mqtt") if problem is None else problem
        if isinstance(request, str):
            self._ignored_commands += 1
            shown = raw[:60] + (b"..." if len(raw) > 60 else b"")
            log.warning("mqtt: ignored label on %s: payload %r (%s)", topic, shown, request)
            return
        value = ({"missed_seconds": request.missed_seconds} if request.event is None
                 else {"event": request.event, "verdict": request.answer})
        self._call("label", json.dumps(value), target)

    def _rule_switch(self, topic: str, name: str = "enabled") -> str | None:
        """`{room}/{rule}` when `topic` is a rule's command `name` of one of the rooms, else None."""
        for room in self.rooms.values():
            rule = room.topics.rule_of_command(topic, name)
            if rule is not None:
                return f"{room.id}/{rule}"
        return None

    def _call(self, name: str, value: str, target: str) -> None:
        log.info("mqtt: command %s %s for %s", name, value, target)
        if self.on_command is not None:
            self.on_command(name, value, target)


__all__ = ["EntitySpec", "Publisher", "PublisherStats"]
