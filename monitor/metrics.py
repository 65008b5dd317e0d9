"""Prometheus metrics: what a person watching the monitor on a dashboard wants to know.

`Metrics` holds the series and serves them; `MetricsSink` fills them as one of the daemon's sinks.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from monitor.engine.api import Result
from monitor.events import Event
from monitor.sinks import RoomState, Status

log = logging.getLogger(__name__)


class Metrics:
    """One registry per daemon (tests run several in one process)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        room = ["source"]  # the room (source id) a series is about
        self.windows = Counter("audio_monitor_windows", "Windows cut from the audio", room, registry=r)
        self.processed = Counter("audio_monitor_windows_processed", "Windows answered by the model and passed through the rules", room, registry=r)
        self.skipped = Counter("audio_monitor_windows_skipped", "Windows never answered because the engine fell behind real "
                               "time (not those over audio never captured: see audio_monitor_windows_lost)", room, registry=r)
        self.lost = Counter("audio_monitor_windows_lost", "Windows passed over because their audio was never captured "
                            "(a device or stream outage)", room, registry=r)
        self.lost_seconds = Counter("audio_monitor_capture_lost_seconds", "Seconds of audio never captured (device or "
                                    "stream outages, capture overruns)", room, registry=r)
        self.failed = Counter("audio_monitor_windows_failed", "Windows whose model call failed (out of memory, ...)", room, registry=r)
        self.engine_ms = Histogram("audio_monitor_engine_milliseconds", "Model time per batch of windows (of any rooms)",
                                   buckets=(5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000), registry=r)
        self.batch = Gauge("audio_monitor_engine_batch", "Windows answered together in the latest batch", registry=r)
        self.rtf = Gauge("audio_monitor_real_time_factor", "Model time per batch divided by the hop (above 1: falling behind)", registry=r)
        self.lag = Gauge("audio_monitor_lag_seconds", "Seconds of audio captured since the end of the latest answered window", room, registry=r)
        self.overflows = Counter("audio_monitor_capture_overflows", "Capture overruns (audio lost before it reached the buffer)", room, registry=r)
        self.level = Gauge("audio_monitor_level_dbfs", "RMS level of the latest window", room, registry=r)
        self.score = Gauge("audio_monitor_rule_score", "Latest score of each yes/no rule", ["source", "rule"], registry=r)
        self.lift = Gauge("audio_monitor_rule_lift", "Latest score minus the score on silence", ["source", "rule"], registry=r)
        self.events = Counter("audio_monitor_events", "Events by rule and kind", ["source", "rule", "kind"], registry=r)
        self.outbox = Gauge("audio_monitor_outbox_depth", "Messages waiting for the broker's acknowledgement", registry=r)
        self.outbox_ok = Gauge("audio_monitor_outbox_ok", "1 while the outbox can store events (0: they are published "
                               "directly, not kept across a restart)", registry=r)
        self.mqtt = Gauge("audio_monitor_mqtt_connected", "1 while connected to the MQTT broker", registry=r)
        self.muted = Gauge("audio_monitor_muted", "1 while muted (no questions asked, no audio saved)", room, registry=r)
        self.capture_ok = Gauge("audio_monitor_capture_ok", "1 while the source can hear (not muted, capture working, "
                                "not only digital silence)", room, registry=r)
        self.model_ok = Gauge("audio_monitor_model_ok", "1 while the model answers the source's windows (0: model_failed, "
                              "its windows failing for model.failure_timeout)", room, registry=r)
        self._server: Any = None
        self._totals: dict[str, float] = {}

    def sync_total(self, counter: Counter, source: str, total: float) -> None:
        """Advance a room's `counter` to a running total kept elsewhere (a thread that must not touch metrics)."""
        key = f"{counter._name}/{source}"
        delta = total - self._totals.get(key, 0.0)
        if delta > 0:
            counter.labels(source).inc(delta)
            self._totals[key] = total

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint; the port it listens on (port 0 picks a free one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class MetricsSink:
    """Per-room series (level, each rule's score and lift, events by kind, mute, hearing, the model,
    the running totals and lag) and the daemon's (engine time, batch, outbox, broker)."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self._batches_seen = 0

    def window(self, room: str, result: Result) -> None:
        m = self.metrics
        m.level.labels(room).set(result.window.dbfs)
        for key, score in result.scores.items():
            m.score.labels(room, key).set(score.score)
            m.lift.labels(room, key).set(score.lift)

    def event(self, room: str, event: Event) -> None:
        self.metrics.events.labels(room, event.rule_id, event.kind).inc()

    def room_state(self, room: str, state: RoomState) -> None:
        m = self.metrics
        if "room" in state.changed:
            for counter in (m.windows, m.processed, m.failed, m.skipped, m.lost, m.lost_seconds, m.overflows):
                counter.labels(room)  # every room's series exists from the start, at 0
        if "mute" in state.changed:
            m.muted.labels(room).set(1 if state.muted else 0)
        if "hearing" in state.changed:
            m.capture_ok.labels(room).set(1 if state.hearing.ok else 0)
        if "model" in state.changed:
            m.model_ok.labels(room).set(1 if state.model.ok else 0)

    def status(self, status: Status) -> None:
        """The totals kept by the rooms' threads carried into the counters; the engine's latest batch; the broker."""
        m = self.metrics
        for room, c in status.counts.items():
            m.sync_total(m.windows, room, c.windows)
            m.sync_total(m.processed, room, c.processed)
            m.sync_total(m.failed, room, c.failed)
            m.sync_total(m.skipped, room, c.skipped)
            m.sync_total(m.lost, room, c.lost_windows)
            m.sync_total(m.lost_seconds, room, c.lost_seconds)
            m.sync_total(m.overflows, room, c.overflows)
            m.lag.labels(room).set(c.lag)
        engine = status.engine
        if engine is not None and engine.batches != self._batches_seen:
            self._batches_seen = engine.batches
            m.engine_ms.observe(engine.last_engine_ms)
            m.batch.set(engine.last_batch)
            m.rtf.set(engine.real_time_factor)
        if status.mqtt is not None:
            m.outbox.set(status.mqtt.outbox_depth)
            m.outbox_ok.set(1 if status.mqtt.outbox_ok else 0)
            m.mqtt.set(1 if status.mqtt.connected else 0)
