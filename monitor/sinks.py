"""Where what the rooms hear goes: one small interface, and the records it carries.

The daemon hands every answered window, every event, every change of a room's lasting state and
its status to its sinks — MQTT first (the alarm path), then the metrics, the score log and the
live page — through one `monitor.fanout.FanOut`, which keeps a failing sink from stopping the
others. A sink owns nothing of another's and knows no other sink; each lives with the part it
feeds (`monitor.publish.sink`, `monitor.web.sink`, `monitor.metrics`, `monitor.scorelog`).

The records are snapshots taken on the daemon's main thread for this one call: frozen, and a
sink must not change what they hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from monitor.engine.api import Result
from monitor.events import Event
from monitor.hearing import Hearing
from monitor.modelhealth import ModelState
from monitor.rules import RuleSet

Part = Literal["room", "mute", "hearing", "model", "rules", "switches"]
NEW_ROOM: frozenset[Part] = frozenset({"room", "mute", "hearing", "model", "rules"})
"""What a room's first announcement names as changed: everything, and that the room is new (new
rules bring their switches: `switches` names a change of the switches alone)."""


@dataclass(frozen=True)
class RoomState:
    """One room's lasting state: what MQTT keeps retained, the page's panel, the per-room gauges.

    Handed to every sink whenever a part of it changes; `changed` names those parts (`room`: the
    room is shown for the first time, with all the other parts). A sink shows what changed; the
    other parts are as it last saw them.
    """

    name: str
    own_mute: bool  # the room's own switch (a one-room monitor has only this one)
    muted: bool  # in effect: its own switch or the whole-home one
    hearing: Hearing
    model: ModelState
    rules: RuleSet
    rule_states: Mapping[str, bool]  # rule id -> ON now (what a new rule set starts from)
    clips: Path | None  # the folder its evidence clips are saved in
    changed: frozenset[Part]
    rules_off: frozenset[str] = frozenset()  # rule ids switched off by a person (`switches`): not asked


@dataclass(frozen=True)
class RoomCounts:
    """A room's running totals, kept by its capture and windows threads, and its lag."""

    windows: int
    processed: int
    failed: int
    skipped: int
    lost_windows: int
    lost_seconds: float
    overflows: int
    lag: float  # seconds of audio captured since the end of the latest answered window


@dataclass(frozen=True)
class EngineFigures:
    """The shared engine's latest batch."""

    batches: int  # batches answered since start: a sink sees a new one when this moved
    last_engine_ms: float
    last_batch: int  # windows in it
    real_time_factor: float  # model time per batch divided by the hop


@dataclass(frozen=True)
class MqttFigures:
    """The broker connection and the outbox, as the publisher reports them."""

    connected: bool
    outbox_depth: int
    outbox_ok: bool


@dataclass(frozen=True)
class Status:
    """The daemon's health, handed to every sink on each turn of the main loop.

    `health` is the JSON status (MQTT's retained `info`, the source of the systemd line); the other
    fields are what sinks show beside it. `report` marks a status report — every few seconds, and
    at once when something changed —: MQTT publishes only those. `urgent`: a person just changed
    something (a mute): a page shows it now instead of at its own pace.
    """

    health: Mapping[str, Any]
    name: str  # the display name
    node: str  # the node id
    multi_room: bool
    rooms: Mapping[str, Mapping[str, Any]]  # each room's part of the status (`ActiveRoom.status`)
    own_mute: Mapping[str, bool]  # each room's own switch
    muted_all: bool  # the whole-home switch
    model_failed: Mapping[str, str]  # the rooms the model does not answer -> why
    counts: Mapping[str, RoomCounts]
    engine: EngineFigures | None
    mqtt: MqttFigures | None  # None before the publisher exists
    rules_reload_message: str | None  # the latest reload's message, when every room shares one rules path
    report: bool = False
    urgent: bool = False


class Sink(Protocol):
    """A consumer of what the rooms hear. Called on the daemon's main thread only; must not block."""

    def window(self, room: str, result: Result) -> None:
        """An answered window of `room` (after its rules decided it)."""
        ...

    def event(self, room: str, event: Event) -> None:
        """An event of `room` (its clip, if any, already attached)."""
        ...

    def room_state(self, room: str, state: RoomState) -> None:
        """A part of `room`'s lasting state changed (see `RoomState.changed`)."""
        ...

    def status(self, status: Status) -> None:
        """The daemon's health, on each turn of the main loop (see `Status.report`)."""
        ...
