"""Where answered windows and decided events go: one small interface, fanned out in one place.

The daemon hands every answered window and every event of every room to its sinks in order —
MQTT first (the alarm path), then the metrics, the score log and the live page
(`monitor.web.hub.WebSink`). A sink owns nothing of another's, and one that fails is logged and
skipped by the caller, never the end of the others.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from monitor.engine.api import Result
from monitor.events import Event

if TYPE_CHECKING:
    from monitor.metrics import Metrics
    from monitor.publish import Publisher
    from monitor.scorelog import ScoreLog

log = logging.getLogger(__name__)


class Sink(Protocol):
    """A consumer of what the rooms hear. Called on the daemon's main thread only; must not block."""

    def window(self, room: str, result: Result) -> None:
        """An answered window of `room` (after its rules decided it)."""
        ...

    def event(self, room: str, event: Event) -> None:
        """An event of `room` (its clip, if any, already attached)."""
        ...


class MqttSink:
    """Events (durably, via the outbox) and states, texts, levels and scores on each room's topics."""

    def __init__(self, publisher: Publisher):
        self.publisher = publisher

    def window(self, room: str, result: Result) -> None:
        channel = self.publisher.room(room)
        channel.publish_level(result.window.dbfs)
        if result.scores:
            channel.publish_scores({k: {"score": round(s.score, 4), "lift": round(s.lift, 4)}
                                    for k, s in result.scores.items()})

    def event(self, room: str, event: Event) -> None:
        channel = self.publisher.room(room)
        route = channel.publish_event(event)
        # logged once the event is safe (stored, or handed over directly): the log never claims more.
        # What was said stays out of the log at INFO (clips of text rules are off for the same reason):
        # only that there is a transcript and its length; the words at DEBUG.
        detail = (f" score={event.score:.3f}" if event.score is not None
                  else f" text={len(event.text)} chars" if event.text
                  else f" reason={event.reason}" if event.reason else "")
        where = "" if room == self.publisher.node_id else f"{room}/"
        log.info("event %s%s %s id=%s%s via=%s", where, event.rule_id, event.kind, event.id, detail, route)
        if event.text:
            log.debug("event %s%s %s id=%s text=%r", where, event.rule_id, event.kind, event.id, event.text)
        if event.kind in ("on", "off"):
            channel.publish_state(event.rule_id, event.kind == "on")
        elif event.kind == "text" and event.text is not None:
            channel.publish_text(event.rule_id, event.text)


class MetricsSink:
    """Per-room Prometheus series: level, each rule's score and lift, events by kind."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def window(self, room: str, result: Result) -> None:
        m = self.metrics
        m.level.labels(room).set(result.window.dbfs)
        for key, score in result.scores.items():
            m.score.labels(room, key).set(score.score)
            m.lift.labels(room, key).set(score.lift)

    def event(self, room: str, event: Event) -> None:
        self.metrics.events.labels(room, event.rule_id, event.kind).inc()


class ScoreLogSink:
    """Every window's level, speech ratio and scores as JSON lines (the format replay writes)."""

    def __init__(self, scorelog: ScoreLog):
        self.scorelog = scorelog

    def window(self, room: str, result: Result) -> None:
        self.scorelog.write(result)

    def event(self, room: str, event: Event) -> None:
        pass
