"""Labels from where people are: an alert marked right or a false alarm, or "it missed something", saved for tuning.

The page and MQTT hand a `LabelRequest` to `submit` (on their own threads: it is only queued,
bounded); the main loop carries it out in `apply`, where the clips are also written and pruned,
so a clip is never read while retention deletes it. What is saved is what the model heard:

- an alert: the event's evidence clip (its window with `clips.pre_roll` before it and, once heard,
  `clips.post_roll` after it), read back;
  the daemon remembers the latest ON events of yes/no rules (bounded, across restarts:
  `monitor.labels.recent`) with their clip, score and question. A clip already deleted by
  retention is said so (410); nothing else is saved.
- a miss: the last N seconds of the room's ring buffer (`ActiveRoom.recent_audio`), as a positive.

Nothing is kept while the room is muted, nor for text and match rules (the store refuses those).
As one of the daemon's sinks it also sees the events (to remember them) and the rule sets (to
show, per rule, the labels kept, the current threshold's hits and false alarms on them, and the
latest `audio-monitor compare` report, which is written under state_dir/compare/<room>/).
"""

from __future__ import annotations

import collections
import json
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from monitor.config import Config
from monitor.engine.api import Result
from monitor.events import Event, iso_time
from monitor.labels.recent import Heard, RecentAlerts
from monitor.labels.requests import LabelRequest, Outcome
from monitor.labels.store import Label, LabelStore, compare_dir, read_labels, verdict_of
from monitor.rooms import ActiveRoom
from monitor.rules import RuleSet
from monitor.sinks import RoomState, Status

log = logging.getLogger(__name__)

QUEUE = 16  # labels waiting for the main loop; more are answered "busy"
COMPARE_EVERY = 30.0  # seconds between looks for a newer compare report


