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
            probe = self.state_dir / ".writable"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise StartupError(f"state_dir: cannot write to {self.state_dir} ({exc.strerror}); create it or point state_dir elsewhere") from None
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
        self.pipeline.muted.clear()
        if self._load_mute():
            self.pipeline.muted.set()

    def _start_publisher(self) -> None:
        from monitor.publish import Publisher

        self.publisher = Publisher(self.config.mqtt, self.config.node_id, self.config.display_name, self.state_dir,
                                 on_command=self._on_command)
        assert self.pipeline is not None
        self.publisher.set_muted(self.pipeline.muted.is_set())
        self.publisher.set_entities(entity_specs(self.pipeline.rules.ruleset))
        for rule_id, on in self.pipeline.rules.on_states().items():
            self.publisher.publish_state(rule_id, on)
        self.publisher.start()

    # ------------------------------------------------------------------ run

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (or a finite source ends); the process exit code."""
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
        self.notifier.status("loading the model")
        log.info("loading model %s", cfg.model.path or cfg.model.id)
        error = self.pipeline.load_model()
        if error is not None:  # the engine thread has logged the one line saying what to do
            self._shutdown()
            return 1
        if self._stop.is_set():
            self._shutdown()
            return 0
        self.pipeline.start_audio()
        if not self._wait_first_audio():
            self._shutdown()
            return 0 if self._stop.is_set() else 1
        self.notifier.ready(self._status_line())
        self.ready.set()
        log.info("listening: %d rule(s), windows of %gs every %gs", len(self.pipeline.rules.ruleset.rules),
                 cfg.windows.length, cfg.windows.hop)
        code = self._loop()
        self._shutdown()
        return code

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
                self._handle(result)
            self._tick()
            if pipeline.finished:
                log.info("end of %s: %d window(s) processed", self.config.audio.source, pipeline.stats.processed)
                return 0
            if pipeline.broken:
                log.error("the window scheduler stopped unexpectedly; exiting so that the service restarts")
                return 1
        return 0

    # ------------------------------------------------------------------ per window

    def _handle(self, result: Result) -> None:
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
        pipeline = self.pipeline
        assert pipeline is not None
        rules = pipeline.rules.ruleset
        for event in events:
            self.metrics.events.labels(event.rule_id, event.kind).inc()
            rule = rules.get(event.rule_id)
            kind = rule.kind if rule is not None else "yes_no"
            if (result is not None and self.clips is not None and not pipeline.muted.is_set()
                    and self.clips.wants(event, kind)):
                # the event's times are the window's, or for a transcript its utterance's, inside it
                window = result.window
                start = window.start + round((event.window_start - window.t_start) * window.sample_rate)
                end = window.start + round((event.window_end - window.t_start) * window.sample_rate)
                path = self.clips.save(event, pipeline.ring, start, end)
                if path is not None:
                    event = event.with_clip(str(path))
            log.info("event %s %s id=%s%s", event.rule_id, event.kind, event.id,
                     f" score={event.score:.3f}" if event.score is not None else (f" text={event.text!r}" if event.text else ""))
            if self.publisher is None:
                continue
            self.publisher.publish_event(event)
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
        if muted == self.pipeline.muted.is_set():
            if self.publisher is not None:
                self.publisher.set_muted(muted)
            return
        if muted:
            self.pipeline.muted.set()
        else:
            self.pipeline.muted.clear()
        self._save_mute(muted)
        log.info("muted: no questions asked, no audio saved" if muted else "unmuted: listening again")
        self.metrics.muted.set(1 if muted else 0)
        if self.publisher is not None:
            self.publisher.set_muted(muted)
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
        out: dict[str, Any] = {  # the publisher adds the version and its own counters
            "state": "muted" if p is not None and p.muted.is_set() else "listening",
            "uptime_s": round(now - self._started, 1),
            "windows_per_s": round(rate, 3),
            "real_time_factor": round(engine_ms / 1000.0 / self.config.windows.hop, 3),
            "lag_s": round(p.stats.last_lag, 2) if p is not None else None,
            "windows": p.stats.windows if p is not None else 0,
            "processed": p.stats.processed if p is not None else 0,
            "skipped": p.skipped if p is not None else 0,
            "failed": p.stats.failed if p is not None else 0,
            "capture": p.source.stats.state if p is not None else None,
            "overflows": p.source.stats.overflows if p is not None else 0,
            "mqtt": "connected" if self.publisher is not None and self.publisher.connected else "disconnected",
            "outbox": self.publisher.outbox_depth if self.publisher is not None else 0,
            "rules_reload": self.reloader.status() if self.reloader is not None else None,
        }
        return out

    def _status_line(self) -> str:
        s = self.status()
        return (f"{s['state']}: {s['windows_per_s']:.2f} windows/s, RTF {s['real_time_factor']:.2f}, "
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
        p = self.pipeline
        if p is None:
            return
        m = self.metrics
        self._sync_totals()
        if self.publisher is not None:
            m.outbox.set(self.publisher.outbox_depth)
            m.mqtt.set(1 if self.publisher.connected else 0)
        status = self.status()
        self._processed_at_status = (p.stats.processed, time.monotonic())
        self.notifier.status(self._status_line())
        if self.publisher is not None:
            self.publisher.publish_status(status)
        log.debug("status %s", json.dumps(status))

    # ------------------------------------------------------------------ shutdown

    def _shutdown(self) -> None:
        self.notifier.stopping()
        timeout = self.config.stop_timeout
        if self.pipeline is not None:
            log.info("stopping: capture first, then the window in flight (at most %gs)", timeout)
            # answers that arrived while stopping are still decided and published
            for result in self.pipeline.stop(timeout=timeout):
                self._handle(result)
        if self.publisher is not None:
            self._report_status()
            self.publisher.stop(timeout=timeout)
        if self.scorelog is not None:
            self.scorelog.close()
        self.metrics.close()
        log.info("stopped")


def run_daemon(config: Config) -> int:
    """Entry point of `audio-monitor run`."""
    return Daemon(config).run()
