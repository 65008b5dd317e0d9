"""The daemon's way out, within `stop_timeout`: the outbox and `offline` before waiting on any source.

systemd kills the daemon `TimeoutStopSec` after SIGTERM, and then the broker misses what the
outbox still holds and the hub sees the Last Will instead of `offline`. So capture and windows of
every room are told to stop at once, in the background (a hung device or stream costs nothing
here); the window in flight gets at most half the time; the answers that came are decided and
published; the publisher flushes what the broker takes in the rest (at least FLUSH_AT_LEAST);
only then is there any waiting for the sources, until the deadline. A step that fails is logged
and the next one still runs. The process itself then has EXIT_GRACE seconds to end
(`exit_within`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from monitor.daemon.status import StatusBoard
from monitor.engine.worker import EngineWorker
from monitor.fanout import Survive
from monitor.metrics import Metrics
from monitor.rooms import ActiveRoom
from monitor.scorelog import ScoreLog
from monitor.systemd import Notifier

log = logging.getLogger(__name__)

FLUSH_AT_LEAST = 2.0  # seconds the publisher always gets on the way out, to flush and say `offline`
EXIT_GRACE = 3.0  # seconds the interpreter's own exit may take after the daemon stopped (see exit_within)


def shut_down(*, timeout: float, notifier: Notifier, rooms: Mapping[str, ActiveRoom], worker: EngineWorker | None,
              publisher: Any, board: StatusBoard, scorelog: ScoreLog | None, metrics: Metrics, page: Any,
              survive: Survive) -> None:
    """Stop everything of a running daemon in order, within `timeout` seconds (see the module doc)."""
    notifier.stopping()
    deadline = time.monotonic() + timeout
    stopping: list[tuple[str, threading.Thread]] = []

    def left() -> float:
        return max(0.0, deadline - time.monotonic())

    def audio() -> None:
        log.info("stopping: the outbox and `offline` first, everything within %gs", timeout)
        for room in rooms.values():
            thread = threading.Thread(target=room.pipeline.stop_audio, name=f"stop-{room.id}", daemon=True)
            thread.start()
            stopping.append((room.id, thread))

    def windows_in_flight() -> None:
        if worker is not None:
            worker.stop(timeout=left() / 2)
        # answers that arrived while stopping are still decided and published
        for room in rooms.values():
            while (result := room.pipeline.next_result(timeout=0)) is not None:
                room.handle(result)

    def sources() -> None:
        for _room_id, thread in stopping:
            thread.join(left())
        hung = [room_id for room_id, thread in stopping if thread.is_alive()]
        if hung:
            log.warning("stopping: the capture of %s did not stop within %gs (a hung device or stream); "
                        "exiting without it", ", ".join(hung), timeout)

    steps: list[tuple[str, Callable[[], None]]] = []
    if rooms:
        steps += [("the capture", audio), ("the windows in flight", windows_in_flight)]
    if publisher is not None:
        steps += [("the status", board.report),
                  ("the publisher", lambda: publisher.stop(timeout=max(left(), FLUSH_AT_LEAST)))]
    if rooms:
        steps.append(("the capture (waiting)", sources))
    if scorelog is not None:
        steps.append(("the score log", scorelog.close))
    steps.append(("the metrics endpoint", metrics.close))
    if page is not None:
        steps.append(("the web page", page.stop))
    for what, step in steps:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - the outbox and `offline` matter more than a tidy exit
            survive(f"stopping {what}", exc)
    log.info("stopped")


def exit_within(seconds: float, code: int) -> None:
    """End the process `seconds` from now even if the interpreter's exit hangs.

    A capture hung in a native library hangs the exit too (sounddevice's exit handler closes
    every PortAudio stream, and a frozen sound server never answers), and systemd would then
    kill the daemon and count a failure. By now the outbox is flushed and `offline` said.
    """
    def leave() -> None:
        log.warning("exit: still not ended %gs after stopping (a native library, most likely a hung sound device); "
                    "leaving without its clean-up", seconds)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(code)

    timer = threading.Timer(seconds, leave)
    timer.daemon = True  # never delays a normal exit
    timer.start()
