"""The publisher: the one owner of the MQTT connection.

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

paho calls back on its own thread while holding its own locks; the callbacks here only append to
a deque and wake the worker, so no lock of ours is ever taken inside paho's.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from monitor import __version__
from monitor.events import Event
from monitor.publish.client import describe_connect_error, describe_refusal, make_client
from monitor.publish.discovery import SENSOR_TEXT_MAX, ComponentMemory, EntitySpec, build_payload
from monitor.publish.outbox import Outbox, OutboxError
from monitor.publish.settings import MqttSettings
from monitor.publish.topics import Topics

log = logging.getLogger(__name__)

CommandHandler = Callable[[str, str], None]


class _QuietReconnects(logging.Filter):
    """paho logs an ERROR on every failed reconnect loop; the publisher already said it once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


_paho_log = logging.getLogger(f"{__name__}.paho")
_paho_log.addFilter(_QuietReconnects())

_RELOAD_WORDS = {"", "PRESS", "RELOAD", "ON", "1", "TRUE"}
_MAX_COMMAND_BYTES = 64


@dataclass(frozen=True)
class PublisherStats:
    """Counters since start (a snapshot)."""

    published: int  # events acknowledged by the broker
    dropped_low_value: int  # scores/levels not sent because the broker was away or events were draining
    rate_limited: int  # scores/levels skipped by their interval
    dropped_events: int  # events dropped because the outbox was full (each logged as an error)
    connects: int  # successful connections
    connect_failures: int  # failed attempts (unreachable, refused, TLS)
    ignored_commands: int  # malformed or unknown inbound commands


