"""The daemon's status, and the rooms' health that feeds it: what MQTT, the page, the metrics and systemd are told.

Every turn of the main loop hands a `Status` to the sinks; every STATUS_EVERY seconds, and at
once when a room's mute, hearing or model changed or the rules were reloaded, it is a report:
MQTT publishes it retained and systemd gets its STATUS= line.
"""

from __future__ import annotations

import json
import logging
import time
import types
from typing import Any

from monitor.config import Config
from monitor.engine.worker import EngineWorker
from monitor.daemon.reloads import Reloads
from monitor.fanout import FanOut, Survive
from monitor.rooms import ActiveRoom
from monitor.sinks import EngineFigures, MqttFigures, RoomCounts, Status
from monitor.systemd import Notifier

log = logging.getLogger(__name__)

STATUS_EVERY = 10.0  # seconds between STATUS= lines and MQTT status updates


class StatusBoard:
    """Computes the status and hands it out (the main thread's); never raises out of `report`."""

    def __init__(self, config: Config, rooms: dict[str, ActiveRoom], sinks: FanOut, notifier: Notifier,
                 survive: Survive, reloads: Reloads | None = None):
        self.config = config
        self.rooms = rooms
        self.sinks = sinks
        self.notifier = notifier
        self.survive = survive
        self.reloads = reloads
        self.worker: EngineWorker | None = None
        self.publisher: Any = None  # the Publisher once it exists
        self._started = time.monotonic()
        self._last_report = 0.0
        self._processed_at_report = (0, time.monotonic())

    # ------------------------------------------------------------------ the rooms' health

    def check_hearing(self, room: ActiveRoom) -> None:
        """Notice a room that stopped (or started again) hearing: OFF events, the problem sensor, metrics."""
        changed, events = room.check_hearing()
        if not changed:
            return
        room.publish(events, None)
        room.announce("hearing")
        self.report()

    def check_model(self) -> None:
        """Notice rooms the model stopped (or started again) answering: OFF events, the Model problem sensor, metrics."""
        changed = False
        for room in self.rooms.values():
            moved, events = room.check_model()
            if moved:
                changed = True
                room.publish(events, None)
                room.announce("model")
        if changed:
            self.report()

    # ------------------------------------------------------------------ the status

    def status(self, rooms: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """The JSON-able status published retained on MQTT and summarised for systemd.

        A one-microphone monitor reports its room's fields at the top level; a whole home has
        them per room under `rooms` (`rooms`: each room's part, when already at hand).
        """
        now = time.monotonic()
        processed_now = sum(r.pipeline.stats.processed for r in self.rooms.values())
        processed, since = self._processed_at_report
        rate = (processed_now - processed) / (now - since) if now > since else 0.0
        engine_ms = self.worker.stats.last_engine_ms if self.worker is not None else 0.0
        if rooms is None:
            rooms = {room_id: room.status() for room_id, room in self.rooms.items()}
        publisher = self.publisher
        out: dict[str, Any] = {  # the publisher adds the version and its own counters
            "uptime_s": round(now - self._started, 1),
            "windows_per_s": round(rate, 3),
            "real_time_factor": round(engine_ms / 1000.0 / self.config.windows.hop, 3),
            "mqtt": "connected" if publisher is not None and publisher.connected else "disconnected",
            "outbox": publisher.outbox_depth if publisher is not None else 0,
            "rules_reload": self.reloads.status() if self.reloads is not None else None,
            "descriptions": ({"answered": self.worker.stats.low_answered, "dropped": self.worker.stats.low_dropped}
                             if self.worker is not None else None),
        }
        if not self.config.multi_room and rooms:
            return {**next(iter(rooms.values())), **out}
        deaf = [room_id for room_id, s in rooms.items() if s["hearing"] not in ("ok", "muted")]
        failed = [room_id for room_id, s in rooms.items() if s["model"] != "ok"]
        listening = [room_id for room_id, s in rooms.items() if s["state"] == "listening"]
        out["state"] = ("deaf" if deaf and len(deaf) == len(rooms) else "model_failed" if failed and not listening
                        else "listening")
        out["model"] = "model_failed" if failed else "ok"
        out["rooms"] = rooms
        return out

    def status_line(self, status: dict[str, Any] | None = None) -> str:
        """systemd's STATUS=: the state and the numbers a person checks first (of `status`, or of now)."""
        s = self.status() if status is None else status
        common = (f"{s['windows_per_s']:.2f} windows/s, RTF {s['real_time_factor']:.2f}, MQTT {s['mqtt']}, "
                  f"outbox {s['outbox']}")
        if "rooms" not in s:
            deaf = f"cannot hear ({s['hearing']}: {s['hearing_detail']}); " if s["hearing"] not in (None, "ok") else ""
            failed = f"model failed ({s['model_detail']}); " if s["model"] != "ok" else ""
            return f"{deaf}{failed}{s['state']}: {common}, lag {s['lag_s'] or 0:.1f}s, skipped {s['skipped']}"
        rooms = s["rooms"]
        cannot = [f"{rid} ({r['hearing']})" for rid, r in rooms.items() if r["hearing"] != "ok"]
        deaf = f"cannot hear: {', '.join(cannot)}; " if cannot else ""
        unanswered = [rid for rid, r in rooms.items() if r["model"] != "ok"]
        failed = f"model failed: {', '.join(unanswered)}; " if unanswered else ""
        listening = sum(r["state"] == "listening" for r in rooms.values())
        skipped = sum(r["skipped"] for r in rooms.values())
        return f"{deaf}{failed}{listening}/{len(rooms)} rooms listening: {common}, skipped {skipped}"

    def snapshot(self, *, report: bool = False, urgent: bool = False) -> Status:
        """The status as the sinks get it."""
        parts = {room_id: room.status() for room_id, room in self.rooms.items()}
        health = self.status(parts)
        rooms = self.rooms.values()
        worker, publisher = self.worker, self.publisher
        engine = None
        if worker is not None:
            w = worker.stats
            engine = EngineFigures(w.batches, w.last_engine_ms, w.last_batch,
                                   w.last_engine_ms / 1000.0 / self.config.windows.hop)
        mqtt = None
        if publisher is not None:
            mqtt = MqttFigures(publisher.connected, publisher.outbox_depth, publisher.outbox_ok)
        return Status(
            health=health, name=self.config.display_name, node=self.config.node_id,
            multi_room=self.config.multi_room,
            rooms=types.MappingProxyType(parts),
            own_mute=types.MappingProxyType({r.id: r.own_mute for r in rooms}),
            muted_all=any(r.all_mute for r in rooms),
            model_failed=types.MappingProxyType({r.id: r.model_state.detail for r in rooms if not r.model_state.ok}),
            counts=types.MappingProxyType({r.id: _counts(r) for r in rooms}), engine=engine, mqtt=mqtt,
            rules_reload_message=self.reloads.message() if self.reloads is not None else None,
            report=report, urgent=urgent)

    # ------------------------------------------------------------------ handing it out

    def tick(self, now: float) -> None:
        """Every turn of the main loop: the sinks get the status; a report when one is due."""
        if now - self._last_report >= STATUS_EVERY:
            self._last_report = now
            self.report()
        else:
            self.show()

    def show(self, urgent: bool = False) -> None:
        """The status to the sinks, not as a report (`urgent`: a person just changed something)."""
        if self.rooms:
            self.sinks.status(self.snapshot(urgent=urgent))

    def report(self) -> None:
        """A status report: to the sinks (MQTT publishes it) and systemd; never raises (it also runs on the way out)."""
        try:
            self._send_report()
        except Exception as exc:  # noqa: BLE001 - a status is not worth the monitor
            self.survive("the status", exc)

    def _send_report(self) -> None:
        if not self.rooms:
            return
        status = self.snapshot(report=True)
        self._processed_at_report = (sum(r.pipeline.stats.processed for r in self.rooms.values()), time.monotonic())
        self.notifier.status(self.status_line(dict(status.health)))
        self.sinks.status(status)
        log.debug("status %s", json.dumps(status.health))


def _counts(room: ActiveRoom) -> RoomCounts:
    p = room.pipeline
    return RoomCounts(windows=p.stats.windows, processed=p.stats.processed, failed=p.stats.failed, skipped=p.skipped,
                      lost_windows=p.lost_windows, lost_seconds=p.source.stats.lost_seconds,
                      overflows=p.source.stats.overflows, lag=p.stats.last_lag)
