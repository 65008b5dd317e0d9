"""The engine thread: the one thread that loads the model, owns it, and answers the windows of every room.

Live audio must never wait for the model. Each source (room) has its own small bounded inbox; a
live producer submits with `drop_oldest=True`, so when the model falls behind, the stalest
pending window *of that room* is dropped (and counted) rather than the capture blocking — a busy
room never pushes out another room's windows. A file replay submits with `drop_oldest=False`
and waits instead, so every window is answered.

The thread takes ready windows round-robin across the rooms, up to the backend's `max_batch`,
and answers them in one `Backend.answer` call: a room fed as fast as possible (a file) delays a
live room's window by at most one batch. Results are delivered in order within each room.

A file read as fast as it is answered (not live) is batched the same way on every run — its
windows are taken only when its inbox is full, or at its last window — so a replay gives the
same scores to the last bit whatever the timing (a batch's shape changes float rounding).

A low-priority lane takes what may wait (the description of what turned a rule ON): a request
there is answered only when no window of any room waits, one at a time, so it never goes before
a live window; one still waiting after `low_max_wait` seconds (the engine busy with the rooms all
that time) is dropped and counted. A window that comes while one is answered waits for it alone.

`heartbeat` is the monotonic time of the loop's last real progress: the idle loop advances it
twice a second and every finished batch advances it, so a hung model stops it — which is what
a systemd watchdog should notice.

Importing this module does not import torch; the model is loaded inside the thread.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from monitor.engine.api import Request, Result
from monitor.engine.errors import ModelLoadError, first_line
from monitor.engine.settings import ModelSettings
from monitor.modelhealth import Streak

if TYPE_CHECKING:
    from monitor.engine.api import Backend

log = logging.getLogger(__name__)

IDLE_TICK = 0.5  # seconds between heartbeats of an idle, healthy loop
FILE_PATIENCE = 1.0  # a file's half-full inbox is taken anyway after this long without a new window


@dataclass
class WorkerStats:
    """Counters since start (read them from any thread; written only by the worker and submitters)."""

    processed: int = 0  # requests answered, failed ones included
    failed: int = 0  # requests whose Result carries an error
    skipped: int = 0  # requests dropped unanswered: oldest-first when an inbox was full, or left at stop
    last_engine_ms: float = 0.0  # engine time of the latest batch
    last_batch: int = 0  # windows in the latest batch
    batches: int = 0
    pending: int = 0  # requests waiting in the inboxes now
    skipped_by_source: dict[str, int] = field(default_factory=dict)
    low_answered: int = 0  # low-priority requests answered (descriptions)
    low_dropped: int = 0  # low-priority requests dropped: waited too long, pushed out, or left at stop


@dataclass(frozen=True)
class _Low:
    """A request of the low-priority lane, with whom to tell and since when it waits (monotonic)."""

    request: Request
    on_done: Callable[[Result], None]
    since: float


class EngineWorker:
    """Runs a `Backend` in its own thread; requests in through bounded per-source inboxes, results out by callback."""

    def __init__(self, settings: ModelSettings, on_result: Callable[[Result], None], inbox_size: int = 2,
                 engine_factory: Callable[[ModelSettings], Backend] | None = None,
                 calibrate: Sequence[str] = (), calibrate_seconds: float | None = None,
                 name: str = "engine", low_max_wait: float = 5.0, low_size: int = 8):
        if inbox_size < 1:
            raise ValueError("inbox_size must be at least 1")
        self.settings = settings
        self.on_result = on_result
        self.inbox_size = inbox_size
        self.engine_factory = engine_factory
        # (prompts, seconds, at start): the calibrations to run before the next batch
        self._calibrate: list[tuple[list[str], float | None, bool]] = (
            [(list(calibrate), calibrate_seconds, True)] if calibrate else [])
        self.stats = WorkerStats()
        self.health = Streak()  # failed answers of any room since the last real answer (see monitor.modelhealth)
        self.load_error: str | None = None
        self.heartbeat = time.monotonic()
        self._inboxes: dict[str, deque[Request]] = {}  # per source, in the order sources first submitted
        self._last_submit: dict[str, float] = {}  # per source: when its latest request came (monotonic)
        self._next = 0  # round-robin: the index of the source whose turn is first in the next batch
        self._cond = threading.Condition()
        self._ready = threading.Event()
        self._loaded = False
        self._stopping = False
        self._drain = False
        self._abandoned = False
        self._busy: set[str] = set()  # sources with a window in the batch being answered
        self._low: OrderedDict[str, _Low] = OrderedDict()  # the low-priority lane, by key, oldest first
        self.low_max_wait = low_max_wait
        self.low_size = low_size
        self._low_warned = False
        self._calibrating = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.engine: Backend | None = None  # for inspection only: never call it from another thread

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
        dropped and counted as skipped. A batch still in flight at the deadline is abandoned:
        its results are never delivered, and the (daemon) thread is left to finish on its own.
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
                self._drop_all()
            log.warning("engine did not stop within %.1fs; abandoning the windows in flight", timeout)
            return False
        return True

    # ------------------------------------------------------------------ requests

    def submit(self, request: Request, drop_oldest: bool, timeout: float | None = None) -> bool:
        """Queue a request in its source's inbox; False if it was not accepted (stopping, load failed, timed out).

        drop_oldest=True never waits: a full inbox loses its own oldest request (counted in
        `stats.skipped`). drop_oldest=False waits for room (up to `timeout`).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            inbox = self._inboxes.setdefault(request.source, deque())
            while True:
                if self._stopping or self.load_error is not None:
                    return False
                if len(inbox) < self.inbox_size:
                    break
                if drop_oldest:
                    inbox.popleft()
                    self.stats.pending -= 1
                    self._count_skipped(request.source, 1)
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            inbox.append(request)
            self._last_submit[request.source] = time.monotonic()
            self.stats.pending += 1
            self._cond.notify_all()
            return True

    def submit_low(self, key: str, request: Request, on_done: Callable[[Result], None]) -> bool:
        """Queue a request to answer when no window of any room waits; `on_done(result)` from the engine thread.

        A waiting request with the same `key` is replaced (it keeps its place and its age); a full
        lane loses its oldest. False when it was not accepted (stopping, load failed).
        """
        with self._cond:
            if self._stopping or self.load_error is not None:
                return False
            old = self._low.get(key)
            if old is None and len(self._low) >= self.low_size:
                self._drop_low(self._low.popitem(last=False)[1], "the low-priority lane was full")
            self._low[key] = _Low(request, on_done, old.since if old is not None else time.monotonic())
            self._cond.notify_all()
            return True

    def calibrate(self, prompts: Sequence[str], seconds: float | None = None) -> None:
        """Compute baselines for these prompts in the engine thread, before the next batch."""
        with self._cond:
            self._calibrate.append((list(prompts), seconds, False))
            self._cond.notify_all()

    def wait_idle(self, timeout: float | None = None, source: str | None = None) -> bool:
        """True once nothing is pending or in flight (for `source`, or for all), e.g. at the end of a replay."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._has_work(source):
                if not self._thread.is_alive():
                    return not self._pending_of(source)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(min(IDLE_TICK, remaining) if remaining is not None else IDLE_TICK)
            return True

    def pending(self, source: str) -> int:
        """Requests of `source` waiting (not counting one being answered)."""
        with self._cond:
            return self._pending_of(source)

    # -- under self._cond

    def _pending_of(self, source: str | None) -> int:
        if source is None:
            return sum(len(q) for q in self._inboxes.values())
        return len(self._inboxes.get(source, ()))

    def _takeable(self, inbox: deque[Request]) -> bool:
        """Whether a source's pending windows may be taken now (see the module doc on files)."""
        if not inbox:
            return False
        last = inbox[-1]
        return (last.live or len(inbox) >= self.inbox_size or bool(getattr(last.window, "final", False))
                or self._stopping or time.monotonic() - self._last_submit.get(last.source, 0.0) > FILE_PATIENCE)

    def _any_ready(self) -> bool:
        return any(self._takeable(q) for q in self._inboxes.values())

    def _has_work(self, source: str | None) -> bool:
        busy = bool(self._busy) if source is None else source in self._busy
        low = any(source is None or item.request.source == source for item in self._low.values())
        return bool(self._pending_of(source) or busy or low or self._calibrate or self._calibrating)

    def _low_ready(self) -> bool:
        """A low-priority request may go: one waits, and no window of any room does."""
        return bool(self._low) and not self._pending_of(None)

    def _take_low(self) -> _Low | None:
        """The oldest low-priority request not waiting for longer than `low_max_wait`; older ones are dropped."""
        now = time.monotonic()
        while self._low:
            item = self._low.popitem(last=False)[1]
            if now - item.since <= self.low_max_wait:
                return item
            self._drop_low(item, f"it waited {now - item.since:.1f}s for the engine (busy with the rooms' windows)")
        return None

    def _drop_low(self, item: _Low, why: str) -> None:
        self.stats.low_dropped += 1
        level = logging.DEBUG if self._low_warned else logging.INFO
        self._low_warned = True
        log.log(level, "a low-priority request of %s (a description) was dropped: %s; later drops are counted "
                "(status: descriptions.dropped)", item.request.source, why)

    def _count_skipped(self, source: str, n: int) -> None:
        if n:
            self.stats.skipped += n
            self.stats.skipped_by_source[source] = self.stats.skipped_by_source.get(source, 0) + n

    def _drop_all(self) -> None:
        for source, inbox in self._inboxes.items():
            self._count_skipped(source, len(inbox))
            inbox.clear()
        self.stats.low_dropped += len(self._low)
        self._low.clear()
        self.stats.pending = 0
        self._cond.notify_all()

    def _take_batch(self, limit: int) -> list[Request]:
        """Up to `limit` requests, one per source per round, starting with the source whose turn it is."""
        sources = list(self._inboxes)
        if not sources:
            return []
        first = self._next % len(sources)
        order = sources[first:] + sources[:first]
        batch: list[Request] = []
        ready = [source for source in order if self._takeable(self._inboxes[source])]
        while len(batch) < limit:
            took = False
            for source in ready:
                inbox = self._inboxes[source]
                if inbox and len(batch) < limit:
                    batch.append(inbox.popleft())
                    took = True
            if not took:
                break
        self._next = first + 1  # the next batch starts with the next source, whoever was served
        self.stats.pending -= len(batch)
        return batch

    # ------------------------------------------------------------------ the thread

    def _main(self) -> None:
        self.heartbeat = time.monotonic()
        try:
            engine = self._load()
        except Exception as exc:  # noqa: BLE001 - reported as one line through load_error
            if isinstance(exc, ModelLoadError):
                self.load_error = str(exc)
            else:
                self.load_error = f"model could not be loaded: {first_line(exc)}"
                log.debug("model load failed", exc_info=True)
            log.error("%s", self.load_error)
            with self._cond:
                self._drop_all()
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
                self._busy.clear()
                self._cond.notify_all()

    def _load(self) -> Backend:
        if self.engine_factory is not None:
            return self.engine_factory(self.settings)
        from monitor.engine.backends import load_backend

        return load_backend(self.settings)

    def _loop(self, engine: Backend) -> None:
        limit = max(1, int(getattr(engine, "max_batch", 1) or 1))
        while True:
            with self._cond:
                while not (self._any_ready() or self._calibrate or self._stopping or self._low_ready()):
                    self._cond.wait(IDLE_TICK)
                    self.heartbeat = time.monotonic()
                if self._stopping and not (self._drain and self._pending_of(None)):
                    self._drop_all()
                    return
                job: Any = (self._calibrate.pop(0) if self._calibrate else self._take_batch(limit)
                            if self._any_ready() else self._take_low())
                if job is None:
                    continue  # every low-priority request waiting had waited too long
                if isinstance(job, list):
                    self._busy = {r.source for r in job}
                elif isinstance(job, _Low):
                    self._busy = {job.request.source}
                else:
                    self._calibrating = True
                self._cond.notify_all()  # room in the inboxes for waiting submitters
            if isinstance(job, tuple):
                self._run_calibration(engine, *job)
            elif isinstance(job, _Low):
                self._run_low(engine, job)
            else:
                self._run_batch(engine, job)
            with self._cond:
                self._busy = set()
                self._calibrating = False
                self.heartbeat = time.monotonic()
                self._cond.notify_all()
                if self._abandoned:
                    return

    def _run_calibration(self, engine: Backend, prompts: list[str], seconds: float | None, at_start: bool) -> None:
        """At start, before any window, wait for the baselines; later (a reload) a backend that asks them of
        a server only starts them: this thread answers every room and must not wait on a server that hangs."""
        in_flight = getattr(engine, "start_calibration", None)
        try:
            if in_flight is not None and not at_start:
                in_flight(prompts, seconds)
            else:
                engine.calibrate(prompts, seconds)
        except Exception as exc:  # noqa: BLE001 - retried lazily with the first window that asks
            log.error("calibration of %d question(s) failed: %s: %s", len(prompts), type(exc).__name__, exc)

    def _run_batch(self, engine: Backend, batch: list[Request]) -> None:
        started = time.perf_counter()
        results = [dataclasses.replace(result, generation=request.generation, source=request.source)
                   for request, result in zip(batch, self._answer(engine, batch), strict=True)]
        with self._cond:
            self.stats.processed += len(results)
            self.stats.failed += sum(r.error is not None for r in results)
            self.stats.last_engine_ms = (time.perf_counter() - started) * 1000
            self.stats.last_batch = len(batch)
            self.stats.batches += 1
            if self._abandoned:
                return
        now = time.monotonic()
        for result in results:
            self.health.note(result, now)
        for request, result in zip(batch, results, strict=True):
            try:
                self.on_result(result)
            except Exception:  # noqa: BLE001 - a consumer bug must not kill the engine thread
                log.exception("result handler failed on window %s", getattr(request.window, "seq", "?"))

    def _run_low(self, engine: Backend, item: _Low) -> None:
        request = item.request
        result = dataclasses.replace(self._answer(engine, [request])[0], generation=request.generation,
                                     source=request.source)
        with self._cond:
            self.stats.low_answered += 1
            if self._abandoned:
                return
        try:
            item.on_done(result)
        except Exception:  # noqa: BLE001 - a consumer bug must not kill the engine thread
            log.exception("result handler failed on a low-priority request of %s", request.source)

    def _answer(self, engine: Backend, batch: list[Request]) -> list[Result]:
        """The batch's results; if the batch as a whole fails, each window is tried alone, so it fails alone."""
        try:
            results = list(engine.answer(batch))
            if len(results) != len(batch):
                raise RuntimeError(f"the backend answered {len(results)} of {len(batch)} windows")
            return results
        except Exception as exc:  # noqa: BLE001 - Backend.answer should not raise; if it does, isolate the culprit
            if len(batch) == 1:
                log.exception("engine failed on window %s", getattr(batch[0].window, "seq", "?"))
                return [Result(batch[0].window, error=f"{type(exc).__name__}: {exc}")]
            log.warning("a batch of %d windows failed (%s: %s); answering them one by one", len(batch),
                        type(exc).__name__, exc)
        return [self._answer(engine, [request])[0] for request in batch]
