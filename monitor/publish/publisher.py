"""The publisher: the one owner of the MQTT connection, for every room of the daemon (see `room`).

Delivery model (why it is built this way):

- `publish_event` writes the event to the SQLite outbox and returns; nothing is lost from then on.
- A worker thread hands outbox rows to paho in sequence order, at most `outbox.max_inflight`
  unacknowledged at a time, and deletes a row when its PUBACK arrives.
- paho keeps what it was handed across a reconnect and sends it again first (DUP), in order. To
  keep newer rows from overtaking those, the worker sends nothing new after a reconnect until the
  first acknowledgement on the new connection (the retained `online` guarantees there is one);
  by then paho has queued all its re-sends.
- Retained values (states, texts, mute, health, discovery) are kept as latest values and sent
  again on every (re)connect and when Home Assistant announces itself, so a stale value re-sent
  by paho is always followed by the current one.
- Scores and levels are low value: QoS 0, rate limited, and dropped (counted) while the broker is
  away or a backlog of events is draining.
- An alarm sent without the outbox beats no alarm: when the outbox cannot store an event, it is
  sent from memory ("directly"), at most once and in its place in line (`store.EventStore`).
- After every (re)connect, events wait until Home Assistant announces itself (its birth message
  `{discovery prefix}/status` = `online`) or `birth_timeout` passes. A hub that subscribes with a
  clean session (Home Assistant does) and reconnects a moment after the monitor would otherwise
  miss the backlog: the broker keeps nothing for a subscriber that is not there yet. What paho
  re-sent by itself on reconnecting is sent once more after the wait (same ids). Retained values
  go at once: the broker keeps those for late subscribers.

paho calls back on its own thread while holding its own locks; the callbacks here only append to
a deque and wake the worker, so no lock of ours is ever taken inside paho's.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt

from monitor import __version__
from monitor.events import Event
from monitor.publish.client import describe_connect_error, describe_refusal, make_client
from monitor.publish.discovery import EntitySpec
from monitor.publish.room import RoomChannel
from monitor.publish.store import EventStore, Route, Waiting
from monitor.publish.settings import MqttSettings
from monitor.publish.topics import Topics

log = logging.getLogger(__name__)

CommandHandler = Callable[[str, str, str], None]
"""(command, value, target): target is the node id (the whole daemon) or a room's source id."""