class Labeller:
    """Label requests in, labelled clips out (the main thread), and what the page shows of them."""

    def __init__(self, config: Config, state_dir: Path, rooms: Mapping[str, ActiveRoom],
                 clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.state_dir = Path(state_dir)
        self.rooms = rooms
        self.store = LabelStore(self.state_dir / "labels", config.labels)
        self.show: Callable[[str, dict[str, Any]], None] | None = None  # the page's per-room summary, when it has one
        self.clock = clock
        self.recent = RecentAlerts(self.state_dir)  # kept across restarts: a notification outlives the daemon
        self._rules: dict[str, RuleSet] = {}
        self._queue: collections.deque[tuple[LabelRequest, Future[Outcome]]] = collections.deque()
        self._compare_seen: dict[str, float] = {}
        self._last_compare_look = 0.0

    @property
    def model(self) -> str:
        model = self.config.model
        return (model.name or model.label) if model.backend == "openai" else model.label

    # ------------------------------------------------------------------ any thread

    def submit(self, request: LabelRequest) -> Future[Outcome]:
        """Queue a label for the main loop; its outcome arrives on the future (at once when busy)."""
        future: Future[Outcome] = Future()
        if len(self._queue) >= QUEUE:
            future.set_result(Outcome(503, f"label not saved: {QUEUE} labels are waiting already; try again"))
        else:
            self._queue.append((request, future))
        return future

    # ------------------------------------------------------------------ the main thread

    def apply(self) -> None:
        """Carry out the waiting labels, and look for a newer compare report now and then."""
        while self._queue:
            request, future = self._queue.popleft()
            try:
                outcome = self.label(request)
            except Exception as exc:  # noqa: BLE001 - a label must not stop the listening; said in full once
                log.exception("label of %s/%s not saved", request.room, request.rule)
                outcome = Outcome(503, f"label not saved: {type(exc).__name__}: {exc}")
            if not outcome.ok:
                log.warning("%s (from %s)", outcome.message, request.origin)
            future.set_result(outcome)
        now = self.clock()
        if self.show is not None and now - self._last_compare_look >= COMPARE_EVERY:
            self._last_compare_look = now
            for room_id in self._rules:
                if self._compare_changed(room_id):
                    self.refresh(room_id)

    def label(self, request: LabelRequest) -> Outcome:
        """Save one label (or say, in one line, why not)."""
        room = self.rooms.get(request.room)
        ruleset = self._rules.get(request.room)
        rule = ruleset.get(request.rule) if ruleset is not None else None
        if room is None or rule is None:
            return Outcome(404, f"label not saved: no rule {request.rule!r} in room {request.room!r}")
        verdict = verdict_of(request.answer)
        assert verdict is not None
        if request.event is None:
            seconds = request.missed_seconds or 0.0
            audio, end = room.recent_audio(seconds) if not room.pipeline.muted else (np.zeros(0, np.float32), time.time())
            label = Label(room.id, rule.id, verdict, audio, end, question=getattr(rule, "ask", None), model=self.model,
                          origin=request.origin)
        else:
            heard = self.recent.get(request.event)
            if heard is None or heard.room != room.id or heard.rule != rule.id:
                return Outcome(404, f"label not saved: event {request.event} of {room.id}/{rule.id} is not known "
                                    f"(the daemon remembers its latest {self.recent.limit} alerts)")
            if heard.clip is None:
                return Outcome(410, f"label not saved: no clip was kept of event {request.event} (clips.enabled is "
                                    "off, or it could not be written); a label needs the audio the model heard")
            try:
                audio, rate = sf.read(heard.clip, dtype="float32", always_2d=False)
            except (OSError, sf.LibsndfileError, RuntimeError):
                return Outcome(410, f"label not saved: the clip of event {request.event} is gone ({heard.clip} was "
                                    "deleted by clips.max_age / clips.max_total_mb)")
            duration = len(audio) / rate
            start = heard.window_at if heard.window_at is not None else max(0.0, duration - heard.window_s)
            label = Label(room.id, rule.id, verdict, audio, heard.time, event=request.event, question=heard.question,
                          model=self.model, score=heard.score, window=(start, min(duration, start + heard.window_s)),
                          origin=request.origin, sample_rate=rate)
        saved = self.store.save(label, muted=room.pipeline.muted, rule_kind=rule.kind)
        if not saved.ok:
            status = 409 if "muted" in saved.reason or "rule, whose audio" in saved.reason else 503
            return Outcome(status, saved.reason)
        self.refresh(room.id)
        return Outcome(200, f"saved as a {verdict} of {room.id}/{rule.id}: {saved.wav}", str(saved.wav))

    # ------------------------------------------------------------------ a sink (the main thread)

    def window(self, room: str, result: Result) -> None:
        pass

    def event(self, room: str, event: Event) -> None:
        """Remember an alert of a yes/no rule, to label it later."""
        ruleset = self._rules.get(room)
        rule = ruleset.get(event.rule_id) if ruleset is not None else None
        if event.kind != "on" or rule is None or rule.kind != "yes_no":
            return
        score = event.lift if getattr(rule, "use", "score") == "lift" else event.score
        active = self.rooms.get(room)
        placed = active.clips.window_in(event.clip) if active is not None and event.clip else None
        self.recent.add(Heard(event.id, room, rule.id, event.ts, event.clip, score, getattr(rule, "ask", None),
                              max(0.0, event.window_end - event.window_start), placed[0] if placed else None))

    def room_state(self, room: str, state: RoomState) -> None:
        if "rules" in state.changed:
            self._rules[room] = state.rules
            self._compare_changed(room)
            self.refresh(room)

    def status(self, status: Status) -> None:
        pass

    # ------------------------------------------------------------------ what the page shows

    def refresh(self, room: str) -> None:
        if self.show is not None and room in self._rules:
            self.show(room, self.summary(room))

    def summary(self, room: str) -> dict[str, Any]:
        """rule -> labels kept, the current threshold on them (from the scores kept), the latest comparison."""
        ruleset = self._rules[room]
        out: dict[str, Any] = {}
        clips = read_labels(self.store.folder, room=room) if (self.store.folder / room).is_dir() else []
        for rule in ruleset.rules:
            if rule.kind != "yes_no" or not rule.enabled:
                continue
            mine = [c for c in clips if c.rule == rule.id]
            threshold = float(getattr(rule, "threshold", 1.0))

            def over(verdict: str) -> tuple[int, int]:
                scores = [c.info.get("score") for c in mine if c.verdict == verdict]
                scored = [s for s in scores if isinstance(s, (int, float))]
                return sum(1 for s in scored if s >= threshold), len(scored)

            hits, pos_scored = over("positive")
            false_alarms, neg_scored = over("negative")
            out[rule.id] = {"positive": sum(1 for c in mine if c.verdict == "positive"),
                            "negative": sum(1 for c in mine if c.verdict == "negative"),
                            "threshold": threshold, "hits": hits, "positive_scored": pos_scored,
                            "false_alarms": false_alarms, "negative_scored": neg_scored,
                            "compare": self._comparison(room, rule.id)}
        return out

    def _comparison(self, room: str, rule: str) -> dict[str, Any] | None:
        path = compare_dir(self.state_dir, room, rule) / "report.json"
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
            when = path.stat().st_mtime
            phrasings = [p for p in report["phrasings"] if isinstance(p.get("auc"), (int, float))]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        if not phrasings:
            return None
        best = max(phrasings, key=lambda p: p["auc"])
        current = next((p for p in report["phrasings"] if p.get("current")), None)
        return {"time": iso_time(when), "clips": report.get("clips"), "best": {k: best.get(k) for k in (
                "n", "ask", "auc", "threshold", "recall_at_budget")},
                "current_auc": None if current is None else current.get("auc")}

    def _compare_changed(self, room: str) -> bool:
        """Whether a compare report of this room appeared or changed since last looked at."""
        changed = False
        ruleset = self._rules.get(room)
        for rule in ruleset.rules if ruleset is not None else ():
            key = f"{room}/{rule.id}"
            try:
                mtime = (compare_dir(self.state_dir, room, rule.id) / "report.json").stat().st_mtime
            except OSError:
                mtime = 0.0
            if self._compare_seen.get(key, 0.0) != mtime:
                self._compare_seen[key] = mtime
                changed = True
        return changed
