"""Putting a daemon together: the one engine thread, the sinks, every room, and last the publisher.

The sinks that need no broker (metrics, score log, page) are in the fan-out before the rooms
exist, so that what the rooms say from their first moment is counted; MQTT joins first in line
(the alarm path) once its settings have proved usable, and then every room is announced to all
of them at once, before the publisher connects: the broker gets the retained state with its
first connection.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monitor.audio.sources import AudioSource, SourceError
from monitor.config import Config
from monitor.daemon.controls import Controls
from monitor.daemon.preflight import open_publisher, source_error
from monitor.engine.api import Result
from monitor.engine.worker import EngineWorker
from monitor.fanout import FanOut, Survive
from monitor.incidents.desk import IncidentDesk
from monitor.metrics import Metrics, MetricsSink
from monitor.pipeline import yes_no_prompts
from monitor.rooms import ActiveRoom
from monitor.rules import RuleSet
from monitor.scorelog import ScoreLog, ScoreLogSink
from monitor.sinks import NEW_ROOM

if TYPE_CHECKING:
    from monitor.publish.publisher import Publisher
    from monitor.web.live import LivePage


def make_worker(config: Config, rulesets: Mapping[Path, RuleSet], on_result: Callable[[Result], None],
                engine_factory: Callable[..., Any] | None) -> EngineWorker:
    """The engine thread every room shares; it calibrates the questions of all the rule sets."""
    prompts = sorted({p for rs in rulesets.values() for p in yes_no_prompts(rs)})
    return EngineWorker(config.model, on_result=on_result, inbox_size=2, engine_factory=engine_factory,
                        calibrate=prompts, calibrate_seconds=config.windows.length,
                        low_max_wait=config.describe.max_lag)


def add_incidents(config: Config, rooms: Mapping[str, ActiveRoom], worker: EngineWorker,
                  wake: Callable[[], None]) -> IncidentDesk:
    """The incidents of every room: each room's ON events pass through the desk before the sinks get them."""
    desk = IncidentDesk(config, rooms, worker, wake)
    for room in rooms.values():
        room.stamp = desk.stamp
    return desk


def add_local_sinks(config: Config, sinks: FanOut, metrics: Metrics, page: LivePage | None) -> ScoreLog | None:
    """The metrics, the score log (when `scores_log` names one) and the page; the score log, to be closed at the end."""
    sinks.add(MetricsSink(metrics))
    scorelog = ScoreLog(config.scores_log) if config.scores_log is not None else None
    if scorelog is not None:
        sinks.add(ScoreLogSink(scorelog))
    if page is not None:
        sinks.add(page.sink)
    return scorelog


def make_rooms(config: Config, rulesets: Mapping[Path, RuleSet], worker: EngineWorker, state_dir: Path,
               sinks: FanOut, survive: Survive, controls: Controls, rooms: dict[str, ActiveRoom], *,
               source: AudioSource | None, missing: Mapping[str, str]) -> None:
    """Every configured room into `rooms`, its switches as left; those in `missing` deaf from the start.

    `source`: the first room's source, handed in (tests).
    """
    everywhere = controls.home_muted()
    for i, room in enumerate(config.rooms):
        try:
            active = ActiveRoom(config, room, rulesets[room.rules], worker, state_dir, sinks, survive,
                                source=source if i == 0 else None)
        except SourceError as exc:
            raise source_error(room, exc) from None
        controls.restore(active, everywhere)
        if room.id in missing:  # deaf from the start, said above: announced so, and not waited for
            active.pipeline.source.missing(missing[room.id])
            active.pipeline.check_hearing()
        rooms[room.id] = active


def add_publisher(config: Config, state_dir: Path, rooms: Mapping[str, ActiveRoom], sinks: FanOut,
                  on_command: Callable[[str, str, str], None]) -> Publisher:
    """The publisher and its sink, first in line; then every room is announced to every sink.

    The publisher is not started: the caller hands out the first status, then starts it.
    """
    from monitor.publish.sink import MqttSink

    whole_home = [(r.id, r.name) for r in rooms.values()] if config.multi_room else None
    publisher = open_publisher(config, state_dir, on_command, whole_home)
    sinks.add(MqttSink(publisher), first=True)
    for room in rooms.values():
        room.announce(*NEW_ROOM)
    return publisher