class _QuietReconnects(logging.Filter):
    """paho logs an ERROR on every failed reconnect loop, and on the reset of a broker that
    restarts; the publisher already says it once (a lost connection is a WARNING)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Client is not connected", "failed to receive on socket"))


_paho_log = logging.getLogger(f"{__name__}.paho")
_paho_log.addFilter(_QuietReconnects())

_RELOAD_WORDS = {"", "PRESS", "RELOAD", "ON", "1", "TRUE"}
_MAX_COMMAND_BYTES = 64


@dataclass(frozen=True)
class _Sent:
    """What a paho message id stands for until the broker acknowledges it."""

    kind: Literal["retained", "row", "direct", "replay"]  # replay: a copy sent again after the hold
    seq: int | None = None  # the outbox row of a "row"
    topic: str = ""  # events keep topic and payload, to be sent again after a reconnect
    payload: bytes = b""


_RETAINED = _Sent("retained")


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

        self._inbox: collections.deque[tuple[str, Any]] = collections.deque()  # paho/daemon -> worker
        self._flushing = False  # stop() is sending what it can: nothing is held back any more
        self._wake = threading.Event()
        self._drained = threading.Condition()
        self._cache_lock = threading.Lock()
        self._retained: dict[str, bytes] = {}  # topic -> latest retained payload, in first-set order
        self._worker: threading.Thread | None = None
        self._stopping = False
        self._started = False

        # owned by the worker thread
        self._inflight: dict[int, _Sent] = {}  # paho mid -> what it carries
        self._inflight_events = 0
        self._await_gate = False
        self._hold_until: float | None = None  # events wait for Home Assistant until then (monotonic)
        self._replay: collections.deque[_Sent] = collections.deque()  # paho's re-sends, to send again after the hold

        # read anywhere, written by the worker / paho callbacks
        self._connected = False
        self._ready = False
        self._last_problem: str | None = None
        self._failures_since_connect = 0
        self._last_low: dict[str, float] = {}
        self._published = 0
        self._dropped_low = 0
        self._rate_limited = 0
        self._connects = 0
        self._connect_failures = 0
        self._ignored_commands = 0

        c = self._client
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        c.enable_logger(_paho_log)
        self._retained[self.topics.mute_state] = b"OFF"
        # when the outbox cannot be opened the publisher still starts, publishing directly
        self.store = EventStore(self.state_dir / "outbox.sqlite3", settings.outbox, on_change=self._republish_status)

    # ------------------------------------------------------------------ public API

    @property
    def connected(self) -> bool:
        """True between a successful CONNACK and the loss of that connection."""
        return self._connected

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
        return PublisherStats(self._published, self._dropped_low, self._rate_limited, self.store.dropped,
                              self._connects, self._connect_failures, self._ignored_commands, self.store.direct_events)

    def start(self) -> None:
        """Connect in the background (retrying with capped backoff) and start sending."""
        if self._started:
            raise RuntimeError("Publisher.start() called twice")
        self._started = True
        self._worker = threading.Thread(target=self._run, name="mqtt-outbox", daemon=True)
        self._worker.start()
        self._client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive)
        self._client.loop_start()
        log.info("mqtt: connecting to %s:%d as %s (topics under %s)", self.settings.host, self.settings.port,
                 self.client_id, self.topics.base)

    def stop(self, timeout: float = 5.0) -> None:
        """Send what the broker takes within `timeout`, publish `offline`, disconnect.

        Events not acknowledged by then stay in the outbox and go first at the next start.
        """
        if self._stopping:
            return
        if not self._started:
            self._stopping = True
            self.store.close()
            return
        deadline = time.monotonic() + timeout
        self._flushing = True  # the worker ends any hold: what the broker takes now is better than nothing
        with self._drained:
            while self.store.waiting and self._connected and time.monotonic() < deadline:
                self._wake.set()
                self._drained.wait(min(0.2, max(0.0, deadline - time.monotonic())))
        self._stopping = True
        self._wake.set()
        if self._worker is not None:
            self._worker.join(max(1.0, deadline - time.monotonic()))
        if self._connected:
            # Queued before DISCONNECT on the same connection, so the broker reads it first even if
            # its acknowledgement is not awaited; if the connection is broken, the Last Will fires.
            try:
                info = self._client.publish(self.topics.status, b"offline", qos=self.settings.qos, retain=True)
                info.wait_for_publish(max(0.5, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                log.warning("mqtt: the broker did not confirm `offline` before disconnecting (%s)", exc)
        self._client.disconnect()
        self._client.loop_stop()
        self._connected = self._ready = False
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
        self._notify("event")
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
        with self._cache_lock:
            self._retained[topic] = payload
        self._notify("retained", topic)

    def note_removed(self, room_id: str, components: list[str]) -> None:
        log.info("mqtt: Home Assistant entities of %s removed: %s", room_id, ", ".join(components))

    # ------------------------------------------------------------------ daemon-side helpers

    def _republish_status(self) -> None:
        if self._last_status is not None:
            self.publish_status(self._last_status)

    def publish_low(self, topic: str, interval: float, make: Callable[[], bytes]) -> None:
        now = time.monotonic()
        last = self._last_low.get(topic)
        if last is not None and now - last < interval:
            self._rate_limited += 1
            return
        if not self._ready or self.store.waiting > self.settings.outbox.max_inflight:
            self._dropped_low += 1
            return
        self._last_low[topic] = now
        self._client.publish(topic, make(), qos=0, retain=False)

    def _notify(self, kind: str, arg: Any = None) -> None:
        self._inbox.append((kind, arg))
        self._wake.set()

    # ------------------------------------------------------------------ paho callbacks (paho's thread)

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self._attempt_failed()
            self._problem(describe_refusal(reason, self.settings) + "; retrying, events are kept in the outbox", logging.ERROR)
            return
        self._connected = True
        self._connects += 1
        if self._failures_since_connect:
            log.info("mqtt: connected to %s:%d (after %d failed attempt(s)); %d event(s) waiting",
                     self.settings.host, self.settings.port, self._failures_since_connect, self.store.waiting)
        elif self._last_problem is not None:
            log.info("mqtt: connected to %s:%d again; %d event(s) waiting", self.settings.host, self.settings.port,
                     self.store.waiting)
        else:
            log.info("mqtt: connected to %s:%d", self.settings.host, self.settings.port)
        self._last_problem = None
        self._failures_since_connect = 0
        subs = [(self.topics.command_filter, 1)] + [(r.topics.command_filter, 1) for r in self.rooms.values()
                                                    if r.id != self.node_id]
        if self.settings.discovery.enabled:
            subs.append((self.topics.ha_status, 1))
        client.subscribe(subs)
        self._notify("connected")

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        # paho calls this inside its `except OSError` block, so the cause is still at hand
        self._attempt_failed()
        exc = sys.exc_info()[1]
        self._problem(describe_connect_error(exc, self.settings) + "; retrying, events are kept in the outbox",
                      logging.WARNING)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        was = self._connected
        self._connected = self._ready = False
        self._notify("disconnected")
        if was and not self._stopping:
            self._problem(f"mqtt: lost the connection to broker {self.settings.host}:{self.settings.port} ({reason}); "
                          "reconnecting, events are kept in the outbox", logging.WARNING)

    def _on_publish(self, _client: mqtt.Client, _userdata: Any, mid: int, _reason: Any, _props: Any) -> None:
        self._inbox.append(("ack", mid))
        self._wake.set()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            if msg.topic == self.topics.ha_status:
                if msg.payload.strip().lower() == b"online":
                    self._notify("birth")
                return
            self._command(msg.topic, msg.payload, bool(msg.retain))
        except Exception:  # noqa: BLE001 - a bad message must not stop the network thread
            log.exception("mqtt: error handling a message on %s", msg.topic)

    def _command(self, topic: str, raw: bytes, retained: bool) -> None:
        target, name = topic.rsplit("/", 3)[-3], topic.rsplit("/", 1)[-1]  # {prefix}/{target}/set/{name}
        text = None
        if len(raw) <= _MAX_COMMAND_BYTES:
            try:
                text = raw.decode("ascii").strip().upper()
            except UnicodeDecodeError:
                text = None
        if name == "mute" and text in ("ON", "OFF"):
            self._call("mute", text, target)
        elif name == "reload" and text in _RELOAD_WORDS and not retained:
            self._call("reload", "", target)
        else:
            self._ignored_commands += 1
            shown = raw[:40] + (b"..." if len(raw) > 40 else b"")
            hint = {"mute": "expected ON or OFF", "reload": "expected an empty payload or PRESS (not retained)"}.get(
                name, "known commands: set/mute, set/reload")
            log.warning("mqtt: ignored command on %s: payload %r (%s)", topic, shown, hint)

    def _call(self, name: str, value: str, target: str) -> None:
        log.info("mqtt: command %s %s for %s", name, value, target)
        if self.on_command is not None:
            self.on_command(name, value, target)

    def _attempt_failed(self) -> None:
        """One failed attempt to connect: what the status's `connect_failures` and the log's "after N
        failed attempt(s)" both count (a lost connection is not an attempt)."""
        self._connect_failures += 1
        self._failures_since_connect += 1

    def _problem(self, message: str, level: int) -> None:
        """Log a connection problem once; repeats of the same one go to debug."""
        if message != self._last_problem:
            log.log(level, "%s", message)
            self._last_problem = message
        else:
            log.debug("%s", message)

    # ------------------------------------------------------------------ worker

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self._wait_time())
            self._wake.clear()
            try:
                self._step()
            except Exception:  # noqa: BLE001 - keep delivering; the error is logged with its cause
                log.exception("mqtt: outbox worker error (continuing)")
                time.sleep(0.5)

    def _wait_time(self) -> float:
        """A second at most; less when held events are due sooner."""
        until = self._hold_until
        return 1.0 if until is None else min(1.0, max(0.01, until - time.monotonic()))

    def _step(self) -> None:
        acked: list[Waiting] = []
        events_acked = 0
        while True:
            try:
                kind, arg = self._inbox.popleft()
            except IndexError:
                break
            if kind == "ack":
                sent = self._inflight.pop(arg, None)
                if sent is None:
                    continue  # QoS 0 messages, or the stop-time `offline`
                if sent.kind != "retained":
                    events_acked += 1
                    self._acknowledged(sent, acked)
                if self._await_gate:
                    self._await_gate = False
                    self._become_ready()
            elif kind == "connected":
                # Whatever is in flight now will be re-sent by paho first; wait for the gate ack.
                self._await_gate = True
                self._hold_events()
                self._send(self.topics.status, b"online", _RETAINED)
            elif kind == "disconnected":
                self._await_gate = False
                self._ready = False
            elif kind == "retained" and self._ready:
                with self._cache_lock:
                    payload = self._retained.get(arg)
                if payload is not None:
                    self._send(arg, payload, _RETAINED)
            elif kind == "birth":
                self._release_held("Home Assistant is online")
                if self._ready:
                    log.info("mqtt: Home Assistant came online; sending discovery and states again")
                    self._send_all_retained()
        if acked:
            self.store.acknowledged(acked)
        if events_acked:
            with self._drained:
                self._drained.notify_all()
        self._timers()
        if self._ready and self._hold_until is None:
            self._pump()

    def _acknowledged(self, sent: _Sent, done: list[Waiting]) -> None:
        self._inflight_events -= 1
        if sent.kind in ("row", "direct"):
            done.append(Waiting(sent.kind, sent.seq, sent.topic, sent.payload))  # type: ignore[arg-type]
            self._published += 1

    def _timers(self) -> None:
        """Open an outbox that could not be opened (every few seconds); end the hold after a reconnect."""
        now = time.monotonic()
        self.store.retry()
        if self._hold_until is None:
            return
        if self._flushing:
            self._release_held("stopping")
        elif now >= self._hold_until:
            self._release_held(f"no birth message from Home Assistant within {self.settings.birth_timeout:g}s")

    def _hold_events(self) -> None:
        """After a (re)connect, keep events back until a hub can be listening again (see the module doc)."""
        wait = self.settings.birth_timeout
        if wait <= 0 or self._flushing:
            return
        # paho re-sends what was in flight the moment it reconnects, maybe before any hub is back:
        # those go once more when the hold ends (the same ids; hubs drop duplicates)
        self._replay.extend(s for s in self._inflight.values() if s.kind != "retained")
        self._hold_until = time.monotonic() + wait

    def _release_held(self, why: str) -> None:
        if self._hold_until is None:
            return
        self._hold_until = None
        waiting = self.store.waiting
        log.log(logging.INFO if waiting else logging.DEBUG, "mqtt: %s; sending %d waiting event(s)", why, waiting)

    def _become_ready(self) -> None:
        self._ready = self._connected
        if self._ready:
            self._send_all_retained()

    def _send_all_retained(self) -> None:
        with self._cache_lock:
            items = list(self._retained.items())
        # discovery first, so Home Assistant has the entities before their states arrive
        discovery = {r.topics.discovery for r in self.rooms.values()} | {self.topics.discovery}
        items.sort(key=lambda kv: kv[0] not in discovery)
        for topic, payload in items:
            self._send(topic, payload, _RETAINED)

    def _pump(self) -> None:
        """Hand events to paho in order, as many as the window has room for.

        First the copies of what paho re-sent on reconnecting (older than anything waiting), then
        outbox rows and direct events merged by age: a direct event goes after the rows stored
        before it arrived.
        """
        room = self.settings.outbox.max_inflight - self._inflight_events
        while room > 0 and self._replay:
            old = self._replay.popleft()
            self._send(old.topic, old.payload, dataclasses.replace(old, kind="replay", seq=None))
            room -= 1
        if room <= 0:
            return
        for w in self.store.take(room):
            self._send(w.topic, w.payload, _Sent(w.kind, w.seq, w.topic, w.payload))

    def _send(self, topic: str, payload: bytes, sent: _Sent) -> None:
        info = self._client.publish(topic, payload, qos=self.settings.qos, retain=sent.kind == "retained")
        # paho keeps the message (and re-sends it after a reconnect) even when not connected now
        self._inflight[info.mid] = sent
        if sent.kind != "retained":
            self._inflight_events += 1


__all__ = ["EntitySpec", "Publisher", "PublisherStats"]
