"""Replay a recording through the daemon's own listening path, as fast as the model answers.

`replay_file` drives `Pipeline` exactly as the daemon's main loop does — `next_result`,
`process`, the same drain at the end — with the file source in fast mode, so every window is
answered in order and the scores equal those the daemon logs (`scores_log`) for the same file.
What it keeps of each window is a light copy without the audio: a long recording replayed for
an evaluation costs kilobytes per minute, not the audio itself.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monitor import __version__
from monitor.audio.sources import SourceError
from monitor.config import Config
from monitor.engine.api import Result
from monitor.events import Event
from monitor.pipeline import Pipeline
from monitor.rules import RuleSet
from monitor.scorelog import ScoreLog, ScoreLogSink
from monitor.tuning.run import ReplayRun, light
from monitor.windows import Window

log = logging.getLogger(__name__)


class ReplayError(RuntimeError):
    """A replay that cannot run; str() is the one line the user sees.

    `logged` is True when the engine thread has already logged that line (a model that cannot
    be loaded), so the command line does not print it twice.
    """

    def __init__(self, message: str, logged: bool = False):
        super().__init__(message)
        self.logged = logged


class SharedEngine:
    """An engine factory that loads the model once and hands that engine to each pipeline in turn.

    An evaluation replays many recordings, one pipeline after the other; loading a 7B model for
    each would cost minutes apiece. Only one pipeline runs at a time, and each stops (joining its
    engine thread) before the next starts, so the engine still has one owner at any moment.
    The model is loaded as the daemon loads it: the backend `model.backend` names (a local
    model, a served one, ...).
    """

    def __init__(self, factory: Callable[..., Any] | None = None):
        self._factory = factory
        self.engine: Any = None

    def __call__(self, settings: Any) -> Any:
        if self.engine is None:
            if self._factory is not None:
                self.engine = self._factory(settings)
            else:
                from monitor.engine.backends import load_backend

                self.engine = load_backend(settings)
        return self.engine

    def close(self) -> None:
        """Release what a backend loaded here holds (a served model's connections); after the last
        pipeline stopped. An engine from the caller's factory stays the caller's."""
        close = getattr(self.engine, "close", None) if self._factory is None else None
        if close is not None:
            close()


def replay_file(config: Config, ruleset: RuleSet, *, engine_factory: Callable[..., Any] | None = None,
                scorelog: ScoreLog | None = None, progress: bool = False, start_time: float | None = None) -> ReplayRun:
    """Run the config's first room, whose source is a file read in fast mode, through the pipeline; raise ReplayError.

    That room's audio must name a file with `realtime: false` (`monitor.tuning.rooms.with_recording`
    makes such a config of any other). `start_time` is the wall-clock time of the file's first
    sample (epoch seconds; default: the file's modification time), so that schedules give the
    same events whenever the replay runs.
    """
    audio = config.rooms[0].audio
    path = audio.file_path
    if path is None or audio.realtime:
        raise ValueError("replay needs the room's audio.source: file:PATH and audio.realtime: false")
    if start_time is None:
        try:
            start_time = path.stat().st_mtime
        except OSError:
            start_time = None  # the source reports the missing file in its own words
    try:
        pipeline = Pipeline(config, ruleset, engine_factory=engine_factory, start_time=start_time)
    except SourceError as exc:
        raise ReplayError(str(exc)) from None
    run = ReplayRun(path=path, duration=float(getattr(pipeline.source, "duration", 0.0)))
    error = pipeline.load_model()
    if error is not None:
        pipeline.stop()
        raise ReplayError(error, logged=True)
    bar = _progress_bar(run, enabled=progress)
    scores = ScoreLogSink(scorelog) if scorelog is not None else None  # the daemon's own `scores_log` sink
    started = time.perf_counter()
    done = 0.0

    def handle(result: Result) -> None:
        nonlocal done
        events = pipeline.process(result)
        if scores is not None:
            scores.window(pipeline.id, result)
        window = light(result.window)
        run.results.append(dataclasses.replace(result, window=window))
        run.events.extend((event, window) for event in events)
        if bar is not None:
            now = window.end / window.sample_rate
            bar.update(max(0.0, now - done))
            done = max(done, now)

    pipeline.start_audio()
    try:
        while not pipeline.finished:
            result = pipeline.next_result(timeout=0.25)
            if result is not None:
                handle(result)
            if pipeline.broken:
                raise ReplayError(f"replay of {path} stopped: the window scheduler failed (see the error above)")
    finally:
        # answers that arrived while stopping are still decided, as in the daemon's shutdown
        for result in pipeline.stop():
            handle(result)
        if bar is not None:
            bar.close()
    run.wall_s = time.perf_counter() - started
    if not run.results:
        raise ReplayError("audio.source: no audio at all in the file")
    return run


def _progress_bar(run: ReplayRun, enabled: bool) -> Any:
    """A tqdm bar over seconds of audio, on stderr, only for a person watching a terminal."""
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=round(run.duration, 1), unit="s", unit_scale=False, desc=run.path.name, file=sys.stderr,
                leave=False, dynamic_ncols=True, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f}s "
                                                            "[{elapsed}<{remaining}, {rate_fmt}]")


# ---------------------------------------------------------------------------- outputs


def event_record(run: ReplayRun, event: Event, window: Window, node: str) -> dict[str, Any]:
    """The event's MQTT payload plus where it is in the file (seconds from its start)."""
    record = event.payload(node, __version__)
    record["seq"] = window.seq
    record["at"] = run.offset(event.ts)
    record["start"] = run.offset(event.window_start)
    record["end"] = run.offset(event.window_end)
    return record


def write_events(run: ReplayRun, path: Path, node: str) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for event, window in run.events:
            fh.write(json.dumps(event_record(run, event, window, node), ensure_ascii=False) + "\n")


def summary_line(run: ReplayRun, out_dir: Path | None = None) -> str:
    """One line: windows, events per rule, real-time speed."""
    counts = run.event_counts()
    parts = []
    for rule_id in sorted(counts):
        kinds = counts[rule_id]
        parts.append(f"{rule_id} " + " ".join(f"{kinds[k]} {k}" for k in ("on", "off", "text", "match") if kinds[k]))
    events = "; ".join(parts) if parts else "none"
    failed = f" ({run.failed} failed)" if run.failed else ""
    speed = f"{run.speed:.1f}x real time" if run.wall_s > 0 else "instant"
    where = f" -> {out_dir}" if out_dir is not None else ""
    return (f"{run.path.name}: {run.windows} windows{failed} over {run.duration:.1f}s of audio in {run.wall_s:.1f}s "
            f"({speed}); events: {events}{where}")


def write_replay(run: ReplayRun, out_dir: Path, ruleset: RuleSet, node: str) -> dict[str, Path]:
    """events.jsonl and timeline.png into `out_dir` (scores.jsonl is written while replaying)."""
    from monitor.tuning.plots import plot_timeline

    out_dir.mkdir(parents=True, exist_ok=True)
    events = out_dir / "events.jsonl"
    write_events(run, events, node)
    timeline = out_dir / "timeline.png"
    plot_timeline(run, ruleset, timeline)
    return {"scores": out_dir / "scores.jsonl", "events": events, "timeline": timeline}
