"""The daemon: every room's listening path, one engine, MQTT, metrics, signals and systemd.

Threads and what they own:
    capture (per room)          the write end of that room's ring buffer
    windows (per room)          cutting windows, planning questions, submitting to the engine
    engine (one)                the model: answers the windows of all rooms in batches
    mqtt                        the MQTT client (inside the Publisher)
    web                         the live page's server (fed by the main thread, never waited for)
    main (this module)          every room's rule decisions, the sinks (publishing, metrics, clips,
                                score log), reloads, mute, hearing, signals, the watchdog, status
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monitor.audio.portaudio import PORTAUDIO, DeviceNotFound
from monitor.audio.sources import AudioSource, SourceError, resolve_device
from monitor.config import Config
from monitor.engine.api import Result
from monitor.engine.worker import EngineWorker
from monitor.metrics import Metrics
from monitor.pipeline import yes_no_prompts
from monitor.rooms import ActiveRoom
from monitor.rules import RuleReloader, RuleSet, load_rules
from monitor.scorelog import ScoreLog
from monitor.sinks import MetricsSink, MqttSink, ScoreLogSink, Sink
from monitor.systemd import Notifier
from monitor.yamlsource import ValidationFailed

log = logging.getLogger(__name__)

RELOAD_POLL = 2.0  # seconds between checks of the rule files
STATUS_EVERY = 10.0  # seconds between STATUS= lines and MQTT status updates
PRUNE_EVERY = 300.0  # seconds between clip retention passes
FIRST_AUDIO_GRACE = 10.0  # a whole home is ready this long after start even if a room has no sound yet
FLUSH_AT_LEAST = 2.0  # seconds the publisher always gets on the way out, to flush and say `offline`
EXIT_GRACE = 3.0  # seconds the interpreter's own exit may take after the daemon stopped (see _exit_within)


class StartupError(RuntimeError):
    """A failure before the daemon is running; its message is the one line the user sees."""


def entity_specs(ruleset: RuleSet) -> list[Any]:
    """Home Assistant entities for the enabled rules."""
    from monitor.publish import EntitySpec

    return [EntitySpec.of(r) for r in ruleset.rules if r.enabled]


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
        self.rooms: dict[str, ActiveRoom] = {}
        self.worker: EngineWorker | None = None
        self.publisher: Any = None
        self.reloaders: dict[Path, RuleReloader] = {}  # one per distinct rules path, shared by the rooms naming it
        self.scorelog: ScoreLog | None = None
        self.sinks: list[Sink] = []
        self.page: Any = None  # the live page (monitor.web.live.LivePage) when web.enabled
        self.state_dir = Path(config.state_dir)
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()  # a result arrived for some room
        self._commands: list[tuple[str, str, str]] = []  # (name, value, target) from the MQTT thread
        self._interrupts = 0
        self._started = time.monotonic()
        self._last_status = 0.0
        self._last_reload_poll = time.monotonic()
        self._last_prune = 0.0
        self._last_watchdog = 0.0
        self._batches_seen = 0
        self._processed_at_status = (0, time.monotonic())
        self._failed_at: set[tuple[str, str, int]] = set()  # where unexpected errors were logged in full (_survive)
        self.ready = threading.Event()

    @property
    def pipeline(self) -> Any:
        """The first room's pipeline (a one-microphone monitor has only this one)."""
        return next(iter(self.rooms.values())).pipeline if self.rooms else None

    # ------------------------------------------------------------------ control from outside

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    def _on_command(self, name: str, value: str, target: str) -> None:
        """From the MQTT thread: only queue; the main loop acts."""
        if name == "reload":
            self._reload.set()
        else:
            self._commands.append((name, value, target))

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
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())

    # ------------------------------------------------------------------ startup

    def _load_rulesets(self) -> dict[Path, RuleSet]:
        """Every distinct rules path of the rooms, validated; one line per problem, then StartupError."""
        rulesets: dict[Path, RuleSet] = {}
        problems = []
        for room in self.config.rooms:
            if room.rules in rulesets:
                continue
            try:
                rulesets[room.rules] = load_rules(room.rules)
            except ValidationFailed as exc:
                problems.extend(exc.problems)
        if problems:
            for problem in problems[1:]:
                log.error("%s", problem)
            more = f" (and {len(problems) - 1} more problem(s) above)" if len(problems) > 1 else ""
            raise StartupError(str(problems[0]) + more)
        return rulesets

    def _check_state_dir(self) -> None:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"state_dir: cannot write to {self.state_dir} ({exc.strerror}); create it or point state_dir elsewhere") from None
        probe = self.state_dir / ".writable"
        try:
            probe.write_text("probe\n")  # some bytes: a full file system may still create an empty file
        except OSError as exc:
            # A full or read-only disk must not silence the alarms (events are then published
            # without the outbox); a folder the service may not write to is a setup error.
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):
                raise StartupError(f"state_dir: cannot write to {self.state_dir} ({exc.strerror}); create it or point state_dir elsewhere") from None
            log.warning("state_dir %s: cannot write (%s); starting anyway: events are published without the outbox "
                        "until it can store them, clips and the mute state are not kept", self.state_dir, exc.strerror)
        finally:
            try:
                probe.unlink(missing_ok=True)
            except OSError:
                pass

    def _check_devices(self) -> dict[str, str]:
        """Every named input device must exist at start: {room id: hearing detail} of those that do not.

        One microphone is a config error (one line). In a whole home one unplugged microphone is
        that room's problem: it starts deaf (`capture_lost`) and its device is looked for with
        backoff while the other rooms listen; only a home where no room could hear does not start.
        """
        missing: dict[str, tuple[str, str]] = {}
        for i, room in enumerate(self.config.rooms):
            audio = room.audio
            if (i == 0 and self._source is not None) or audio.source != "mic" or audio.device is None:
                continue
            try:
                with PORTAUDIO.session() as sd:
                    resolve_device(audio.device, sd)
            except OSError as exc:
                raise StartupError(f"audio: cannot load PortAudio ({exc}); install libportaudio2") from None
            except SourceError as exc:
                where = ".".join(room.loc)
                text = f"{where}.{exc}" if where else str(exc)
                if not self.config.multi_room:
                    raise StartupError(text) from None
                detail = exc.short if isinstance(exc, DeviceNotFound) else str(exc)
                missing[room.id] = (text, detail)
        if missing and len(missing) == len(self.config.rooms):
            texts = [text for text, _ in missing.values()]
            for text in texts[1:]:
                log.error("%s", text)
            more = f" (and {len(texts) - 1} more above)" if len(texts) > 1 else ""
            raise StartupError(f"{texts[0]}{more}: no room can hear; plug the microphones in or fix the names")
        for text, _ in missing.values():
            log.error("%s; starting without it: the room cannot hear (capture_lost) until the device appears "
                      "(looked for with backoff)", text)
        return {room_id: detail for room_id, (_, detail) in missing.items()}

    def _prepare(self) -> None:
        cfg = self.config
        rulesets = self._load_rulesets()
        self.reloaders = {path: RuleReloader(path) for path in rulesets}
        self._check_state_dir()
        missing = self._check_devices()
        prompts = sorted({p for rs in rulesets.values() for p in yes_no_prompts(rs)})
        self.worker = EngineWorker(cfg.model, on_result=self._route, inbox_size=2, engine_factory=self._engine_factory,
                                   calibrate=prompts, calibrate_seconds=cfg.windows.length)
        if cfg.scores_log is not None:
            self.scorelog = ScoreLog(cfg.scores_log)
        if cfg.web.enabled:
            from monitor.web.live import LivePage
            from monitor.web.server import WebError

            try:
                self.page = LivePage(cfg.web, self._on_command, self._wake.set)
            except WebError as exc:
                raise StartupError(str(exc)) from None
        everywhere = cfg.multi_room and self._load_mute(self.state_dir / "muted")
        for i, room in enumerate(cfg.rooms):
            try:
                active = ActiveRoom(cfg, room, rulesets[room.rules], self.worker, self.state_dir, self.sinks,
                                    self._survive, source=self._source if i == 0 else None)
            except SourceError as exc:
                where = ".".join(room.loc)
                raise StartupError(f"{where}.{exc}" if where else str(exc)) from None
            active.set_muted(own=self._load_mute(active.mute_file), everywhere=everywhere)
            if room.id in missing:  # deaf from the start, said above: announced so, and not waited for
                active.pipeline.source.missing(missing[room.id])
                active.pipeline.check_hearing()
            self.rooms[room.id] = active

    def _start_publisher(self) -> None:
        """The publisher and the sinks; StartupError for what the `mqtt:` settings name wrongly
        (a password file or variable, a TLS file): a broker that cannot be reached is retried."""
        from monitor.publish import Publisher, PublisherError

        cfg = self.config
        rooms = [(r.id, r.name) for r in self.rooms.values()] if cfg.multi_room else None
        try:
            self.publisher = Publisher(cfg.mqtt, cfg.node_id, cfg.display_name, self.state_dir,
                                       on_command=self._on_command, rooms=rooms)
        except PublisherError as exc:
            raise StartupError(str(exc)) from None
        self.sinks[:] = [MqttSink(self.publisher), MetricsSink(self.metrics)]
        if self.scorelog is not None:
            self.sinks.append(ScoreLogSink(self.scorelog))
        if self.page is not None:
            self.sinks.append(self.page.sink)
            for room in self.rooms.values():
                self.page.add_room(room)
        if cfg.multi_room:
            self.publisher.node.set_muted(any(r.all_mute for r in self.rooms.values()))
            self.publisher.node.set_entities([])  # the hub device: whole-home mute, reload
        for room in self.rooms.values():
            room.channel = self.publisher.room(room.id)
            self._announce(room)
        self.publisher.start()

    def _announce(self, room: ActiveRoom) -> None:
        """The room's retained state: its mute switch, hearing, entities, rule states."""
        channel = room.channel
        channel.set_muted(room.own_mute)
        hearing = room.hearing
        channel.set_hearing(hearing.ok, hearing.reason, hearing.detail)
        self.metrics.capture_ok.labels(room.id).set(1 if hearing.ok else 0)
        self.metrics.model_ok.labels(room.id).set(1 if room.model_state.ok else 0)
        self._announce_model()
        self.metrics.muted.labels(room.id).set(1 if room.pipeline.muted else 0)
        for counter in (self.metrics.windows, self.metrics.processed, self.metrics.failed, self.metrics.skipped,
                        self.metrics.lost, self.metrics.lost_seconds, self.metrics.overflows):
            counter.labels(room.id)  # every room's series exists from the start, at 0
        channel.set_entities(entity_specs(room.pipeline.rules.ruleset))
        for rule_id, on in room.pipeline.rules.on_states().items():
            channel.publish_state(rule_id, on)

    # ------------------------------------------------------------------ run

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (or every finite source ends); the process exit code.

        Once the publisher runs, every way out goes through `_shutdown` (flush the outbox, say
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
            self._show_status(force=True)
        try:
            return self._run_listening()
        except Exception:  # noqa: BLE001 - logged in full; exit non-zero so that the service restarts
            log.exception("unexpected error; stopping so that the service restarts")
            return 1
        finally:
            try:
                self._shutdown()
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
        self.notifier.ready(self._status_line())
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
            for room in self.rooms.values():
                while (result := room.pipeline.next_result(timeout=0)) is not None:
                    self._handle(room, result)
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

    def _survive(self, what: str, exc: BaseException) -> None:
        """Log an unexpected error met while handling `what`, and carry on.

        The traceback is logged the first time an error comes from a given place and later ones
        from there go to debug, so a bug hit on every window neither stops the monitor (and its
        alarms) nor floods the log.
        """
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = (type(exc).__name__, tb.tb_frame.f_code.co_filename if tb else "", tb.tb_lineno if tb else 0)
        if where in self._failed_at:
            log.debug("error again while handling %s: %r", what, exc)
            return
        self._failed_at.add(where)
        log.error("unexpected error while handling %s; carrying on (logged in full once)", what, exc_info=exc)

    # ------------------------------------------------------------------ per window

    def _handle(self, room: ActiveRoom, result: Result) -> None:
        """Engine figures, then the room decides and publishes; never raises."""
        try:
            self._engine_figures(room)
        except Exception as exc:  # noqa: BLE001 - a metric is not worth a window
            self._survive("the engine metrics", exc)
        room.handle(result)

    def _engine_figures(self, room: ActiveRoom) -> None:
        m = self.metrics
        self._sync_room(room)
        worker = self.worker
        if worker is not None and worker.stats.batches != self._batches_seen:
            self._batches_seen = worker.stats.batches
            m.engine_ms.observe(worker.stats.last_engine_ms)
            m.batch.set(worker.stats.last_batch)
            m.rtf.set(worker.stats.last_engine_ms / 1000.0 / self.config.windows.hop)
        m.lag.labels(room.id).set(room.pipeline.stats.last_lag)

    # ------------------------------------------------------------------ housekeeping

    def _tick(self) -> None:
        now = time.monotonic()
        while self._commands:
            self._command(*self._commands.pop(0))
        for room in self.rooms.values():
            self._check_hearing(room)
        self._check_model()
        if self._reload.is_set():
            self._reload.clear()
            self._do_reload("reload requested", list(self.reloaders))
        elif now - self._last_reload_poll >= RELOAD_POLL:
            self._last_reload_poll = now
            changed = [path for path, reloader in self.reloaders.items() if reloader.changed()]
            if changed:
                self._do_reload("rule files changed", changed)
        self._watchdog(now)
        self._show_status()
        if now - self._last_status >= STATUS_EVERY:
            self._last_status = now
            self._report_status()
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

    def _do_reload(self, why: str, paths: list[Path]) -> None:
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
                if room.channel is not None:
                    room.channel.set_entities(entity_specs(outcome.ruleset))
                    for rule_id, on in room.pipeline.rules.on_states().items():
                        room.channel.publish_state(rule_id, on)
                if self.page is not None:
                    self.page.show_rules(room)
        self._report_status()

    # ------------------------------------------------------------------ mute and hearing

    def _command(self, name: str, value: str, target: str) -> None:
        """A mute switch from MQTT: a room's own, or (the node's, in a whole home) every room's."""
        if name != "mute":
            return
        muted = value == "ON"
        everywhere = self.config.multi_room and target == self.config.node_id
        if everywhere:
            self._save_mute(self.state_dir / "muted", muted)
            if self.publisher is not None:
                self.publisher.node.set_muted(muted)
            log.info("all rooms muted" if muted else "whole-home mute off")
            for room in self.rooms.values():
                self._mute_room(room, everywhere=muted)
        elif target in self.rooms:
            room = self.rooms[target]
            self._save_mute(room.mute_file, muted)
            self._mute_room(room, own=muted)
        self._show_status(force=True)

    def _set_muted(self, muted: bool) -> None:
        """Mute or unmute the one room of a one-microphone monitor (tests, in-process callers)."""
        self._command("mute", "ON" if muted else "OFF", next(iter(self.rooms)))

    def _mute_room(self, room: ActiveRoom, own: bool | None = None, everywhere: bool | None = None) -> None:
        changed = room.set_muted(own=own, everywhere=everywhere)
        if room.channel is not None:
            room.channel.set_muted(room.own_mute)
        if not changed:
            return
        muted = room.pipeline.muted
        prefix = f"{room.id}: " if self.config.multi_room else ""
        log.info("%s%s", prefix, "muted: no questions asked, no audio kept" if muted else "unmuted: listening again")
        self.metrics.muted.labels(room.id).set(1 if muted else 0)
        self._check_hearing(room)
        self._report_status()

    def _check_hearing(self, room: ActiveRoom) -> None:
        """Notice a room that stopped (or started again) hearing: OFF events, the problem sensor, metrics."""
        changed, events = room.check_hearing()
        if not changed:
            return
        hearing = room.hearing
        room.publish(events, None)
        self.metrics.capture_ok.labels(room.id).set(1 if hearing.ok else 0)
        if room.channel is not None:
            room.channel.set_hearing(hearing.ok, hearing.reason, hearing.detail)
        self._report_status()

    def _check_model(self) -> None:
        """Notice rooms the model stopped (or started again) answering: OFF events, the Model problem sensor, metrics."""
        changed = False
        for room in self.rooms.values():
            moved, events = room.check_model()
            if moved:
                changed = True
                room.publish(events, None)
                self.metrics.model_ok.labels(room.id).set(1 if room.model_state.ok else 0)
        if changed:
            self._announce_model()
            self._report_status()

    def _announce_model(self) -> None:
        """The daemon-wide Model problem sensor: ON while any room is model_failed."""
        if self.publisher is None:
            return
        failed = {rid: r.model_state.detail for rid, r in self.rooms.items() if not r.model_state.ok}
        if self.config.multi_room:
            detail = "; ".join(f"{rid}: {d}" for rid, d in failed.items())
        else:
            detail = next(iter(failed.values()), "")
        self.publisher.node.set_model(not failed, detail, list(failed) if self.config.multi_room else None)

    def _load_mute(self, path: Path) -> bool:
        """Mute survives a restart: a privacy switch that forgets itself is no privacy switch."""
        try:
            muted = path.read_text().strip() == "ON"
        except OSError:
            return False
        if muted:
            log.info("starting muted (as left before the restart)%s",
                     "" if path.name == "muted" else f": {path.name.removeprefix('muted-')}")
        return muted

    def _save_mute(self, path: Path, muted: bool) -> None:
        try:
            path.write_text("ON\n" if muted else "OFF\n")
        except OSError as exc:
            log.warning("cannot remember the mute state in %s (%s)", path, exc.strerror)

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """The JSON-able status published retained on MQTT and summarised for systemd.

        A one-microphone monitor reports its room's fields at the top level; a whole home has
        them per room under `rooms`.
        """
        now = time.monotonic()
        processed_now = sum(r.pipeline.stats.processed for r in self.rooms.values())
        processed, since = self._processed_at_status
        rate = (processed_now - processed) / (now - since) if now > since else 0.0
        engine_ms = self.worker.stats.last_engine_ms if self.worker is not None else 0.0
        rooms = {room_id: room.status() for room_id, room in self.rooms.items()}
        out: dict[str, Any] = {  # the publisher adds the version and its own counters
            "uptime_s": round(now - self._started, 1),
            "windows_per_s": round(rate, 3),
            "real_time_factor": round(engine_ms / 1000.0 / self.config.windows.hop, 3),
            "mqtt": "connected" if self.publisher is not None and self.publisher.connected else "disconnected",
            "outbox": self.publisher.outbox_depth if self.publisher is not None else 0,
            "rules_reload": self._reload_status(),
        }
        if not self.config.multi_room and rooms:
            return {**next(iter(rooms.values())), **out}
        deaf = [room_id for room_id, s in rooms.items() if s["hearing"] not in ("ok", "muted")]
        failed = [room_id for room_id, s in rooms.items() if s["model"] != "ok"]
        listening = [room_id for room_id, s in rooms.items() if s["state"] == "listening"]
        out["state"] = ("deaf" if deaf and len(deaf) == len(rooms) else "model_failed" if failed and not listening
                        else "listening")
        out["model"] = "model_failed" if failed else "ok"
        out["rooms"] = rooms
        return out

    def _show_status(self, force: bool = False) -> None:
        """The live page's status line and mute buttons (at most once a second unless forced)."""
        if self.page is not None:
            self.page.show_status(self._page_status, force)

    def _page_status(self) -> dict[str, Any]:
        s = self.status()
        reload = next(iter(self.reloaders.values())).last if len(self.reloaders) == 1 else None
        return {"name": self.config.display_name, "node": self.config.node_id, "multi_room": self.config.multi_room,
                "mqtt": s["mqtt"], "windows_per_s": s["windows_per_s"], "outbox": s["outbox"],
                "muted_all": any(r.all_mute for r in self.rooms.values()),
                "rules_reload_message": reload.message if reload is not None else None,
                "rooms": {rid: {**room.status(), "muted_own": room.own_mute} for rid, room in self.rooms.items()}}

    def _reload_status(self) -> Any:
        """The latest reload of the one rules path, or of each path (keyed by path) when rooms differ."""
        if len(self.reloaders) == 1:
            return next(iter(self.reloaders.values())).status()
        return {str(path): r.status() for path, r in self.reloaders.items()} or None

    def _status_line(self) -> str:
        s = self.status()
        common = (f"{s['windows_per_s']:.2f} windows/s, RTF {s['real_time_factor']:.2f}, MQTT {s['mqtt']}, "
                  f"outbox {s['outbox']}")
        if "rooms" not in s:
            deaf = f"cannot hear ({s['hearing']}: {s['hearing_detail']}); " if s["hearing"] not in (None, "ok") else ""
            failed = f"model failed ({s['model_detail']}); " if s["model"] != "ok" else ""
            return f"{deaf}{failed}{s['state']}: {common}, lag {s['lag_s'] or 0:.1f}s, skipped {s['skipped']}"
        rooms = s["rooms"]
        cannot = [f"{rid} ({r['hearing']})" for rid, r in rooms.items() if r["hearing"] != "ok"]
        deaf = f"cannot hear: {', '.join(cannot)}; " if cannot else ""
        unanswered = [rid for rid, r in rooms.items() if r["model"] != "ok"]
        failed = f"model failed: {', '.join(unanswered)}; " if unanswered else ""
        listening = sum(r["state"] == "listening" for r in rooms.values())
        skipped = sum(r["skipped"] for r in rooms.values())
        return f"{deaf}{failed}{listening}/{len(rooms)} rooms listening: {common}, skipped {skipped}"

    def _sync_totals(self) -> None:
        for room in self.rooms.values():
            self._sync_room(room)

    def _sync_room(self, room: ActiveRoom) -> None:
        """Counters kept by the room's capture and window threads, carried into the metrics."""
        m = self.metrics
        p = room.pipeline
        m.sync_total(m.windows, room.id, p.stats.windows)
        m.sync_total(m.processed, room.id, p.stats.processed)
        m.sync_total(m.failed, room.id, p.stats.failed)
        m.sync_total(m.skipped, room.id, p.skipped)
        m.sync_total(m.lost, room.id, p.lost_windows)
        m.sync_total(m.lost_seconds, room.id, p.source.stats.lost_seconds)
        m.sync_total(m.overflows, room.id, p.source.stats.overflows)

    def _report_status(self) -> None:
        """Metrics, STATUS= and the MQTT status; never raises (it also runs on the way out)."""
        try:
            self._send_status()
        except Exception as exc:  # noqa: BLE001 - a status is not worth the monitor
            self._survive("the status", exc)

    def _send_status(self) -> None:
        if not self.rooms:
            return
        m = self.metrics
        self._sync_totals()
        if self.publisher is not None:
            m.outbox.set(self.publisher.outbox_depth)
            m.outbox_ok.set(1 if self.publisher.outbox_ok else 0)
            m.mqtt.set(1 if self.publisher.connected else 0)
        status = self.status()
        self._processed_at_status = (sum(r.pipeline.stats.processed for r in self.rooms.values()), time.monotonic())
        self.notifier.status(self._status_line())
        if self.publisher is not None:
            self.publisher.publish_status(status)
        log.debug("status %s", json.dumps(status))

    # ------------------------------------------------------------------ shutdown

    def _shutdown(self) -> None:
        """Stop everything within `stop_timeout`: the outbox and `offline` before waiting on any source.

        systemd kills the daemon `TimeoutStopSec` after SIGTERM, and then the broker misses what
        the outbox still holds and the hub sees the Last Will instead of `offline`. So capture and
        windows of every room are told to stop at once, in the background (a hung device or stream
        costs nothing here); the window in flight gets at most half the time; the answers that
        came are decided and published; the publisher flushes what the broker takes in the rest
        (at least FLUSH_AT_LEAST); only then is there any waiting for the sources, until the
        deadline. A step that fails is logged and the next one still runs.
        """
        self.notifier.stopping()
        timeout = self.config.stop_timeout
        deadline = time.monotonic() + timeout
        publisher, scorelog, worker = self.publisher, self.scorelog, self.worker
        stopping: list[tuple[str, threading.Thread]] = []

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        def audio() -> None:
            log.info("stopping: the outbox and `offline` first, everything within %gs", timeout)
            for room in self.rooms.values():
                thread = threading.Thread(target=room.pipeline.stop_audio, name=f"stop-{room.id}", daemon=True)
                thread.start()
                stopping.append((room.id, thread))

        def windows_in_flight() -> None:
            if worker is not None:
                worker.stop(timeout=left() / 2)
            # answers that arrived while stopping are still decided and published
            for room in self.rooms.values():
                while (result := room.pipeline.next_result(timeout=0)) is not None:
                    self._handle(room, result)

        def sources() -> None:
            for _room_id, thread in stopping:
                thread.join(left())
            hung = [room_id for room_id, thread in stopping if thread.is_alive()]
            if hung:
                log.warning("stopping: the capture of %s did not stop within %gs (a hung device or stream); "
                            "exiting without it", ", ".join(hung), timeout)

        steps: list[tuple[str, Callable[[], None]]] = []
        if self.rooms:
            steps += [("the capture", audio), ("the windows in flight", windows_in_flight)]
        if publisher is not None:
            steps += [("the status", self._report_status),
                      ("the publisher", lambda: publisher.stop(timeout=max(left(), FLUSH_AT_LEAST)))]
        if self.rooms:
            steps.append(("the capture (waiting)", sources))
        if scorelog is not None:
            steps.append(("the score log", scorelog.close))
        steps.append(("the metrics endpoint", self.metrics.close))
        if self.page is not None:
            steps.append(("the web page", self.page.stop))
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - the outbox and `offline` matter more than a tidy exit
                self._survive(f"stopping {what}", exc)
        log.info("stopped")


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
    _exit_within(EXIT_GRACE, code)
    return code


def _exit_within(seconds: float, code: int) -> None:
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
