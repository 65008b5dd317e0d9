"""The engine thread: the one thread that loads the model, owns it, and answers window requests.

Live audio must never wait for the model. The inbox is small and bounded; a live producer
submits with `drop_oldest=True`, so when the model falls behind the stalest pending window is
dropped (and counted) rather than the capture blocking. A file replay submits with
`drop_oldest=False` and waits instead, so every window is answered.

`heartbeat` is the monotonic time of the loop's last real progress: the idle loop advances it
twice a second and every finished request advances it, so a hung model stops it — which is what
a systemd watchdog should notice.

Importing this module does not import torch; the model is loaded inside the thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from monitor.engine.api import Request, Result
from monitor.engine.settings import ModelSettings

if TYPE_CHECKING:
    from monitor.engine.engine import Engine

log = logging.getLogger(__name__)

IDLE_TICK = 0.5  # seconds between heartbeats of an idle, healthy loop


@dataclass
class WorkerStats:
    """Counters since start (read them from any thread; written only by the worker and submitters)."""

    processed: int = 0  # requests answered, failed ones included
    failed: int = 0  # requests whose Result carries an error
    skipped: int = 0  # requests dropped unanswered: oldest-first when the inbox was full, or left at stop
    last_engine_ms: float = 0.0
    pending: int = 0  # requests waiting in the inbox now


class EngineWorker:
    """Runs an `Engine` in its own thread; requests in through a bounded inbox, results out by callback."""

    def __init__(self, settings: ModelSettings, on_result: Callable[[Result], None], inbox_size: int = 2,
                 engine_factory: Callable[[ModelSettings], Engine] | None = None,
                 calibrate: Sequence[str] = (), calibrate_seconds: float | None = None,
                 name: str = "engine"):
        if inbox_size < 1:
            raise ValueError("inbox_size must be at least 1")
        self.settings = settings
        self.on_result = on_result
        self.inbox_size = inbox_size
        self.engine_factory = engine_factory
        self._calibrate: list[tuple[list[str], float | None]] = [(list(calibrate), calibrate_seconds)] if calibrate else []
        self.stats = WorkerStats()
        self.load_error: str | None = None
        self.heartbeat = time.monotonic()
        self._inbox: deque[Request] = deque()
        self._cond = threading.Condition()
        self._ready = threading.Event()
        self._loaded = False
        self._stopping = False
        self._drain = False
        self._abandoned = False
        self._busy = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.engine: Engine | None = None  # for inspection only: never call it from another thread

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> EngineWorker:
        """Start the thread; it loads the model first (see `wait_ready`)."""
        self._thread.start()
        return self

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once the model is loaded; False on timeout or when loading failed (then `load_error` says why)."""
        self._ready.wait(timeout)
        return self._loaded

    @property
    def ready(self) -> bool:
        return self._loaded

    def stop(self, timeout: float = 10.0, drain: bool = False) -> bool:
        """Stop the thread within `timeout` seconds; True if it ended in time.

        Pending requests are answered first when `drain` (as far as the deadline allows), else
        dropped and counted as skipped. A request still in flight at the deadline is abandoned:
        its result is never delivered, and the (daemon) thread is left to finish on its own.
        """
        with self._cond:
            self._stopping = True
            self._drain = drain
            self._cond.notify_all()
        if not self._thread.is_alive() and self._thread.ident is None:
            return True
        self._thread.join(timeout)
        if self._thread.is_alive():
            with self._cond:
                self._abandoned = True
                left = len(self._inbox)
                self._inbox.clear()
                self.stats.skipped += left
                self.stats.pending = 0
            log.warning("engine did not stop within %.1fs; abandoning the request in flight", timeout)
            return False
        return True

    # ------------------------------------------------------------------ requests

    def submit(self, request: Request, drop_oldest: bool, timeout: float | None = None) -> bool:
        """Queue a request; False if it was not accepted (stopping, load failed, or timed out waiting).

        drop_oldest=True never waits: a full inbox loses its oldest request (counted in
        `stats.skipped`). drop_oldest=False waits for room (up to `timeout`).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._stopping or self.load_error is not None:
                    return False
                if len(self._inbox) < self.inbox_size:
                    break
                if drop_oldest:
                    self._inbox.popleft()
                    self.stats.skipped += 1
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            self._inbox.append(request)
            self.stats.pending = len(self._inbox)
            self._cond.notify_all()
            return True

    def calibrate(self, prompts: Sequence[str], seconds: float | None = None) -> None:
        """Compute baselines for these prompts in the engine thread, before the next request."""
        with self._cond:
            self._calibrate.append((list(prompts), seconds))
            self._cond.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """True once nothing is pending or in flight (e.g. at the end of a file replay)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._inbox or self._busy or self._calibrate:
                if not self._thread.is_alive():
                    return not self._inbox
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(min(IDLE_TICK, remaining) if remaining is not None else IDLE_TICK)
            return True

    # ------------------------------------------------------------------ the thread

    def _main(self) -> None:
        self.heartbeat = time.monotonic()
        try:
            engine = self._load()
        except Exception as exc:  # noqa: BLE001 - reported as one line through load_error
            from monitor.engine.loading import ModelLoadError

            if isinstance(exc, ModelLoadError):
                self.load_error = str(exc)
            else:
                text = str(exc).strip().splitlines()
                self.load_error = f"model could not be loaded: {type(exc).__name__}: {text[0] if text else ''}"
                log.debug("model load failed", exc_info=True)
            log.error("%s", self.load_error)
            with self._cond:
                self.stats.skipped += len(self._inbox)
                self._inbox.clear()
                self.stats.pending = 0
                self._cond.notify_all()
            self._ready.set()
            return
        self.engine = engine
        self._loaded = True
        self._ready.set()
        self.heartbeat = time.monotonic()
        try:
            self._loop(engine)
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _load(self) -> Engine:
        if self.engine_factory is not None:
            return self.engine_factory(self.settings)
        from monitor.engine.engine import Engine

        return Engine.load(self.settings)

    def _loop(self, engine: Engine) -> None:
        while True:
            with self._cond:
                while not self._inbox and not self._calibrate and not self._stopping:
                    self._cond.wait(IDLE_TICK)
                    self.heartbeat = time.monotonic()
                if self._stopping and not (self._drain and self._inbox):
                    self.stats.skipped += len(self._inbox)
                    self._inbox.clear()
                    self.stats.pending = 0
                    self._cond.notify_all()
                    return
                job: Any = self._calibrate.pop(0) if self._calibrate else self._inbox.popleft()
                self.stats.pending = len(self._inbox)
                self._busy = True
                self._cond.notify_all()  # room in the inbox for a waiting submitter
            if isinstance(job, tuple):
                self._run_calibration(engine, *job)
            else:
                self._run_request(engine, job)
            with self._cond:
                self._busy = False
                self.heartbeat = time.monotonic()
                self._cond.notify_all()
                if self._abandoned:
                    return

    def _run_calibration(self, engine: Engine, prompts: list[str], seconds: float | None) -> None:
        try:
            engine.calibrate(prompts, seconds)
        except Exception as exc:  # noqa: BLE001 - retried lazily with the first window that asks
            log.error("calibration of %d question(s) failed: %s: %s", len(prompts), type(exc).__name__, exc)

    def _run_request(self, engine: Engine, request: Request) -> None:
        try:
            result = engine.run(request)
        except Exception as exc:  # noqa: BLE001 - Engine.run should not raise; if it does, the window fails alone
            log.exception("engine.run raised on window %s", getattr(request.window, "seq", "?"))
            result = Result(request.window, error=f"{type(exc).__name__}: {exc}")
        result.generation = request.generation
        with self._cond:
            self.stats.processed += 1
            self.stats.failed += result.error is not None
            self.stats.last_engine_ms = result.engine_ms
            if self._abandoned:
                return
        try:
            self.on_result(result)
        except Exception:  # noqa: BLE001 - a consumer bug must not kill the engine thread
            log.exception("result handler failed on window %s", getattr(request.window, "seq", "?"))
