"""Everything a room says reaches every sink through one fan-out: windows, events, its lasting state, the status.

The fan-out first (a sink that raises stops none of the others, and each of its errors is logged
in full once), then a real room's `RoomState` and the daemon's `Status` through the real sinks:
MQTT on a real broker, the metrics registry, the page's hub, the score log.
"""

from __future__ import annotations

import json
import logging
import types
from pathlib import Path

import numpy as np
import soundfile as sf
from helpers.mqtt_clients import make_event, wait_for
from prometheus_client import generate_latest

from monitor.config import load_config
from monitor.engine.api import Result, Score
from monitor.engine.worker import EngineWorker
from monitor.fanout import FanOut
from monitor.hearing import HEARING_OK
from monitor.metrics import Metrics, MetricsSink
from monitor.modelhealth import MODEL_OK
from monitor.publish.publisher import Publisher
from monitor.publish.settings import MqttSettings
from monitor.publish.sink import MqttSink
from monitor.rooms import ActiveRoom
from monitor.rules import load_rules, parse_rules
from monitor.scorelog import ScoreLog, ScoreLogSink
from monitor.sinks import NEW_ROOM, EngineFigures, MqttFigures, RoomCounts, RoomState, Status
from monitor.testing.signals import make_window, noise
from monitor.web.hub import Hub
from monitor.web.sink import WebSink
from tests.daemon_support import LOUD_RULES, write_config

RATE = 16_000
NODE = "test_node"


