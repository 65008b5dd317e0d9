"""The one MQTT connection and the worker thread that feeds it: what the publisher's delivery rests on.

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
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import paho.mqtt.client as mqtt

from monitor.publish.client import describe_connect_error, describe_refusal
from monitor.publish.settings import MqttSettings
from monitor.publish.store import EventStore, Waiting
from monitor.publish.topics import Topics

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes, bool], None]
"""(topic, payload, retained) of a message on a subscribed topic other than Home Assistant's status."""


class _QuietReconnects(logging.Filter):
    """paho logs an ERROR on every failed reconnect loop, and on the reset of a broker that
    restarts; the publisher already says it once (a lost connection is a WARNING)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Client is not connected", "failed to receive on socket"))


_paho_log = logging.getLogger(f"{__name__}.paho")
_paho_log.addFilter(_QuietReconnects())


@dataclass(frozen=True)
class _Sent:
    """What a paho message id stands for until the broker acknowledges it."""

    kind: Literal["retained", "row", "direct", "replay"]  # replay: a copy sent again after the hold
    seq: int | None = None  # the outbox row of a "row"
    topic: str = ""  # events keep topic and payload, to be sent again after a reconnect
    payload: bytes = b""


_RETAINED = _Sent("retained")


class Link:
    """Hands outbox rows, direct events and retained values to paho, in order; paho's callbacks come here.

    `subscriptions`: the command topics (and Home Assistant's status) to subscribe to on every
    connect; `discovery`: the discovery topics, sent before other retained values; `on_message`:
    where other messages on subscribed topics go (on paho's thread: keep it short).
    """

    def __init__(self, settings: MqttSettings, client: mqtt.Client, topics: Topics, store: EventStore,
                 subscriptions: list[tuple[str, int]], discovery: set[str], on_message: MessageHandler):
        self.settings = settings
        self.topics = topics
        self.store = store
        self._client = client
        self._subscriptions = subscriptions
        self._discovery = discovery
        self._on_command = on_message

        self._inbox: collections.deque[tuple[str, Any]] = collections.deque()  # paho/daemon -> worker
        self._flushing = False  # stop() is sending what it can: nothing is held back any more
        self._wake = threading.Event()
        self._drained = threading.Condition()
        self._cache_lock = threading.Lock()
        self._retained: dict[str, bytes] = {}  # topic -> latest retained payload, in first-set order
        self._worker: threading.Thread | None = None
        self._stopping = False

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
        self.published = 0  # events acknowledged by the broker
        self.connects = 0
        self.connect_failures = 0

        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.enable_logger(_paho_log)

    @property
    def connected(self) -> bool:
        """True between a successful CONNACK and the loss of that connection."""
        return self._connected

    @property
    def ready(self) -> bool:
        """Connected, and past the first acknowledgement on this connection (see the module doc)."""
        return self._ready

    @property
    def inflight_events(self) -> int:
        """Events handed to paho and not acknowledged yet."""
        return self._inflight_events

    def start(self) -> None:
        """Connect in the background (retrying with capped backoff) and start sending."""
        self._worker = threading.Thread(target=self._run, name="mqtt-outbox", daemon=True)
        self._worker.start()
        self._client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive)
        self._client.loop_start()

    def stop(self, deadline: float) -> None:
        """Send what the broker takes until `deadline` (monotonic), publish `offline`, disconnect."""
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

    def set_retained(self, topic: str, payload: bytes) -> None:
        """Keep `payload` as the latest retained value of `topic`, sent now and after every (re)connect."""
        with self._cache_lock:
            self._retained[topic] = payload
        self.notify("retained", topic)

    def publish_low(self, topic: str, make: Callable[[], bytes]) -> bool:
        """Send a low-value message (QoS 0) made now; False (not made, not sent) while not ready or a backlog
        of events drains."""
        if not self._ready or self.store.waiting > self.settings.outbox.max_inflight:
            return False
        self._client.publish(topic, make(), qos=0, retain=False)
        return True

    def notify(self, kind: str, arg: Any = None) -> None:
        """Wake the worker for something new: "event", "retained" (a topic)."""
        self._inbox.append((kind, arg))
        self._wake.set()

    # ------------------------------------------------------------------ paho callbacks (paho's thread)

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self._attempt_failed()
            self._problem(describe_refusal(reason, self.settings) + "; retrying, events are kept in the outbox", logging.ERROR)
            return
        self._connected = True
        self.connects += 1
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
        client.subscribe(self._subscriptions)
        self.notify("connected")

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        # paho calls this inside its `except OSError` block, so the cause is still at hand
        self._attempt_failed()
        exc = sys.exc_info()[1]
        self._problem(describe_connect_error(exc, self.settings) + "; retrying, events are kept in the outbox",
                      logging.WARNING)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        was = self._connected
        self._connected = self._ready = False
        self.notify("disconnected")
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
                    self.notify("birth")
                return
            self._on_command(msg.topic, msg.payload, bool(msg.retain))
        except Exception:  # noqa: BLE001 - a bad message must not stop the network thread
            log.exception("mqtt: error handling a message on %s", msg.topic)

    def _attempt_failed(self) -> None:
        """One failed attempt to connect: what the status's `connect_failures` and the log's "after N
        failed attempt(s)" both count (a lost connection is not an attempt)."""
        self.connect_failures += 1
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
            self.published += 1

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
        discovery = self._discovery
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
