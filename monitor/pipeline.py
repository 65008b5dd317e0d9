"""The listening path, from a source to events: the same code for the daemon and for replay.

    source ─▶ ring ─▶ scheduler thread: window ─▶ rules.plan ─▶ engine inbox (bounded)
                                                                   │ engine thread (owns the model)
    caller: next_result() ◀── results queue (bounded) ◀────────────┘
            process(result) ─▶ rules.update ─▶ events

A live source submits with drop-oldest, so capture never waits for the model: stale windows are
skipped and counted. A file read as fast as possible submits with back-pressure instead, so
every window is answered and a replay is deterministic.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from monitor.audio.ringbuffer import RingBuffer
from monitor.audio.sources import AudioSource, make_source
from monitor.config import MODEL_RATE, Config
from monitor.engine.api import Result
from monitor.engine.worker import EngineWorker
from monitor.events import Event
from monitor.rules import RuleEngine, RuleSet, YesNoRule
from monitor.windows import WindowScheduler

log = logging.getLogger(__name__)


@dataclass
class PipelineStats:
    """Counters of the listening path (written by its threads, read by anyone)."""

    windows: int = 0  # cut by the scheduler
    muted: int = 0  # cut while muted: not asked
    processed: int = 0  # answered and passed through the rules
    failed: int = 0  # answered with an error (OOM, ...)
    last_lag: float = 0.0  # seconds from the end of the newest processed window to its result
    last_engine_ms: float = 0.0


class Pipeline:
    """Owns the ring, the source, the scheduler thread, the engine thread and the rule engine."""

    def __init__(self, config: Config, ruleset: RuleSet, *, source: AudioSource | None = None,
                 engine_factory: Callable[..., Any] | None = None):
        self.config = config
        self.ring = source.ring if source is not None else RingBuffer(int(config.audio.buffer_seconds * MODEL_RATE), MODEL_RATE)
        self.source = source if source is not None else make_source(config.audio, self.ring)
        self.live = self.source.live
        self.scheduler = WindowScheduler(self.source, config.windows.length, config.windows.hop, config.vad.aggressiveness)
        self.rules = RuleEngine(ruleset)
        self.stats = PipelineStats()
        self.muted = threading.Event()
        self._rules_lock = threading.Lock()  # plan (scheduler thread) vs update/swap (caller)
        self._results: queue.Queue[Result] = queue.Queue(maxsize=8)
        self._stop = threading.Event()
        self._scheduler_done = threading.Event()
        self._thread = threading.Thread(target=self._schedule, name="windows", daemon=True)
        self.worker = EngineWorker(
            config.model, on_result=self._results.put, inbox_size=2, engine_factory=engine_factory,
            calibrate=_yes_no_prompts(ruleset), calibrate_seconds=config.windows.length,
        )

    # ------------------------------------------------------------------ lifecycle

    def load_model(self, timeout: float | None = None) -> str | None:
        """Start the engine thread and wait for the model; None, or the one-line reason it failed."""
        self.worker.start()
        if not self.worker.wait_ready(timeout):
            return self.worker.load_error or f"the model did not load within {timeout:g}s"
        return None

    def start_audio(self) -> None:
        """Start capture and windowing (after the model is loaded: no window waits for it)."""
        self.source.start()
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> list[Result]:
        """Stop capture and windows, then the engine within `timeout` (the window in flight may be abandoned).

        Returns the answers that arrived but were not taken yet, in order: the caller still
        decides and publishes them.
        """
        self._stop.set()
        self.source.stop()
        if self._thread.ident is not None:
            self._thread.join(timeout=2)
        self.worker.stop(timeout=timeout)
        left = []
        while (result := self.next_result(timeout=0)) is not None:
            left.append(result)
        return left

    @property
    def finished(self) -> bool:
        """A finite source has ended and every window it gave has been answered and taken."""
        # idle first: the worker queues a result before it turns idle, so after an idle check an
        # empty queue really is empty
        return (self.source.finished and self._scheduler_done.is_set() and self.worker.wait_idle(0)
                and self._results.empty())

    @property
    def broken(self) -> bool:
        """The window thread ended while the source still had audio to give (logged where it failed)."""
        return self._scheduler_done.is_set() and not self.source.finished and not self._stop.is_set()

    # ------------------------------------------------------------------ the windows thread

    def _schedule(self) -> None:
        try:
            for window in self.scheduler.windows(self._stop):
                self.stats.windows += 1
                if self.muted.is_set():
                    self.stats.muted += 1
                    continue
                with self._rules_lock:
                    request = self.rules.plan(window)
                # An empty request still goes through the engine, in order: gated windows are
                # misses that let patience reset and hold expire.
                while not self.worker.submit(request, drop_oldest=self.live, timeout=0.5):
                    if self._stop.is_set() or self.worker.load_error is not None:
                        return
        except Exception:  # noqa: BLE001 - logged; the daemon sees the thread end and exits non-zero
            log.exception("window scheduler failed")
        finally:
            self._scheduler_done.set()

    # ------------------------------------------------------------------ results

    def next_result(self, timeout: float) -> Result | None:
        try:
            return self._results.get(timeout=timeout)
        except queue.Empty:
            return None

    def process(self, result: Result) -> list[Event]:
        """Pass one engine result through the rules; the events it decided."""
        self.stats.processed += 1
        self.stats.failed += result.error is not None
        self.stats.last_engine_ms = result.engine_ms
        self.stats.last_lag = max(0.0, time.time() - result.window.t_end) if self.live else 0.0
        with self._rules_lock:
            return self.rules.update(result.window, result)

    def swap_rules(self, ruleset: RuleSet) -> list[Event]:
        """Install new rules between windows; unchanged rules keep their state."""
        with self._rules_lock:
            events = self.rules.swap(ruleset)
        self.worker.calibrate(_yes_no_prompts(ruleset), self.config.windows.length)
        return events

    @property
    def skipped(self) -> int:
        """Windows never answered: skipped by the scheduler or dropped from the engine inbox."""
        return self.scheduler.skipped + self.worker.stats.skipped


def _yes_no_prompts(ruleset: RuleSet) -> list[str]:
    """The questions whose score on silence (baseline) the engine calibrates."""
    return [r.ask for r in ruleset.enabled if isinstance(r, YesNoRule)]
