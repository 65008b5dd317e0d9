"""Rule reloads while the daemon runs: on request (SIGHUP, MQTT, the page) or when a rule file changed.

One reloader per distinct rules path, shared by the rooms naming it. A reload that fails keeps the
rules that run (the reloader logs why); one that succeeds swaps them in every room of that path
between windows, and the rooms tell the sinks (new entities, the rules' states).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monitor.rooms import ActiveRoom
from monitor.rules import RuleReloader, RuleSet

log = logging.getLogger(__name__)

RELOAD_POLL = 2.0  # seconds between checks of the rule files


class Reloads:
    """The rule reloaders of a daemon's rooms (the main thread's)."""

    def __init__(self, rulesets: Mapping[Path, RuleSet], rooms: dict[str, ActiveRoom], requested: threading.Event):
        self.reloaders = {path: RuleReloader(path) for path in rulesets}
        self.rooms = rooms
        self.requested = requested
        self._last_poll = time.monotonic()

    def tick(self, now: float) -> bool:
        """Reload what was asked for or changed; True when anything was reloaded (or tried)."""
        if self.requested.is_set():
            self.requested.clear()
            self.reload("reload requested", list(self.reloaders))
            return True
        if now - self._last_poll >= RELOAD_POLL:
            self._last_poll = now
            changed = [path for path, reloader in self.reloaders.items() if reloader.changed()]
            if changed:
                self.reload("rule files changed", changed)
                return True
        return False

    def reload(self, why: str, paths: list[Path]) -> None:
        for path in paths:
            reloader = self.reloaders[path]
            log.info("%s: reloading %s", why, path)
            outcome = reloader.reload()
            if not outcome.ok or outcome.ruleset is None:
                continue
            for room in self.rooms.values():
                if room.room.rules != path:
                    continue
                events = room.pipeline.swap_rules(outcome.ruleset)
                room.publish(events, None)
                room.announce("rules")

    def status(self) -> Any:
        """The latest reload of the one rules path, or of each path (keyed by path) when rooms differ."""
        if len(self.reloaders) == 1:
            return next(iter(self.reloaders.values())).status()
        return {str(path): r.status() for path, r in self.reloaders.items()} or None

    def message(self) -> str | None:
        """The latest reload's message when every room shares one rules path (what the page shows)."""
        last = next(iter(self.reloaders.values())).last if len(self.reloaders) == 1 else None
        return last.message if last is not None else None
