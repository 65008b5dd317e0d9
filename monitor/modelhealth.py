"""Whether the model answers a room: failure streaks and the `model_failed` state, numbers in, state out.

A window whose answer failed (the server away, out of memory, an exception in the engine) decides
nothing, and one failure is no reason to raise a problem: the next window may be answered. A
room whose windows keep failing for `model.failure_timeout` is another matter: no rule of it can
turn ON or OFF, so an ON rule would stay ON with nothing to clear it. Such a room is
`model_failed` (see `Pipeline.check_model`): its ON rules turn OFF with that reason and the
problem is shown, until an answer comes again.

Two streaks count: the room's own (its windows failed, whatever the other rooms got) and the
engine's, over every room (a quiet room asks nothing, yet it cannot be answered while the
model fails for all the others). A streak is consecutive failed answers with no real answer
between them; it counts when its first and latest failures lie `failure_timeout` apart, so a
single failure in a quiet room is never a failed model. A window that asked nothing (silence
below a gate) says nothing either way.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelState:
    """Whether the model answers a room, and if not, a detail for people."""

    ok: bool
    detail: str = field(default="", compare=False)

    @property
    def label(self) -> str:
        return "ok" if self.ok else "model_failed"


MODEL_OK = ModelState(True)


@dataclass(frozen=True)
class StreakView:
    """A snapshot of a streak: `since` (first failure) and `last` (latest), None when it is not failing."""

    since: float | None = None
    last: float = 0.0
    failures: int = 0
    error: str = ""

    @property
    def span(self) -> float:
        return self.last - self.since if self.since is not None else 0.0


class Streak:
    """Consecutive failed answers with no answer between them, on the caller's (monotonic) clock.

    Written by one thread (the room's deciding thread, or the engine thread for the shared one)
    and read by another: `view` gives a consistent snapshot.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._view = StreakView()

    def note(self, result: Any, now: float) -> None:
        """Count an engine `Result`: failed, answered, or (it asked nothing) neither."""
        if result.error is not None:
            self.failed(now, str(result.error))
        elif result.scores or result.texts:
            self.answered()

    def failed(self, now: float, error: str) -> None:
        with self._lock:
            v = self._view
            self._view = StreakView(now if v.since is None else v.since, now, v.failures + 1, error)

    def answered(self) -> None:
        with self._lock:
            self._view = StreakView()

    @property
    def view(self) -> StreakView:
        with self._lock:
            return self._view


def assess(own: StreakView, shared: StreakView | None, limit: float) -> ModelState:
    """`model_failed` when the room's own streak, or the engine's over every room, has lasted `limit` seconds."""
    for streak, whose in ((own, "its windows"), (shared, "the windows of every room")):
        if streak is not None and streak.since is not None and streak.span >= limit:
            return ModelState(False, f"{whose} failed for {streak.span:.0f}s ({streak.failures} failures; "
                                     f"last: {streak.error})")
    return MODEL_OK
