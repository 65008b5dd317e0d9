"""The one place that hands everything to every sink, each on its own.

A sink that raises is logged and skipped, and the sinks after it still get the window, the event,
the room's state or the status: no consumer (a bug in a metric, a page) can stop an alarm. An
error from the same place is logged in full once, later ones at debug, so a bug hit on every
window neither stops the monitor nor floods the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from monitor.engine.api import Result
from monitor.events import Event
from monitor.sinks import RoomState, Sink, Status

log = logging.getLogger(__name__)

Survive = Callable[[str, BaseException], None]
"""(what was being handled, the exception): log it and let the caller carry on."""


class LogOnce:
    """A `Survive` that logs the traceback the first time an error comes from a given place
    (exception type, file and line of the innermost frame) and later ones from there at debug."""

    def __init__(self, logger: logging.Logger = log):
        self.logger = logger
        self._seen: set[tuple[str, str, int]] = set()

    def __call__(self, what: str, exc: BaseException) -> None:
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = (type(exc).__name__, tb.tb_frame.f_code.co_filename if tb else "", tb.tb_lineno if tb else 0)
        if where in self._seen:
            self.logger.debug("error again while handling %s: %r", what, exc)
            return
        self._seen.add(where)
        self.logger.error("unexpected error while handling %s; carrying on (logged in full once)", what, exc_info=exc)


class FanOut:
    """The daemon's sinks in order (MQTT first), each called on its own; itself a `Sink`."""

    def __init__(self, sinks: Iterable[Sink] = (), survive: Survive | None = None):
        self.sinks: list[Sink] = list(sinks)
        self.survive = survive if survive is not None else LogOnce()

    def add(self, sink: Sink, *, first: bool = False) -> None:
        """Add a sink last, or `first` (the alarm path goes before everything else)."""
        self.sinks.insert(0 if first else len(self.sinks), sink)

    def window(self, room: str, result: Result) -> None:
        for sink in self.sinks:
            try:
                sink.window(room, result)
            except Exception as exc:  # noqa: BLE001 - a sink is not worth the others
                self.survive(f"{type(sink).__name__} on a window of {room}", exc)

    def event(self, room: str, event: Event) -> None:
        for sink in self.sinks:
            try:
                sink.event(room, event)
            except Exception as exc:  # noqa: BLE001 - the other sinks (and alarms) must still go out
                self.survive(f"{type(sink).__name__} on event {event.rule_id} {event.kind} id={event.id}", exc)

    def room_state(self, room: str, state: RoomState) -> None:
        for sink in self.sinks:
            try:
                sink.room_state(room, state)
            except Exception as exc:  # noqa: BLE001 - one consumer's bug must not hide the state from the others
                self.survive(f"{type(sink).__name__} on the state of {room} ({', '.join(sorted(state.changed))})", exc)

    def status(self, status: Status) -> None:
        for sink in self.sinks:
            try:
                sink.status(status)
            except Exception as exc:  # noqa: BLE001 - a status is not worth the monitor
                self.survive(f"{type(sink).__name__} on the status", exc)
