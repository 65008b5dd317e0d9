"""The daemon's supervisor: start-up in order, signals, the main loop, the watchdog, and the way out.

Threads and what they own:
    capture (per room)          the write end of that room's ring buffer
    windows (per room)          cutting windows, planning questions, submitting to the engine
    engine (one)                the model: answers the windows of all rooms in batches
    mqtt                        the MQTT client (inside the Publisher)
    web                         the live page's server (fed by the main thread, never waited for)
    main (this module)          every room's rule decisions, the sinks (through one fan-out),
                                commands, reloads, hearing and model checks, the watchdog, status

The jobs the main thread does live beside this module: `preflight` (what must hold before
starting), `assembly` (engine thread, sinks, rooms, publisher), `controls` (commands and the mute
switches), `reloads` (rule files), `status` (the rooms' health and the status every sink gets),
`shutdown` (the ordered way out).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monitor.audio.sources import AudioSource
from monitor.config import Config
from monitor.daemon.assembly import add_incidents, add_local_sinks, add_publisher, make_rooms, make_worker
from monitor.daemon.controls import Controls
from monitor.daemon.preflight import StartupError, check_devices, check_state_dir, load_rulesets, open_page
from monitor.daemon.reloads import Reloads
from monitor.daemon.shutdown import EXIT_GRACE, exit_within, shut_down
from monitor.daemon.status import StatusBoard
from monitor.engine.api import Result
from monitor.engine.worker import EngineWorker
from monitor.fanout import FanOut, LogOnce
from monitor.metrics import Metrics
from monitor.rooms import ActiveRoom
from monitor.scorelog import ScoreLog
from monitor.systemd import Notifier

log = logging.getLogger(__name__)

PRUNE_EVERY = 300.0  # seconds between clip retention passes
FIRST_AUDIO_GRACE = 10.0  # a whole home is ready this long after start even if a room has no sound yet


class Daemon:
    """`audio-monitor run`: everything from the microphones to the broker, for as long as it runs."""

    def __init__(self, config: Config, *, source: AudioSource | None = None,
                 engine_factory: Callable[..., Any] | None = None, notifier: Notifier | None = None):
        """`source`: an audio source to use for the (first) room instead of the configured one (tests)."""
        self.config = config
        self._source = source
        self._engine_factory = engine_factory
        self.notifier = notifier or Notifier()
        self.metrics = Metrics()
        self.metrics_port: int | None = None
        self.state_dir = Path(config.state_dir)
        self.rooms: dict[str, ActiveRoom] = {}
        self.worker: EngineWorker | None = None
        self.publisher: Any = None
        self.scorelog: ScoreLog | None = None
        self.page: Any = None  # the live page (monitor.web.live.LivePage) when web.enabled
        self.desk: Any = None  # the incidents (monitor.incidents.desk.IncidentDesk)
        self._survive = LogOnce(log)  # where unexpected errors are logged, in full once per place
        self.sinks = FanOut(survive=self._survive)
        self.controls = Controls(config, self.state_dir, self.rooms)
        self.reloads: Reloads | None = None
        self.board = StatusBoard(config, self.rooms, self.sinks, self.notifier, self._survive)
        self._stop = threading.Event()
        self._wake = threading.Event()  # a result arrived for some room, or the page sent a command
        self._interrupts = 0
        self._last_prune = 0.0
        self._last_watchdog = 0.0
        self.ready = threading.Event()

    @property
    def pipeline(self) -> Any:
        """The first room's pipeline (a one-microphone monitor has only this one)."""
        return next(iter(self.rooms.values())).pipeline if self.rooms else None

    # ------------------------------------------------------------------ control from outside

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self.controls.reload_requested.set()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_term(signum: int, _frame: Any) -> None:
            if signum == signal.SIGINT:
                self._interrupts += 1
                if self._interrupts > 1:  # a second Ctrl-C: leave now
                    os._exit(130)
            self._stop.set()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())

    # ------------------------------------------------------------------ startup

    def _prepare(self) -> None:
        """Every check, the engine thread, the sinks that need no broker, and the rooms."""
        cfg = self.config
        rulesets = load_rulesets(cfg)
        self.reloads = self.board.reloads = Reloads(rulesets, self.rooms, self.controls.reload_requested)
        check_state_dir(self.state_dir)
        missing = check_devices(cfg, self._source is not None)
        self.worker = self.board.worker = make_worker(cfg, rulesets, self._route, self._engine_factory)
        self.page = open_page(cfg, self.controls.on_command, self._wake.set, self.controls.label)
        self.scorelog = add_local_sinks(cfg, self.sinks, self.metrics, self.page)
        self.sinks.add(self.controls.labels)  # remembers the alerts to label; shows the labels kept on the page
        if self.page is not None:
            self.controls.labels.show = self.page.hub.set_labels
        make_rooms(cfg, rulesets, self.worker, self.state_dir, self.sinks, self._survive, self.controls, self.rooms,
                   source=self._source, missing=missing)
        self.desk = add_incidents(cfg, self.rooms, self.worker, self._wake.set)

    def _start_publisher(self) -> None:
        """MQTT joins the sinks, every room is announced, and the publisher starts connecting."""
        self.publisher = self.board.publisher = add_publisher(self.config, self.state_dir, self.rooms, self.sinks,
                                                              self.controls.on_command)
        self.desk.publish = self.publisher.publish_incident
        self.board.show()  # the whole home's retained state (its switch, the Model sensor) before connecting
        self.publisher.start()

    # ------------------------------------------------------------------ run

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (or every finite source ends); the process exit code.

        Once the publisher runs, every way out goes through `shut_down` (flush the outbox, say
        `offline`), also after an unexpected error, which is logged with its traceback.
        """
        self._install_signals()
        try:
            self._prepare()
            self._start_publisher()
        except StartupError as exc:
            log.error("%s", exc)
            return 1
        cfg = self.config
        if cfg.metrics.enabled:
            try:
                self.metrics_port = self.metrics.serve(cfg.metrics.host, cfg.metrics.port)
                log.info("metrics on http://%s:%d/metrics", cfg.metrics.host, self.metrics_port)
            except OSError as exc:
                log.error("metrics: cannot listen on %s:%d (%s); set metrics.port or metrics.enabled: false",
                          cfg.metrics.host, cfg.metrics.port, exc.strerror)
        if self.page is not None:
            self.page.start()
            self.board.show(urgent=True)
        try:
            return self._run_listening()
        except Exception:  # noqa: BLE001 - logged in full; exit non-zero so that the service restarts
            log.exception("unexpected error; stopping so that the service restarts")
            return 1
        finally:
            if self.desk is not None:
                self.desk.flush()  # incidents not sent yet go into the outbox before it is flushed
            try:
                shut_down(timeout=cfg.stop_timeout, notifier=self.notifier, rooms=self.rooms, worker=self.worker,
                          publisher=self.publisher, board=self.board, scorelog=self.scorelog, metrics=self.metrics,
                          page=self.page, survive=self._survive)
            except Exception:  # noqa: BLE001 - the exit code must still reach the service manager
                log.exception("error while stopping")

    def _run_listening(self) -> int:
        assert self.worker is not None
        cfg = self.config
        self.notifier.status("loading the model")
        log.info("loading model %s", _model_name(cfg))
        self.worker.start()
        if not self.worker.wait_ready():  # the engine thread has logged the one line saying what to do
            return 1
        if self._stop.is_set():
            return 0
        for room in self.rooms.values():
            room.pipeline.start_audio()
        if not self._wait_first_audio():
            return 0 if self._stop.is_set() else 1
        self.notifier.ready(self.board.status_line())
        self.ready.set()
        rules = sum(len(r.pipeline.rules.ruleset.rules) for r in self.rooms.values())
        where = f" in {len(self.rooms)} rooms ({', '.join(self.rooms)})" if cfg.multi_room else ""
        log.info("listening: %d rule(s)%s, windows of %gs every %gs", rules, where, cfg.windows.length, cfg.windows.hop)
        return self._loop()

    def _wait_first_audio(self) -> bool:
        """Until the room hears its first sample (a whole home: every room that can, or a grace period).

        A whole home does not wait for a room whose capture is known lost (its device missing):
        that room is announced as deaf and joins when its device appears.
        """
        started = time.monotonic()
        warned = False
        while True:
            waiting = [r for r in self.rooms.values() if not r.pipeline.source.stats.first_audio.is_set()
                       and not (self.config.multi_room and r.pipeline.source.stats.state in ("retrying", "failed"))]
            if not waiting:
                return True
            if self._stop.is_set():
                return False
            empty = [r for r in waiting if r.pipeline.source.finished]
            if empty and not self.config.multi_room:
                log.error("audio.source: no audio at all in the file")
                return False
            elapsed = time.monotonic() - started
            if self.config.multi_room and elapsed > FIRST_AUDIO_GRACE:
                log.warning("no audio yet from %s; listening to the others meanwhile",
                            ", ".join(r.label for r in waiting))
                return True
            if not warned and elapsed > FIRST_AUDIO_GRACE:
                stats = waiting[0].pipeline.source.stats
                log.warning("no audio yet from the input device (%s); still waiting", stats.last_error or stats.state)
                warned = True
            self._wake.wait(0.5)
            self._tick()

    def _loop(self) -> int:
        while not self._stop.is_set():
            self._wake.wait(0.25)
            self._wake.clear()
            self._take_results()
            self.desk.tick()
            try:
                self._tick()
            except Exception as exc:  # noqa: BLE001 - housekeeping must not end the listening
                self._survive("housekeeping", exc)
            if all(r.pipeline.finished for r in self.rooms.values()):
                for room in self.rooms.values():
                    log.info("end of %s: %d window(s) processed", room.label if self.config.multi_room else
                             room.room.audio.source, room.pipeline.stats.processed)
                return 0
            broken = [r for r in self.rooms.values() if r.pipeline.broken]
            if broken:
                log.error("the window scheduler of %s stopped unexpectedly; exiting so that the service restarts",
                          ", ".join(r.id for r in broken))
                return 1
        return 0

    def _route(self, result: Result) -> None:
        """From the engine thread: an answered window goes to its room's queue; the main loop wakes."""
        room = self.rooms.get(result.source)
        if room is None:
            log.error("an answer for unknown source %r; dropped", result.source)
            return
        room.pipeline.deliver(result)
        self._wake.set()

    def _take_results(self) -> None:
        """Every answer waiting, room by room: each room decides and hands on (never raises)."""
        for room in self.rooms.values():
            while (result := room.pipeline.next_result(timeout=0)) is not None:
                room.handle(result)

    # ------------------------------------------------------------------ housekeeping

    def _tick(self) -> None:
        now = time.monotonic()
        self.controls.apply(self.board)
        for room in self.rooms.values():
            self.board.check_hearing(room)
            room.complete_clips()
        self.board.check_model()
        if self.reloads is not None and self.reloads.tick(now):
            self.board.report()
        self._watchdog(now)
        self.board.tick(now)
        if now - self._last_prune >= PRUNE_EVERY:
            self._last_prune = now
            keep = self.publisher.pending_clips() if self.publisher is not None else ()
            for room in self.rooms.values():
                room.clips.prune(keep)

    def _watchdog(self, now: float) -> None:
        """WATCHDOG=1 only while the engine loop makes progress: a hung model stops the heartbeat."""
        interval = self.notifier.watchdog_seconds
        if not self.notifier.enabled or self.worker is None:
            return
        period = interval / 2 if interval else 1.0
        if now - self._last_watchdog < period:
            return
        if now - self.worker.heartbeat > period:
            return  # the engine has not moved: let systemd notice
        self._last_watchdog = now
        self.notifier.watchdog()

    # ------------------------------------------------------------------ what tests and callers look at

    def status(self) -> dict[str, Any]:
        """The JSON status (see `StatusBoard.status`)."""
        return self.board.status()


def _model_name(config: Config) -> str:
    """The model as a log line may name it: a served one by name and redacted address."""
    model = config.model
    if model.backend == "openai":
        from monitor.audio.redact import redact_url

        return f"{model.name} served at {redact_url(str(model.url))}"
    return model.label


def run_daemon(config: Config) -> int:
    """Entry point of `audio-monitor run`."""
    code = Daemon(config).run()
    exit_within(EXIT_GRACE, code)
    return code
