"""The live page as one of the daemon's sinks: windows, events, each room's panel, rules and their switches, the status line.

Everything goes into the `Hub` (which never waits for a client). The status line is refreshed at
most once a second, at once when a person just changed something (a mute).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monitor.engine.api import Result
from monitor.events import Event
from monitor.sinks import RoomState, Status
from monitor.web.hub import Hub, rule_info

STATUS_EVERY = 1.0  # seconds between status updates on the page


def page_status(status: Status) -> dict[str, Any]:
    """What the page's status line and mute buttons show."""
    health = status.health
    return {"name": status.name, "node": status.node, "multi_room": status.multi_room,
            "mqtt": health["mqtt"], "windows_per_s": health["windows_per_s"], "outbox": health["outbox"],
            "muted_all": status.muted_all, "rules_reload_message": status.rules_reload_message,
            "rooms": {rid: {**room, "muted_own": status.own_mute[rid]} for rid, room in status.rooms.items()}}


class WebSink:
    """Feeds the page's `Hub` from the daemon's main thread."""

    def __init__(self, hub: Hub, clock: Callable[[], float] = time.monotonic):
        self.hub = hub
        self.clock = clock
        self._last_status: float | None = None

    def window(self, room: str, result: Result) -> None:
        self.hub.add_window(room, result)

    def event(self, room: str, event: Event) -> None:
        clip = f"clips/{room}/{Path(event.clip).name}" if event.clip else None
        self.hub.add_event(room, event, clip)

    def room_state(self, room: str, state: RoomState) -> None:
        """A new room gets its panel (and its clips folder is served); new rules redraw its lanes."""
        if "room" in state.changed:
            self.hub.add_room(room, state.name, state.clips)
        if "rules" in state.changed:
            self.hub.set_rules(room, rule_info(state.rules), state.rule_states, time.time())
        if "rules" in state.changed or "switches" in state.changed:
            self.hub.set_switches(room, sorted(state.rules_off))

    def status(self, status: Status) -> None:
        now = self.clock()
        if status.urgent or self._last_status is None or now - self._last_status >= STATUS_EVERY:
            self._last_status = now
            self.hub.set_status(page_status(status))