class Recording:
    """A sink that keeps what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, object]] = []

    def window(self, room: str, result: Result) -> None:
        self.calls.append(("window", room, result))

    def event(self, room: str, event) -> None:
        self.calls.append(("event", room, event))

    def room_state(self, room: str, state: RoomState) -> None:
        self.calls.append(("room_state", room, state))

    def status(self, status: Status) -> None:
        self.calls.append(("status", "", status))


class Broken:
    """A sink with a bug in every method (each on its own line)."""

    def window(self, room: str, result: Result) -> None:
        raise RuntimeError("window bug")

    def event(self, room: str, event) -> None:
        raise KeyError("event bug")

    def room_state(self, room: str, state: RoomState) -> None:
        raise ValueError("state bug")

    def status(self, status: Status) -> None:
        raise ZeroDivisionError("status bug")


def _state(changed=NEW_ROOM, **kw) -> RoomState:
    fields = dict(name="Kitchen", own_mute=False, muted=False, hearing=HEARING_OK, model=MODEL_OK,
                  rules=parse_rules(LOUD_RULES), rule_states=types.MappingProxyType({"loud": False}), clips=None,
                  changed=frozenset(changed))
    return RoomState(**{**fields, **kw})


def _status(report: bool = False, urgent: bool = False, **kw) -> Status:
    room = {"state": "listening", "hearing": "ok", "model": "ok", "skipped": 0}
    fields = dict(health={"mqtt": "connected", "windows_per_s": 1.0, "outbox": 0, **room}, name="Home", node=NODE,
                  multi_room=False, rooms={NODE: room}, own_mute={NODE: False}, muted_all=False, model_failed={},
                  counts={NODE: RoomCounts(5, 4, 1, 0, 0, 0.0, 0, 0.5)}, engine=EngineFigures(1, 120.0, 2, 0.12),
                  mqtt=MqttFigures(True, 0, True), rules_reload_message=None, report=report, urgent=urgent)
    return Status(**{**fields, **kw})


# ---------------------------------------------------------------------------- the fan-out


def test_a_failing_sink_stops_no_other_sink_and_each_of_its_errors_is_logged_in_full_once(caplog) -> None:
    before, after = Recording(), Recording()
    fan = FanOut([before, Broken(), after])
    fan.add(Broken())  # a second sink with the same bugs: the same places, not logged again
    result = Result(make_window(noise(1.0), seq=1), {"loud": Score(0.9, 0.1)})
    event, state, status = make_event("e-1", rule="loud"), _state(), _status()
    caplog.set_level(logging.DEBUG, logger="monitor.fanout")
    for _ in range(3):
        fan.window("kitchen", result)
        fan.event("kitchen", event)
        fan.room_state("kitchen", state)
        fan.status(status)
    expected = [("window", "kitchen", result), ("event", "kitchen", event), ("room_state", "kitchen", state),
                ("status", "", status)] * 3
    assert before.calls == expected and after.calls == expected  # the sink after the broken one got everything
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert sorted(str(r.exc_info[1]) for r in errors) == ["'event bug'", "state bug", "status bug", "window bug"]
    assert sorted(r.getMessage().split(";")[0] for r in errors) == [
        "unexpected error while handling Broken on a window of kitchen",
        "unexpected error while handling Broken on event loud on id=e-1",
        "unexpected error while handling Broken on the state of kitchen (hearing, model, mute, room, rules)",
        "unexpected error while handling Broken on the status",
    ]
    again = [r for r in caplog.records if r.levelno == logging.DEBUG and r.getMessage().startswith("error again")]
    assert len(again) == 4 * 3 * 2 - 4  # every later error, of both broken sinks, at debug only


def test_the_alarm_path_can_be_put_first_among_the_sinks() -> None:
    first, second, mqtt = Recording(), Recording(), Recording()
    fan = FanOut([first, second])
    fan.add(mqtt, first=True)
    assert fan.sinks == [mqtt, first, second]


# ---------------------------------------------------------------------------- a room's state, to every sink


def _room(tmp_path: Path, sinks: FanOut) -> ActiveRoom:
    recording = tmp_path / "room.wav"
    sf.write(recording, np.zeros(RATE, dtype=np.float32), RATE)
    config = load_config(write_config(tmp_path, tmp_path, 1883, source=f"file:{recording}", node=NODE))
    worker = EngineWorker(config.model, on_result=lambda r: None)  # never started: no model is needed here
    return ActiveRoom(config, config.rooms[0], load_rules(config.rules), worker, tmp_path / "state", sinks,
                      lambda what, exc: None)


def _value(metrics: Metrics, line: str) -> float:
    text = generate_latest(metrics.registry).decode()
    (found,) = [row for row in text.splitlines() if row.startswith(line + " ")]
    return float(found.rsplit(" ", 1)[1])


def test_a_rooms_state_reaches_mqtt_the_page_and_the_metrics_and_only_what_changed(broker, recorders,
                                                                                 tmp_path) -> None:
    settings = MqttSettings.model_validate({"host": broker.host, "port": broker.port, "topic_prefix": "am",
                                            "reconnect_min": 0.2, "reconnect_max": 1, "birth_timeout": 0.3})
    publisher = Publisher(settings, NODE, "Test", tmp_path / "state")
    metrics, hub, scores = Metrics(), Hub(), ScoreLog(tmp_path / "scores.jsonl")
    sinks = FanOut([MqttSink(publisher), MetricsSink(metrics), ScoreLogSink(scores), WebSink(hub)])
    room = _room(tmp_path, sinks)
    rec = recorders(broker, f"am/{NODE}/#")
    try:
        room.set_muted(own=True)
        room.check_hearing()  # muted: the room cannot hear
        room.announce(*NEW_ROOM)
        publisher.start()
        rec.wait_until(lambda m: {f"am/{NODE}/mute", f"am/{NODE}/hearing", f"am/{NODE}/loud/state",
                                  f"am/{NODE}/loud/enabled"} <= {t for t, _, _ in m}, what="the room's retained state")
        assert rec.payloads(f"am/{NODE}/mute") == [b"ON"]
        assert json.loads(rec.payloads(f"am/{NODE}/hearing")[0]) == {"problem": "ON", "reason": "muted",
                                                                      "detail": "muted by the user", "capture": "ok"}
        assert rec.payloads(f"am/{NODE}/loud/state") == [b"OFF"]
        assert rec.payloads(f"am/{NODE}/loud/enabled") == [b"ON"]  # the rule's switch
        # the page: the room's panel with its rules and clips folder
        (panel,) = json.loads(hub.snapshot_json())["rooms"]
        assert (panel["id"], [r["id"] for r in panel["rules"]]) == (NODE, ["loud"])
        assert hub.rooms[NODE].clips == room.clips.folder
        # the metrics: every series of the room exists, mute and hearing as they are
        source = f'source="{NODE}"'
        assert _value(metrics, f"audio_monitor_muted{{{source}}}") == 1
        assert _value(metrics, f"audio_monitor_capture_ok{{{source}}}") == 0
        assert _value(metrics, f"audio_monitor_model_ok{{{source}}}") == 1
        assert _value(metrics, f"audio_monitor_windows_total{{{source}}}") == 0

        # only the mute changed: the switch and its gauge move; the device and the page's rules are not sent again
        seen, posted = len(rec.messages), hub._seq  # what the page has been sent so far
        room.set_muted(own=False)
        room.announce("mute")
        rec.wait_until(lambda m: (f"am/{NODE}/mute", b"OFF", False) in m[seen:], what="the mute switch OFF")
        assert _value(metrics, f"audio_monitor_muted{{{source}}}") == 0
        assert hub._seq == posted
        wait_for(lambda: publisher.outbox_depth == 0)
        assert [t for t, _, _ in rec.messages[seen:]] == [f"am/{NODE}/mute"]
    finally:
        publisher.stop(timeout=1)
        scores.close()
    assert not (tmp_path / "scores.jsonl").exists()  # a room's state is not a window: the score log has nothing


def test_the_status_reaches_each_sink_at_its_own_pace(broker, recorders, tmp_path) -> None:
    settings = MqttSettings.model_validate({"host": broker.host, "port": broker.port, "topic_prefix": "am",
                                            "reconnect_min": 0.2, "reconnect_max": 1, "birth_timeout": 0.3})
    publisher = Publisher(settings, NODE, "Test", tmp_path / "state")
    metrics, hub, now = Metrics(), Hub(), [100.0]
    page = WebSink(hub, clock=lambda: now[0])
    sinks = FanOut([MqttSink(publisher), MetricsSink(metrics), page])
    rec = recorders(broker, f"am/{NODE}/#")
    publisher.start()
    try:
        sinks.status(_status())
        wait_for(lambda: publisher._ready, what="the publisher")
        rec.wait_until(lambda m: any(t == f"am/{NODE}/model" for t, _, _ in m), what="the Model sensor")
        assert json.loads(rec.payloads(f"am/{NODE}/model")[-1])["problem"] == "OFF"
        # MQTT: the status itself only on a report
        sinks.status(_status(report=True))
        rec.wait_until(lambda m: any(t == f"am/{NODE}/info" for t, _, _ in m), what="the status report")
        assert json.loads(rec.payloads(f"am/{NODE}/info")[-1])["state"] == "listening"
        failed = {NODE: "its windows failed for 31s (3 failures; last: boom)"}
        sinks.status(_status(model_failed=failed))
        rec.wait_until(lambda m: json.loads(rec.payloads(f"am/{NODE}/model")[-1])["problem"] == "ON",
                       what="the Model sensor ON")
        assert json.loads(rec.payloads(f"am/{NODE}/model")[-1])["detail"] == failed[NODE]
        assert len(rec.payloads(f"am/{NODE}/info")) == 1
        # the page: at most once a second, at once when a person changed something
        assert hub.status["windows_per_s"] == 1.0 and hub.status["rooms"][NODE]["muted_own"] is False
        now[0] += 0.5
        sinks.status(_status(own_mute={NODE: True}))
        assert hub.status["rooms"][NODE]["muted_own"] is False
        sinks.status(_status(own_mute={NODE: True}, urgent=True))
        assert hub.status["rooms"][NODE]["muted_own"] is True
        # the metrics: the rooms' totals and the engine's latest batch
        source = f'source="{NODE}"'
        assert _value(metrics, f"audio_monitor_windows_processed_total{{{source}}}") == 4
        assert _value(metrics, f"audio_monitor_windows_failed_total{{{source}}}") == 1
        assert _value(metrics, f"audio_monitor_lag_seconds{{{source}}}") == 0.5
        assert _value(metrics, "audio_monitor_engine_milliseconds_count") == 1  # one batch, however many statuses
        assert _value(metrics, "audio_monitor_engine_batch") == 2 and _value(metrics, "audio_monitor_mqtt_connected") == 1
    finally:
        publisher.stop(timeout=1)


def test_the_systemd_status_line_gives_the_rate_its_report_measured(tmp_path) -> None:
    """STATUS= says how many windows a second were answered since the last report (it said 0.00 always:
    the line was computed after the report had started the next interval)."""
    from monitor.daemon import Daemon
    from monitor.systemd import Notifier
    from tests.daemon_support import NotifySocket

    recording = tmp_path / "room.wav"
    sf.write(recording, np.zeros(RATE, dtype=np.float32), RATE)
    config = load_config(write_config(tmp_path, tmp_path, 1883, source=f"file:{recording}", node=NODE,
                                      extra={"web.enabled": False}))
    sock = NotifySocket(tmp_path / "notify.sock")
    try:
        daemon = Daemon(config, notifier=Notifier(sock.path))
        daemon._prepare()
        pipeline = daemon.rooms[NODE].pipeline
        for seq in range(1, 6):
            pipeline.process(Result(make_window(noise(1.0), seq=seq, start=seq * RATE), {"loud": Score(0.2, 0.0)}))
        daemon.board.report()
        sock.wait("STATUS=", timeout=10)
    finally:
        sock.close()
    (line,) = [m for _, m in sock.messages if m.startswith("STATUS=")]
    rate = float(line.split(": ", 1)[1].split(" windows/s")[0])
    assert rate > 0, line
