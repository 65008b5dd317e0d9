"""The daemon: the listening pipeline wired to MQTT, metrics, clips, signals and systemd.

Threads and what they own:
    capture (PortAudio + pump)  the write end of the ring buffer
    windows                     cutting windows, planning questions, submitting to the engine
    engine                      the model
    mqtt                        the MQTT client (inside the Publisher)
    main (this module)          the rule engine's decisions, publishing, clips, reloads, signals,
                                the systemd watchdog and status
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

from monitor.audio.sources import AudioSource, SourceError, resolve_device
from monitor.clips import ClipStore
from monitor.config import Config
from monitor.engine.api import Result
from monitor.events import Event
from monitor.metrics import Metrics
from monitor.pipeline import Pipeline
from monitor.rules import RuleReloader, RuleSet, load_rules
from monitor.scorelog import ScoreLog
from monitor.systemd import Notifier
from monitor.yamlsource import ValidationFailed

log = logging.getLogger(__name__)

RELOAD_POLL = 2.0  # seconds between checks of the rule files
STATUS_EVERY = 10.0  # seconds between STATUS= lines and MQTT status updates
PRUNE_EVERY = 300.0  # seconds between clip retention passes


class StartupError(RuntimeError):
    """A failure before the daemon is running; its message is the one line the user sees."""


def entity_specs(ruleset: RuleSet) -> list[Any]:
    """Home Assistant entities for the enabled rules."""
    from monitor.publish import EntitySpec

    return [EntitySpec(id=r.id, name=r.name, kind=r.kind, device_class=r.device_class, icon=r.icon)
            for r in ruleset.rules if r.enabled]


class Daemon:
    """`audio-monitor run`: everything from the microphone to the broker, for as long as it runs."""

    def __init__(self, config: Config, *, source: AudioSource | None = None,
                 engine_factory: Callable[..., Any] | None = None, notifier: Notifier | None = None):
        self.config = config
        self._source = source
        self._engine_factory = engine_factory
        self.notifier = notifier or Notifier()
        self.metrics = Metrics()
        self.metrics_port: int | None = None
        self.pipeline: Pipeline | None = None
        self.publisher: Any = None
        self.reloader: RuleReloader | None = None
        self.clips: ClipStore | None = None
        self.scorelog: ScoreLog | None = None
        self.state_dir = Path(config.state_dir)
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._mute_request: bool | None = None
        self._interrupts = 0
        self._started = time.monotonic()
        self._last_status = 0.0
        self._last_reload_poll = time.monotonic()
        self._last_prune = 0.0
        self._last_watchdog = 0.0
        self._processed_at_status = (0, time.monotonic())
        self.ready = threading.Event()
        self._failed_at: set[tuple[str, str, int]] = set()  # where unexpected errors were logged in full (_survive)

    # ------------------------------------------------------------------ control from outside

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    def _on_command(self, name: str, value: str) -> None:
        """From the MQTT thread: only set flags; the main loop acts."""
        if name == "mute":
            self._mute_request = value == "ON"
        elif name == "reload":
            self._reload.set()

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

    def _prepare(self) -> None:
        cfg = self.config
        try:
            ruleset = load_rules(cfg.rules)
        except ValidationFailed as exc:
            for problem in exc.problems[1:]:
                log.error("%s", problem)
            raise StartupError(str(exc.problems[0]) + (f" (and {len(exc.problems) - 1} more problem(s) above)" if len(exc.problems) > 1 else "")) from None
        self.reloader = RuleReloader(cfg.rules)
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
        if self._source is None and cfg.audio.file_path is None and cfg.audio.device is not None:
            try:  # a misnamed device is a config error at startup (later it is only retried)
                import sounddevice as sd

                resolve_device(cfg.audio.device, sd)
            except OSError as exc:
                raise StartupError(f"audio: cannot load PortAudio ({exc}); install libportaudio2") from None
            except SourceError as exc:
                raise StartupError(str(exc)) from None
        try:
            self.pipeline = Pipeline(cfg, ruleset, source=self._source, engine_factory=self._engine_factory)
        except SourceError as exc:
            raise StartupError(str(exc)) from None
        self.clips = ClipStore(self.state_dir / "clips", cfg.clips)
        if cfg.scores_log is not None:
            self.scorelog = ScoreLog(cfg.scores_log)
        self.pipeline.set_muted(self._load_mute())

    def _start_publisher(self) -> None:
        from monitor.publish import Publisher

        self.publisher = Publisher(self.config.mqtt, self.config.node_id, self.config.display_name, self.state_dir,
                                 on_command=self._on_command)
        assert self.pipeline is not None
        self.publisher.set_muted(self.pipeline.muted)
        hearing = self.pipeline.hearing
        self.publisher.set_hearing(hearing.ok, hearing.reason, hearing.detail)
        self.metrics.capture_ok.labels(self.config.node_id).set(1 if hearing.ok else 0)
        self.publisher.set_entities(entity_specs(self.pipeline.rules.ruleset))
        for rule_id, on in self.pipeline.rules.on_states().items():
            self.publisher.publish_state(rule_id, on)
        self.publisher.start()

    # ------------------------------------------------------------------ run

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (or a finite source ends); the process exit code.

        Once the publisher runs, every way out goes through `_shutdown` (flush the outbox, say
        `offline`), also after an unexpected error, which is logged with its traceback.
        """
        self._install_signals()
        try:
            self._prepare()
        except StartupError as exc:
            log.error("%s", exc)
            return 1
        assert self.pipeline is not None
        cfg = self.config
        self._start_publisher()
        if cfg.metrics.enabled:
            try:
                self.metrics_port = self.metrics.serve(cfg.metrics.host, cfg.metrics.port)
                log.info("metrics on http://%s:%d/metrics", cfg.metrics.host, self.metrics_port)
            except OSError as exc:
                log.error("metrics: cannot listen on %s:%d (%s); set metrics.port or metrics.enabled: false",
                          cfg.metrics.host, cfg.metrics.port, exc.strerror)
        try:
            self.notifier.status("loading the model")
            log.info("loading model %s", cfg.model.path or cfg.model.id)
            error = self.pipeline.load_model()
            if error is not None:  # the engine thread has logged the one line saying what to do
                return 1
            if self._stop.is_set():
                return 0
            self.pipeline.start_audio()
            if not self._wait_first_audio():
                return 0 if self._stop.is_set() else 1
            self.notifier.ready(self._status_line())
            self.ready.set()
            log.info("listening: %d rule(s), windows of %gs every %gs", len(self.pipeline.rules.ruleset.rules),
                     cfg.windows.length, cfg.windows.hop)
            return self._loop()
        except Exception:  # noqa: BLE001 - logged in full; exit non-zero so that the service restarts
            log.exception("unexpected error; stopping so that the service restarts")
            return 1
        finally:
            try:
                self._shutdown()
            except Exception:  # noqa: BLE001 - the exit code must still reach the service manager
                log.exception("error while stopping")

    def _wait_first_audio(self) -> bool:
        assert self.pipeline is not None
        stats = self.pipeline.source.stats
        warned = False
        started = time.monotonic()
        while not stats.first_audio.wait(0.5):
            if self._stop.is_set():
                return False
            if self.pipeline.source.finished:
                log.error("audio.source: no audio at all in the file")
                return False
            if not warned and time.monotonic() - started > 10:
                log.warning("no audio yet from the input device (%s); still waiting", stats.last_error or stats.state)
                warned = True
            self._tick()
        return True

    def _loop(self) -> int:
        pipeline = self.pipeline
        assert pipeline is not None
        while not self._stop.is_set():
            result = pipeline.next_result(timeout=0.25)
            if result is not None:
                self._handle(result)  # never raises
            try:
                self._tick()
            except Exception as exc:  # noqa: BLE001 - housekeeping must not end the listening
                self._survive("housekeeping", exc)
            if pipeline.finished:
                log.info("end of %s: %d window(s) processed", self.config.audio.source, pipeline.stats.processed)
                return 0
            if pipeline.broken:
                log.error("the window scheduler stopped unexpectedly; exiting so that the service restarts")
                return 1
        return 0

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

    def _handle(self, result: Result) -> None:
        """Decide, measure and publish one window; never raises (see _survive): the next window goes on."""
        try:
            self._handle_window(result)
        except Exception as exc:  # noqa: BLE001 - one bad window must not end the monitor
            self._survive("a window", exc)

    def _handle_window(self, result: Result) -> None:
        pipeline = self.pipeline
        assert pipeline is not None
        events = pipeline.process(result)
        m = self.metrics
        window = result.window
        if result.error is None and (result.scores or result.texts):
            m.engine_ms.observe(result.engine_ms)
            m.rtf.set(result.engine_ms / 1000.0 / self.config.windows.hop)
        m.lag.set(pipeline.stats.last_lag)
        self._sync_totals()
        m.level.set(window.dbfs)
        for key, score in result.scores.items():
            m.score.labels(key).set(score.score)
            m.lift.labels(key).set(score.lift)
        if self.scorelog is not None:
            self.scorelog.write(result)
        self._publish_events(events, result)
        if self.publisher is not None:
            self.publisher.publish_level(window.dbfs)
            if result.scores:
                self.publisher.publish_scores({k: {"score": round(s.score, 4), "lift": round(s.lift, 4)}
                                               for k, s in result.scores.items()})

    def _publish_events(self, events: list[Event], result: Result | None) -> None:
        """Save clips and publish events, each on its own: an error in one is logged and the rest go on."""
        for event in events:
            try:
                self._publish_event(event, result)
            except Exception as exc:  # noqa: BLE001 - the other events (alarms) must still go out
                self._survive(f"event {event.rule_id} {event.kind} id={event.id}", exc)

    def _publish_event(self, event: Event, result: Result | None) -> None:
        pipeline = self.pipeline
        assert pipeline is not None
        self.metrics.events.labels(event.rule_id, event.kind).inc()
        rule = pipeline.rules.ruleset.get(event.rule_id)
        kind = rule.kind if rule is not None else "yes_no"
        if (result is not None and self.clips is not None and not pipeline.muted
                and self.clips.wants(event, kind)):
            try:
                # the event's times are the window's, or for a transcript its utterance's, inside it
                window = result.window
                start = window.start + round((event.window_start - window.t_start) * window.sample_rate)
                end = window.start + round((event.window_end - window.t_start) * window.sample_rate)
                path = self.clips.save(event, pipeline.ring, start, end)
                if path is not None:
                    event = event.with_clip(str(path))
            except Exception as exc:  # noqa: BLE001 - the alarm goes out without its evidence
                self._survive(f"the clip of event {event.rule_id} {event.kind} id={event.id}", exc)
        # logged once the event is safe (stored, or handed over directly): the log never claims more
        route = self.publisher.publish_event(event) if self.publisher is not None else "none (no MQTT)"
        log.info("event %s %s id=%s%s via=%s", event.rule_id, event.kind, event.id,
                 f" score={event.score:.3f}" if event.score is not None else (f" text={event.text!r}" if event.text else ""),
                 route)
        if self.publisher is None:
            return
        if event.kind in ("on", "off"):
            self.publisher.publish_state(event.rule_id, event.kind == "on")
        elif event.kind == "text" and event.text is not None:
            self.publisher.publish_text(event.rule_id, event.text)

    # ------------------------------------------------------------------ housekeeping

    def _tick(self) -> None:
        now = time.monotonic()
        if self._mute_request is not None:
            self._set_muted(self._mute_request)
            self._mute_request = None
        self._check_hearing()
        if self._reload.is_set():
            self._reload.clear()
            self._do_reload("reload requested")
        elif now - self._last_reload_poll >= RELOAD_POLL:
            self._last_reload_poll = now
            if self.reloader is not None and self.reloader.changed():
                self._do_reload("rule files changed")
        self._watchdog(now)
        if now - self._last_status >= STATUS_EVERY:
            self._last_status = now
            self._report_status()
        if now - self._last_prune >= PRUNE_EVERY and self.clips is not None:
            self._last_prune = now
            keep = self.publisher.pending_clips() if self.publisher is not None else ()
            self.clips.prune(keep)

    def _watchdog(self, now: float) -> None:
        """WATCHDOG=1 only while the engine loop makes progress: a hung model stops the heartbeat."""
        interval = self.notifier.watchdog_seconds
        if not self.notifier.enabled or self.pipeline is None:
            return
        period = interval / 2 if interval else 1.0
        if now - self._last_watchdog < period:
            return
        heartbeat = self.pipeline.worker.heartbeat
        if now - heartbeat > period:
            return  # the engine has not moved: let systemd notice
        self._last_watchdog = now
        self.notifier.watchdog()

    def _do_reload(self, why: str) -> None:
        if self.reloader is None or self.pipeline is None:
            return
        log.info("%s: reloading %s", why, self.reloader.path)
        outcome = self.reloader.reload()
        if outcome.ok and outcome.ruleset is not None:
            events = self.pipeline.swap_rules(outcome.ruleset)
            self._publish_events(events, None)
            if self.publisher is not None:
                self.publisher.set_entities(entity_specs(outcome.ruleset))
                for rule_id, on in self.pipeline.rules.on_states().items():
                    self.publisher.publish_state(rule_id, on)
        self._report_status()

    def _set_muted(self, muted: bool) -> None:
        assert self.pipeline is not None
        if muted == self.pipeline.muted:
            if self.publisher is not None:
                self.publisher.set_muted(muted)
            return
        self.pipeline.set_muted(muted)
        self._save_mute(muted)
        log.info("muted: no questions asked, no audio kept" if muted else "unmuted: listening again")
        self.metrics.muted.set(1 if muted else 0)
        if self.publisher is not None:
            self.publisher.set_muted(muted)
        self._check_hearing()
        self._report_status()

    def _check_hearing(self) -> None:
        """Notice a room that stopped (or started again) hearing: OFF events, the problem sensor, a log line."""
        pipeline = self.pipeline
        if pipeline is None:
            return
        changed, events = pipeline.check_hearing()
        if not changed:
            return
        hearing = pipeline.hearing
        if hearing.ok:
            log.info("hearing again: windows are decided from now on")
        elif hearing.reason == "muted":
            log.info("cannot hear: muted; %d rule(s) that were ON turned OFF", len(events))
        else:
            log.error("cannot hear: capture lost (%s); %d rule(s) that were ON turned OFF, and the Microphone "
                      "problem sensor is ON until audio comes back", hearing.detail, len(events))
        self._publish_events(events, None)
        self.metrics.capture_ok.labels(self.config.node_id).set(1 if hearing.ok else 0)
        if self.publisher is not None:
            self.publisher.set_hearing(hearing.ok, hearing.reason, hearing.detail)
        self._report_status()

    def _load_mute(self) -> bool:
        """Mute survives a restart: a privacy switch that forgets itself is no privacy switch."""
        try:
            muted = (self.state_dir / "muted").read_text().strip() == "ON"
        except OSError:
            return False
        if muted:
            log.info("starting muted (as left before the restart)")
        self.metrics.muted.set(1 if muted else 0)
        return muted

    def _save_mute(self, muted: bool) -> None:
        try:
            (self.state_dir / "muted").write_text("ON\n" if muted else "OFF\n")
        except OSError as exc:
            log.warning("cannot remember the mute state in %s (%s)", self.state_dir, exc.strerror)

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """The JSON-able status published retained on MQTT and summarised for systemd."""
        p = self.pipeline
        now = time.monotonic()
        processed, since = self._processed_at_status
        rate = ((p.stats.processed - processed) / (now - since)) if p is not None and now > since else 0.0
        engine_ms = p.stats.last_engine_ms if p is not None else 0.0
        hearing = p.hearing if p is not None else None
        out: dict[str, Any] = {  # the publisher adds the version and its own counters
            "state": "muted" if p is not None and p.muted else "listening" if hearing is None or hearing.ok else "deaf",
            "hearing": hearing.label if hearing is not None else None,
            "hearing_detail": hearing.detail if hearing is not None and not hearing.ok else None,
            "uptime_s": round(now - self._started, 1),
            "windows_per_s": round(rate, 3),
            "real_time_factor": round(engine_ms / 1000.0 / self.config.windows.hop, 3),
            "lag_s": round(p.stats.last_lag, 2) if p is not None else None,
            "windows": p.stats.windows if p is not None else 0,
            "processed": p.stats.processed if p is not None else 0,
            "skipped": p.skipped if p is not None else 0,
            "failed": p.stats.failed if p is not None else 0,
            "undecided": p.stats.undecided if p is not None else 0,
            "capture": p.source.stats.state if p is not None else None,
            "overflows": p.source.stats.overflows if p is not None else 0,
            "mqtt": "connected" if self.publisher is not None and self.publisher.connected else "disconnected",
            "outbox": self.publisher.outbox_depth if self.publisher is not None else 0,
            "rules_reload": self.reloader.status() if self.reloader is not None else None,
        }
        return out

    def _status_line(self) -> str:
        s = self.status()
        deaf = f"cannot hear ({s['hearing']}: {s['hearing_detail']}); " if s["hearing"] not in (None, "ok") else ""
        return (f"{deaf}{s['state']}: {s['windows_per_s']:.2f} windows/s, RTF {s['real_time_factor']:.2f}, "
                f"lag {s['lag_s'] or 0:.1f}s, skipped {s['skipped']}, MQTT {s['mqtt']}, outbox {s['outbox']}")

    def _sync_totals(self) -> None:
        """Counters kept by the capture and window threads, carried into the metrics."""
        p = self.pipeline
        if p is None:
            return
        m = self.metrics
        m.sync_total(m.windows, "windows", p.stats.windows)
        m.sync_total(m.processed, "processed", p.stats.processed)
        m.sync_total(m.failed, "failed", p.stats.failed)
        m.sync_total(m.skipped, "skipped", p.skipped)
        m.sync_total(m.overflows, "overflows", p.source.stats.overflows)

    def _report_status(self) -> None:
        """Metrics, STATUS= and the MQTT status; never raises (it also runs on the way out)."""
        try:
            self._send_status()
        except Exception as exc:  # noqa: BLE001 - a status is not worth the monitor
            self._survive("the status", exc)

    def _send_status(self) -> None:
        p = self.pipeline
        if p is None:
            return
        m = self.metrics
        self._sync_totals()
        if self.publisher is not None:
            m.outbox.set(self.publisher.outbox_depth)
            m.outbox_ok.set(1 if self.publisher.outbox_ok else 0)
            m.mqtt.set(1 if self.publisher.connected else 0)
        status = self.status()
        self._processed_at_status = (p.stats.processed, time.monotonic())
        self.notifier.status(self._status_line())
        if self.publisher is not None:
            self.publisher.publish_status(status)
        log.debug("status %s", json.dumps(status))

    # ------------------------------------------------------------------ shutdown

    def _shutdown(self) -> None:
        """Stop everything in order; a step that fails is logged and the next one still runs."""
        self.notifier.stopping()
        timeout = self.config.stop_timeout
        pipeline, publisher, scorelog = self.pipeline, self.publisher, self.scorelog
        steps: list[tuple[str, Callable[[], None]]] = []
        if pipeline is not None:
            def drain() -> None:
                log.info("stopping: capture first, then the window in flight (at most %gs)", timeout)
                # answers that arrived while stopping are still decided and published
                for result in pipeline.stop(timeout=timeout):
                    self._handle(result)
            steps.append(("the pipeline", drain))
        if publisher is not None:
            steps += [("the status", self._report_status), ("the publisher", lambda: publisher.stop(timeout=timeout))]
        if scorelog is not None:
            steps.append(("the score log", scorelog.close))
        steps.append(("the metrics endpoint", self.metrics.close))
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - the outbox and `offline` matter more than a tidy exit
                self._survive(f"stopping {what}", exc)
        log.info("stopped")


def run_daemon(config: Config) -> int:
    """Entry point of `audio-monitor run`."""
    return Daemon(config).run()
