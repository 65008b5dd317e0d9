"""MQTT clients for the publisher tests: a recording subscriber that can log in, use TLS and keep
a persistent session (so a broker restart cannot make it miss messages), and a one-shot sender."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from monitor.events import Event


class Recorder:
    """Records (topic, payload, retain) of every message on `topics`; resubscribes on reconnect."""

    def __init__(self, host: str, port: int, topics: str | list[str] = "#", *, client_id: str | None = None,
                 persistent: bool = False, username: str | None = None, password: str | None = None,
                 ca_file: str | None = None, certfile: str | None = None, keyfile: str | None = None):
        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        cid = client_id or f"rec-{id(self)}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=not persistent)
        if username:
            self.client.username_pw_set(username, password)
        if ca_file:
            ctx = ssl.create_default_context(cafile=ca_file)
            if certfile:
                ctx.load_cert_chain(certfile, keyfile)
            self.client.tls_set_context(ctx)
        self.client.reconnect_delay_set(0.2, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("recorder could not subscribe")

    def _on_connect(self, client, _u, _f, reason, _p):
        if not reason.is_failure:
            client.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, _c, _u, msg):
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def wait_until(self, done: Callable[[list[tuple[str, bytes, bool]]], bool], timeout: float = 15.0, what: str = "") -> None:
        """Wait until done(messages) is true; TimeoutError showing the last messages otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not done(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = "\n".join(f"  {t} {p[:120]!r}" for t, p, _ in self.messages[-15:])
                    raise TimeoutError(f"timed out waiting for {what or 'messages'}; last seen:\n{seen}")
                self._cond.wait(left)

    def payloads(self, topic: str) -> list[bytes]:
        with self._cond:
            return [p for t, p, _ in self.messages if t == topic]

    def event_ids(self, topic_suffix: str = "/event") -> list[str]:
        with self._cond:
            return [json.loads(p)["id"] for t, p, _ in self.messages if t.endswith(topic_suffix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def send(host: str, port: int, topic: str, payload: bytes | str, retain: bool = False) -> None:
    """Publish one message at QoS 1 and wait for the broker's acknowledgement."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"send-{time.monotonic_ns()}")
    c.connect(host, port)
    c.loop_start()
    try:
        c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()


def first_occurrences(ids: list[str]) -> list[str]:
    """ids with repeats removed, keeping the first of each (what a hub that drops duplicates sees)."""
    seen: set[str] = set()
    return [i for i in ids if not (i in seen or seen.add(i))]


def make_event(ident: str, rule: str = "fall", **kw: Any) -> Event:
    """A yes/no event as the rule engine makes it, with a chosen id."""
    now = time.time()
    return Event(rule_id=rule, rule_name="Fall", kind=kw.pop("kind", "on"), ts=now, window_start=now - 8,
                 window_end=now, score=kw.pop("score", 0.91), lift=kw.pop("lift", 0.42), id=ident, **kw)


def wait_for(cond: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def has_events(ids: list[str], topic: str) -> Callable[[list[tuple[str, bytes, bool]]], bool]:
    """A Recorder.wait_until predicate: every event id in `ids` arrived on `topic`."""
    return lambda msgs: set(ids) <= {json.loads(p)["id"] for t, p, _ in msgs if t == topic}