class Publisher:
    """Publishes events, states and Home Assistant discovery; receives mute/reload commands."""

    def __init__(self, settings: MqttSettings, node_id: str, node_name: str, state_dir: Path,
                 on_command: CommandHandler | None = None):
        self.settings = settings
        self.topics = Topics(settings.topic_prefix, node_id, settings.discovery.prefix)
        self.node_id = node_id
        self.node_name = node_name
        self.state_dir = Path(state_dir)
        self.on_command = on_command
        self.client_id = settings.client_id or f"audio-monitor-{node_id}"
        self._client = make_client(settings, self.client_id, self.topics.status)
        self._outbox = Outbox(self.state_dir / "outbox.sqlite3", settings.outbox.max_events, settings.outbox.fsync)
        self._components = ComponentMemory(self.state_dir / "discovery.json")

        self._inbox: collections.deque[tuple[str, Any]] = collections.deque()  # paho/daemon -> worker
        self._wake = threading.Event()
        self._drained = threading.Condition()
        self._cache_lock = threading.Lock()
        self._retained: dict[str, bytes] = {}  # topic -> latest retained payload, in first-set order
        self._worker: threading.Thread | None = None
        self._stopping = False
        self._started = False

        # owned by the worker thread
        self._inflight: dict[int, int | None] = {}  # paho mid -> outbox seq (None: a retained value)
        self._inflight_events = 0
        self._last_handed = 0
        self._await_gate = False

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

    # ------------------------------------------------------------------ public API

    @property
    def connected(self) -> bool:
        """True between a successful CONNACK and the loss of that connection."""
        return self._connected

    @property
    def outbox_depth(self) -> int:
        """Events waiting for the broker's acknowledgement (sent or not)."""
        return self._outbox.depth

    @property
    def stats(self) -> PublisherStats:
        return PublisherStats(self._published, self._dropped_low, self._rate_limited, self._outbox.dropped,
                              self._connects, self._connect_failures, self._ignored_commands)

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
            self._outbox.close()
            return
        deadline = time.monotonic() + timeout
        with self._drained:
            while self._outbox.depth and self._connected and time.monotonic() < deadline:
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
        left = self._outbox.depth
        self._outbox.close()
        if left:
            log.warning("mqtt: stopped with %d event(s) not yet acknowledged; they are kept in %s and sent at the next start",
                        left, self._outbox.path)
        else:
            log.info("mqtt: stopped; outbox empty")

    def publish_event(self, event: Event) -> None:
        """Durably queue an event for {prefix}/{node}/{rule}/event (JSON, QoS 1, not retained)."""
        topic = self.topics.rule_event(event.rule_id)
        payload = json.dumps(event.payload(self.node_id, __version__), ensure_ascii=False).encode()
        self._outbox.add(topic, payload, event.id, event.clip)
        self._notify("event")

    def pending_clips(self) -> set[str]:
        """Clip paths of events not yet acknowledged: clip retention must not delete them."""
        try:
            return self._outbox.clips()
        except OutboxError:
            return set()

    def publish_state(self, rule_id: str, on: bool) -> None:
        """{prefix}/{node}/{rule}/state = ON/OFF, retained."""
        self._set_retained(self.topics.rule_state(rule_id), b"ON" if on else b"OFF")

    def publish_text(self, rule_id: str, text: str) -> None:
        """The last answer of a text rule on {prefix}/{node}/{rule}/text, retained (the HA sensor).

        Cut to 255 characters, the most a Home Assistant sensor state may hold; the event payload
        carries the full text.
        """
        self._set_retained(self.topics.rule_text(rule_id), text[:SENSOR_TEXT_MAX].encode())

    def set_muted(self, muted: bool) -> None:
        """The mute switch's state on {prefix}/{node}/mute, retained."""
        self._set_retained(self.topics.mute_state, b"ON" if muted else b"OFF")

    def publish_status(self, status: dict[str, Any]) -> None:
        """Retained JSON health on {prefix}/{node}/info; the publisher adds its counters under `publisher`."""
        body = {"version": __version__, **status,
                "publisher": {"outbox_depth": self.outbox_depth, **dataclasses.asdict(self.stats)}}
        self._set_retained(self.topics.info, json.dumps(body, ensure_ascii=False, default=str).encode())

    def set_entities(self, entities: list[EntitySpec]) -> None:
        """Publish the Home Assistant device discovery; components of removed rules are deleted."""
        if not self.settings.discovery.enabled:
            return
        qos = self.settings.qos
        current = build_payload(entities, self.topics, self.node_name, __version__, qos)["cmps"]
        tombstones = self._components.update({cid: comp["p"] for cid, comp in current.items()})
        payload = build_payload(entities, self.topics, self.node_name, __version__, qos, tombstones)
        if tombstones:
            log.info("mqtt: Home Assistant entities removed: %s", ", ".join(sorted(tombstones)))
        self._set_retained(self.topics.discovery, json.dumps(payload, ensure_ascii=False).encode())

    def publish_scores(self, scores: dict[str, dict]) -> None:
        """Every rule's latest score on {prefix}/{node}/scores (tuning aid; low value)."""
        cfg = self.settings.scores
        if cfg.enabled:
            self._publish_low(self.topics.scores, cfg.interval, lambda: json.dumps(scores, default=_num).encode())

    def publish_level(self, dbfs: float) -> None:
        """The sound level on {prefix}/{node}/level as a number in dBFS (low value)."""
        cfg = self.settings.level
        if not cfg.enabled or math.isnan(dbfs):
            return
        value = max(-120.0, min(0.0, dbfs)) if math.isfinite(dbfs) else (-120.0 if dbfs < 0 else 0.0)
        self._publish_low(self.topics.level, cfg.interval, lambda: f"{value:.1f}".encode())

    # ------------------------------------------------------------------ daemon-side helpers

    def _set_retained(self, topic: str, payload: bytes) -> None:
        with self._cache_lock:
            self._retained[topic] = payload
        self._notify("retained", topic)

    def _publish_low(self, topic: str, interval: float, make: Callable[[], bytes]) -> None:
        now = time.monotonic()
        last = self._last_low.get(topic)
        if last is not None and now - last < interval:
            self._rate_limited += 1
            return
        if not self._ready or self._outbox.depth > self.settings.outbox.max_inflight:
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
            self._connect_failures += 1
            self._problem(describe_refusal(reason, self.settings) + "; retrying, events are kept in the outbox", logging.ERROR)
            return
        self._connected = True
        self._connects += 1
        if self._last_problem is not None or self._failures_since_connect:
            log.info("mqtt: connected to %s:%d (after %d failed attempt(s)); sending %d waiting event(s)",
                     self.settings.host, self.settings.port, self._failures_since_connect, self._outbox.depth)
        else:
            log.info("mqtt: connected to %s:%d", self.settings.host, self.settings.port)
        self._last_problem = None
        self._failures_since_connect = 0
        subs = [(self.topics.command_filter, 1)]
        if self.settings.discovery.enabled:
            subs.append((self.topics.ha_status, 1))
        client.subscribe(subs)
        self._notify("connected")

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        # paho calls this inside its `except OSError` block, so the cause is still at hand
        self._connect_failures += 1
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
        name = topic.rsplit("/", 1)[-1]
        text = None
        if len(raw) <= _MAX_COMMAND_BYTES:
            try:
                text = raw.decode("ascii").strip().upper()
            except UnicodeDecodeError:
                text = None
        if name == "mute" and text in ("ON", "OFF"):
            self._call("mute", text)
        elif name == "reload" and text in _RELOAD_WORDS and not retained:
            self._call("reload", "")
        else:
            self._ignored_commands += 1
            shown = raw[:40] + (b"..." if len(raw) > 40 else b"")
            hint = {"mute": "expected ON or OFF", "reload": "expected an empty payload or PRESS (not retained)"}.get(
                name, "known commands: set/mute, set/reload")
            log.warning("mqtt: ignored command on %s: payload %r (%s)", topic, shown, hint)

    def _call(self, name: str, value: str) -> None:
        log.info("mqtt: command %s %s", name, value)
        if self.on_command is not None:
            self.on_command(name, value)

    def _problem(self, message: str, level: int) -> None:
        """Log a connection problem once; repeats of the same one go to debug."""
        self._failures_since_connect += 1
        if message != self._last_problem:
            log.log(level, "%s", message)
            self._last_problem = message
        else:
            log.debug("%s", message)

    # ------------------------------------------------------------------ worker

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(1.0)
            self._wake.clear()
            try:
                self._step()
            except Exception:  # noqa: BLE001 - keep delivering; the error is logged with its cause
                log.exception("mqtt: outbox worker error (continuing)")
                time.sleep(0.5)

    def _step(self) -> None:
        acked: list[int] = []
        while True:
            try:
                kind, arg = self._inbox.popleft()
            except IndexError:
                break
            if kind == "ack":
                if arg not in self._inflight:
                    continue  # QoS 0 messages, or the stop-time `offline`
                seq = self._inflight.pop(arg)
                if seq is not None:
                    acked.append(seq)
                    self._inflight_events -= 1
                if self._await_gate:
                    self._await_gate = False
                    self._become_ready()
            elif kind == "connected":
                # Whatever is in flight now will be re-sent by paho first; wait for the gate ack.
                self._await_gate = True
                self._send(self.topics.status, b"online", None)
            elif kind == "disconnected":
                self._await_gate = False
                self._ready = False
            elif kind == "retained" and self._ready:
                with self._cache_lock:
                    payload = self._retained.get(arg)
                if payload is not None:
                    self._send(arg, payload, None)
            elif kind == "birth" and self._ready:
                log.info("mqtt: Home Assistant came online; sending discovery and states again")
                self._send_all_retained()
        if acked:
            self._outbox.remove(acked)
            self._published += len(acked)
            with self._drained:
                self._drained.notify_all()
        if self._ready:
            self._pump()

    def _become_ready(self) -> None:
        self._ready = self._connected
        if self._ready:
            self._send_all_retained()

    def _send_all_retained(self) -> None:
        with self._cache_lock:
            items = list(self._retained.items())
        # discovery first, so Home Assistant has the entities before their states arrive
        items.sort(key=lambda kv: kv[0] != self.topics.discovery)
        for topic, payload in items:
            self._send(topic, payload, None)

    def _pump(self) -> None:
        room = self.settings.outbox.max_inflight - self._inflight_events
        if room <= 0:
            return
        for row in self._outbox.after(self._last_handed, room):
            self._send(row.topic, row.payload, row.seq)
            self._last_handed = row.seq
            self._inflight_events += 1

    def _send(self, topic: str, payload: bytes, seq: int | None) -> None:
        retain = seq is None
        info = self._client.publish(topic, payload, qos=self.settings.qos, retain=retain)
        # paho keeps the message (and re-sends it after a reconnect) even when not connected now
        self._inflight[info.mid] = seq


def _num(value: Any) -> Any:
    """JSON fallback for numpy scalars and the like in score dicts."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


__all__ = ["EntitySpec", "Publisher", "PublisherStats"]
