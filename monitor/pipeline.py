"""The listening path, from a source to events: the same code for the daemon and for replay.

    source ─▶ ring ─▶ scheduler thread: window ─▶ rules.plan ─▶ engine inbox (bounded)
                                                                   │ engine thread (owns the model)
    caller: next_result() ◀── results queue (bounded) ◀────────────┘
            process(result) ─▶ rules.update ─▶ events

A live source submits with drop-oldest, so capture never waits for the model: stale windows are
skipped and counted. A file read as fast as possible submits with back-pressure instead, so
every window is answered and a replay is deterministic.

Hearing. A room that cannot hear — muted, or its capture lost (device gone, stream down, digital
silence for longer than `audio.silence_timeout`) — must not keep an alarm ON that nothing will
ever clear, nor look healthy: `check_hearing` turns every ON rule OFF with the reason, and
answers about audio from before hearing resumed are not decided. Mute is applied where audio is
written (the ring stores zeros), so nothing heard while muted reaches a window, a clip or a log.

The model. A room whose windows keep failing for `model.failure_timeout` (see `monitor.modelhealth`)
is `model_failed`: `check_model` turns every ON rule OFF with that reason, and the room recovers
by itself with the next answer. It is apart from hearing: a room can be both (it cannot hear, and
could not be answered if it did); the rules turned OFF carry the reason that came first.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from monitor.audio.ringbuffer import RingBuffer
from monitor.audio.sources import AudioSource, make_source
from monitor.config import MODEL_RATE, Config, Room
from monitor.engine.api import Result
from monitor.engine.worker import EngineWorker
from monitor.events import Event
from monitor.hearing import HEARING_OK, Hearing
from monitor.modelhealth import MODEL_OK, ModelState, Streak, assess
from monitor.rules import RuleEngine, RuleSet, YesNoRule
from monitor.windows import WindowScheduler

log = logging.getLogger(__name__)


@dataclass
class PipelineStats:
    """Counters of the listening path (written by its threads, read by anyone)."""

    windows: int = 0  # cut by the scheduler
    unheard: int = 0  # cut while muted or with the capture lost: not asked
    processed: int = 0  # answered and passed through the rules
    failed: int = 0  # answered with an error (OOM, ...)
    undecided: int = 0  # answered while the room could not hear, or about audio from before: not decided
    last_lag: float = 0.0  # seconds of audio captured since the end of the newest processed window
    last_engine_ms: float = 0.0


CAPTURE_STALL = 5.0  # seconds without a single new sample from a live capture: it is lost


class Pipeline:
    """One room's listening path: its ring, source, scheduler thread and rule engine.

    The engine thread is its own (replay, tests) or shared by every room of a daemon (`worker`):
    then the daemon loads the model, and routes each result to `deliver` by its source.
    """

    def __init__(self, config: Config, ruleset: RuleSet, *, room: Room | None = None, source: AudioSource | None = None,
                 engine_factory: Callable[..., Any] | None = None, start_time: float | None = None,
                 worker: EngineWorker | None = None):
        """`room`: which source (default: the config's first); `start_time`: wall-clock time of a file
        source's first sample (replay; default: now); `worker`: a shared engine thread."""
        self.config = config
        self.room = room or config.rooms[0]
        self.id = self.room.id
        self.audio = self.room.audio
        self.ring = source.ring if source is not None else RingBuffer(int(self.audio.buffer_seconds * MODEL_RATE), MODEL_RATE)
        if source is None:
            source = make_source(self.audio, self.ring, start_time=start_time, name=self.id)
        self.source = source
        self.live = self.source.live
        self.scheduler = WindowScheduler(self.source, config.windows.length, config.windows.hop, config.vad.aggressiveness)
        self.rules = RuleEngine(ruleset)
        self.stats = PipelineStats()
        self.hearing = HEARING_OK
        self.model_state: ModelState = MODEL_OK
        self._answers = Streak()  # this room's failed answers since its last real one
        self.clock: Callable[[], float] = time.monotonic  # when answers are taken (tests step it)
        self._hear_from = 0  # answers about windows that start earlier are not decided
        self._lost_at = 0  # where hearing was last lost: earlier audio is still decided (not after a mute)
        self._seen_written, self._seen_at = 0, time.monotonic()  # when the ring last grew (stall check)
        self._rules_lock = threading.Lock()  # plan (scheduler thread) vs update/swap (caller)
        # answered windows not taken yet; bounded by what the engine may hold for this room
        self._results: queue.Queue[Result] = queue.Queue(maxsize=64)
        self._stop = threading.Event()
        self._scheduler_done = threading.Event()
        self._thread = threading.Thread(target=self._schedule, name=f"windows-{self.id}", daemon=True)
        self._own_worker = worker is None
        self.worker = worker or EngineWorker(
            config.model, on_result=self.deliver, inbox_size=2, engine_factory=engine_factory,
            calibrate=yes_no_prompts(ruleset), calibrate_seconds=config.windows.length,
        )

    # ------------------------------------------------------------------ lifecycle

    def load_model(self, timeout: float | None = None) -> str | None:
        """Start the engine thread and wait for the model; None, or the one-line reason it failed."""
        if not self._own_worker:
            raise RuntimeError("a shared engine thread is loaded by its owner")
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
        self.stop_audio()
        if self._own_worker:
            self.worker.stop(timeout=timeout)
        left = []
        while (result := self.next_result(timeout=0)) is not None:
            left.append(result)
        return left

    def stop_audio(self) -> None:
        """Stop capture and the windows thread (a shared engine thread is stopped by its owner)."""
        self._stop.set()
        self.source.stop()
        if self._thread.ident is not None:
            self._thread.join(timeout=2)

    def deliver(self, result: Result) -> None:
        """From the engine thread: an answered window of this room, to be taken by `next_result`."""
        self._results.put(result)

    @property
    def finished(self) -> bool:
        """A finite source has ended and every window it gave has been answered and taken."""
        # idle first: the worker queues a result before it turns idle, so after an idle check an
        # empty queue really is empty
        return (self.source.finished and self._scheduler_done.is_set() and self.worker.wait_idle(0, source=self.id)
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
                if self.ring.muted or window.start < self.ring.private_end or not self.hearing.ok:
                    self.stats.unheard += 1  # muted (or cut just as the mute came), or a dead capture
                    continue
                with self._rules_lock:
                    request = dataclasses.replace(self.rules.plan(window), source=self.id, live=self.live)
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
        """Pass one engine result through the rules; the events it decided.

        Not decided (no events): answers that arrive while the room is muted, and answers about
        audio from before hearing resumed — they would turn rules ON again behind a mute. An
        answer about audio heard before the capture was lost *is* decided (it may be the smoke
        alarm that came before the silence), and any rule it turns ON is turned OFF again at once
        with the reason: the hub sees the alarm, and no state that nothing could clear.
        """
        self.stats.processed += 1
        self.stats.failed += result.error is not None
        self._answers.note(result, self.clock())
        self.stats.last_engine_ms = result.engine_ms
        window = result.window
        # on the audio's clock: how much has been captured since the window ended (a clock step cannot fake lag)
        self.stats.last_lag = max(0.0, (self.ring.written - window.end) / window.sample_rate) if self.live else 0.0
        lost = not self.hearing.ok
        if (lost and (self.hearing.reason == "muted" or window.end > self._lost_at)) or window.start < self._hear_from:
            self.stats.undecided += 1
            return []
        with self._rules_lock:
            events = self.rules.update(window, result)
            if lost:
                events += self.rules.deafen(str(self.hearing.reason), time.time())
        return [e.for_source(self.id) for e in events]

    # ------------------------------------------------------------------ hearing

    @property
    def muted(self) -> bool:
        return self.ring.muted

    def set_muted(self, muted: bool) -> None:
        """Mute or unmute at the write side of the ring (see `RingBuffer.set_muted`); `check_hearing` reports it."""
        self.ring.set_muted(muted)

    def assess_hearing(self) -> Hearing:
        """Can this room hear now? Muted, capture failing, or digital silence for too long say no."""
        if self.ring.muted:
            return Hearing(False, "muted", "muted by the user")
        source = self.source
        if not getattr(source, "capture", False):
            return HEARING_OK  # a file never goes deaf
        stats = source.stats
        if stats.state in ("retrying", "failed"):
            return Hearing(False, "capture_lost", stats.last_error or stats.state)
        # No new samples at all, whatever the source thinks of itself (a thread stuck in a driver):
        # measured here, on the monotonic clock, from the outside.
        now = time.monotonic()
        if self.ring.written != self._seen_written:
            self._seen_written, self._seen_at = self.ring.written, now
        elif stats.first_audio.is_set() and now - self._seen_at > CAPTURE_STALL:
            return Hearing(False, "capture_lost", f"no audio at all for {now - self._seen_at:.0f}s")
        limit = self.audio.silence_timeout
        silent = self.ring.silent_samples / self.ring.sample_rate
        if limit and stats.first_audio.is_set() and silent >= limit:
            return Hearing(False, "capture_lost", f"only digital silence (all-zero samples) for {silent:.0f}s")
        return HEARING_OK

    def check_hearing(self, now: float | None = None) -> tuple[bool, list[Event]]:
        """Re-assess hearing (the caller's thread); (changed, the OFF events a loss of hearing caused).

        On a loss every ON rule turns OFF with the reason; when hearing returns, only windows
        that start after that moment are decided.
        """
        hearing = self.assess_hearing()
        if hearing == self.hearing:
            return False, []
        was = self.hearing
        self.hearing = hearing
        events: list[Event] = []
        if not hearing.ok and (was.ok or was.reason != hearing.reason):
            if was.ok:
                self._lost_at = self.ring.written  # answers about audio before this are still decided
            with self._rules_lock:
                events = [e.for_source(self.id) for e in self.rules.deafen(str(hearing.reason), time.time() if now is None else now)]
        if hearing.ok:
            # after a mute the scheduler already starts windows where it ended; after a lost
            # capture, windows from before this moment hold the outage
            self._hear_from = self.ring.private_end if was.reason == "muted" else self.ring.written
        return True, events

    # ------------------------------------------------------------------ the model

    def check_model(self, now: float | None = None) -> tuple[bool, list[Event]]:
        """Re-assess whether the model answers this room (the caller's thread); (changed, the OFF events a failure caused).

        Entering `model_failed`, every ON rule turns OFF with that reason: no answer could clear it.
        `now`: the wall-clock time the OFF events carry.
        """
        state = assess(self._answers.view, self.worker.health.view, self.config.model.failure_timeout)
        was, self.model_state = self.model_state, state  # equal states still bring the newer detail
        if state == was:
            return False, []
        if state.ok:
            return True, []
        with self._rules_lock:
            off = self.rules.deafen("model_failed", time.time() if now is None else now)
        return True, [e.for_source(self.id) for e in off]

    def swap_rules(self, ruleset: RuleSet) -> list[Event]:
        """Install new rules between windows; unchanged rules keep their state."""
        with self._rules_lock:
            events = [e.for_source(self.id) for e in self.rules.swap(ruleset)]
        self.worker.calibrate(yes_no_prompts(ruleset), self.config.windows.length)
        return events

    def switch_rule(self, rule_id: str, on: bool, now: float | None = None) -> list[Event]:
        """Switch one rule on or off between windows (see `RuleEngine.switch`); the OFF event it causes.

        Off, its question leaves every request planned from now on: the engine is not asked it.
        """
        with self._rules_lock:
            return [e.for_source(self.id) for e in self.rules.switch(rule_id, on, time.time() if now is None else now)]

    @property
    def skipped(self) -> int:
        """Windows never answered because the engine fell behind: skipped by the scheduler or dropped from its inbox."""
        return self.scheduler.skipped + self.worker.stats.skipped_by_source.get(self.id, 0)

    @property
    def lost_windows(self) -> int:
        """Windows passed over because their audio was never captured (outages: not `skipped`)."""
        return self.scheduler.lost


def yes_no_prompts(ruleset: RuleSet) -> list[str]:
    """The questions whose score on silence (baseline) the engine calibrates."""
    return [r.ask for r in ruleset.enabled if isinstance(r, YesNoRule)]
