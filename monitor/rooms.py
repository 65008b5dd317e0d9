"""One room of a running daemon: its listening pipeline, evidence clips, mute switch, hearing and model state.

The daemon's main thread owns every `ActiveRoom`: it hands each answered window to `handle`,
and calls `check_hearing`, `check_model` and `set_muted` between windows. The room decides its rules, saves a
clip for an ON event, and passes windows, events and its lasting state (`announce`) on to the
daemon's sinks through their fan-out, which keeps one consumer's error from stopping an alarm.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monitor.audio.redact import describe_source
from monitor.audio.sources import AudioSource
from monitor.clips import ClipStore
from monitor.config import Config, Room
from monitor.engine.api import Result
from monitor.engine.worker import EngineWorker
from monitor.events import Event
from monitor.fanout import FanOut, Survive
from monitor.hearing import Hearing
from monitor.modelhealth import ModelState
from monitor.pipeline import Pipeline
from monitor.rules import RuleSet
from monitor.sinks import Part, RoomState, Sink

log = logging.getLogger(__name__)


class ActiveRoom:
    """A configured source, running: pipeline + clips + mute + hearing, feeding the sinks."""

    def __init__(self, config: Config, room: Room, ruleset: RuleSet, worker: EngineWorker, state_dir: Path,
                 sinks: FanOut | Sequence[Sink], survive: Survive, source: AudioSource | None = None):
        """`sinks`: the daemon's fan-out (or sinks to fan out to); `survive`: how an error that must not
        stop the room is logged."""
        self.config = config
        self.room = room
        self.id = room.id
        self.name = room.name
        self.pipeline = Pipeline(config, ruleset, room=room, source=source, worker=worker)
        clips_dir = state_dir / "clips" if not config.multi_room else state_dir / "clips" / room.id
        self.clips = ClipStore(clips_dir, config.clips)
        self.sinks = sinks if isinstance(sinks, FanOut) else FanOut(sinks, survive)
        self._survive = survive
        self._state_dir = state_dir
        self.own_mute = False  # this room's switch (a one-room monitor has only this one)
        self.all_mute = False  # the whole-home switch of a daemon with `sources:`
        # what an ON event passes through before the sinks get it (the daemon's incidents stamp it)
        self.stamp: Callable[[ActiveRoom, Event, Result | None], Event] | None = None

    @property
    def label(self) -> str:
        """How the room is named in messages: its id, and its source without credentials."""
        return f"{self.id} ({describe_source(self.room.audio.source)})"

    # ------------------------------------------------------------------ windows and events

    def handle(self, result: Result) -> None:
        """Decide one answered window and pass it and its events on. Never raises."""
        try:
            events = self.pipeline.process(result)
        except Exception as exc:  # noqa: BLE001 - one bad window must not end the monitor
            self._survive(f"a window of {self.id}", exc)
            return
        self.sinks.window(self.id, result)
        self.publish(events, result)

    def publish(self, events: list[Event], result: Result | None) -> None:
        """Attach clips and hand each event to the sinks (each on its own: one failure stops nothing else)."""
        for event in events:
            event = self._with_clip(event, result)
            if self.stamp is not None and event.kind == "on":
                try:
                    event = self.stamp(self, event, result)
                except Exception as exc:  # noqa: BLE001 - the alarm goes out without its incident
                    self._survive(f"the incident of event {event.rule_id} {event.kind} id={event.id}", exc)
            self.sinks.event(self.id, event)

    def announce(self, *changed: Part) -> None:
        """Tell the sinks that these parts of the room's lasting state changed (see `RoomState`)."""
        self.sinks.room_state(self.id, self.state(frozenset(changed)))

    def state(self, changed: frozenset[Part]) -> RoomState:
        p = self.pipeline
        return RoomState(name=self.name, own_mute=self.own_mute, muted=p.muted, hearing=p.hearing,
                         model=p.model_state, rules=p.rules.ruleset,
                         rule_states=types.MappingProxyType(dict(p.rules.on_states())), clips=self.clips.folder,
                         changed=changed, rules_off=p.rules.switched_off)

    def _with_clip(self, event: Event, result: Result | None) -> Event:
        rule = self.pipeline.rules.ruleset.get(event.rule_id)
        kind = rule.kind if rule is not None else "yes_no"
        if result is None or self.pipeline.muted or not self.clips.wants(event, kind):
            return event
        try:
            # the event's times are the window's, or for a transcript its utterance's, inside it
            window = result.window
            start = window.start + round((event.window_start - window.t_start) * window.sample_rate)
            end = window.start + round((event.window_end - window.t_start) * window.sample_rate)
            path = self.clips.save(event, self.pipeline.ring, start, end)
        except Exception as exc:  # noqa: BLE001 - the alarm goes out without its evidence
            self._survive(f"the clip of event {event.rule_id} {event.kind} id={event.id}", exc)
            return event
        return event.with_clip(str(path)) if path is not None else event

    def complete_clips(self) -> None:
        """Add the post-roll to the clips whose post-roll this room has now heard (the control thread)."""
        try:
            self.clips.complete(self.pipeline.ring, self.pipeline.muted)
        except Exception as exc:  # noqa: BLE001 - a clip stays as first written; the room listens on
            self._survive(f"completing the clips of {self.id}", exc)

    def recent_audio(self, seconds: float) -> tuple[np.ndarray, float]:
        """The last `seconds` of what the room heard (less where the ring holds less, or a mute ended
        inside them: nothing heard while muted is handed out), and the wall time of its end.

        Read from the ring as a reader: the capture side is never waited for.
        """
        ring = self.pipeline.ring
        end = ring.written
        first = max(ring.oldest, ring.private_end, end - int(round(seconds * ring.sample_rate)), 0)
        try:
            audio = ring.read(first, end)
        except LookupError:  # lapped while copying: a second try starts from a newer oldest sample
            end = ring.written
            audio = ring.read(max(ring.oldest + ring.sample_rate, ring.private_end, end - int(seconds * ring.sample_rate)), end)
        return audio, ring.time_of(end)

    # ------------------------------------------------------------------ mute and hearing

    @property
    def mute_file(self) -> Path:
        return self._state_dir / ("muted" if not self.config.multi_room else f"muted-{self.id}")

    def set_muted(self, own: bool | None = None, everywhere: bool | None = None) -> bool:
        """Change this room's switch or the whole-home one; True when the room's effective mute changed."""
        if own is not None:
            self.own_mute = own
        if everywhere is not None:
            self.all_mute = everywhere
        muted = self.own_mute or self.all_mute
        if muted == self.pipeline.muted:
            return False
        self.pipeline.set_muted(muted)
        return True

    @property
    def rules_off_file(self) -> Path:
        """Where the ids of the rules switched off are kept (one a line), beside the mute switch."""
        return self._state_dir / ("rules-off" if not self.config.multi_room else f"rules-off-{self.id}")

    def switch_rule(self, rule_id: str, on: bool) -> tuple[bool, list[Event]]:
        """Switch one of the room's rules on or off; (changed, the OFF event it caused)."""
        if on == (rule_id not in self.pipeline.rules.switched_off):
            return False, []
        return True, self.pipeline.switch_rule(rule_id, on)

    def check_hearing(self) -> tuple[bool, list[Event]]:
        """Re-assess hearing; (changed, the OFF events a loss caused). Logs the change once."""
        changed, events = self.pipeline.check_hearing()
        if changed:
            hearing = self.pipeline.hearing
            where = "" if not self.config.multi_room else f"{self.id}: "
            if hearing.ok:
                log.info("%shearing again: windows are decided from now on", where)
            elif hearing.reason == "muted":
                log.info("%scannot hear: muted; %d rule(s) that were ON turned OFF", where, len(events))
            else:
                log.error("%scannot hear: capture lost (%s); %d rule(s) that were ON turned OFF, and the Microphone "
                          "problem sensor is ON until audio comes back", where, hearing.detail, len(events))
        return changed, events

    @property
    def hearing(self) -> Hearing:
        return self.pipeline.hearing

    # ------------------------------------------------------------------ the model

    def check_model(self) -> tuple[bool, list[Event]]:
        """Re-assess whether the model answers this room; (changed, the OFF events a failure caused). Logs the change once."""
        changed, events = self.pipeline.check_model()
        if changed:
            state = self.pipeline.model_state
            where = "" if not self.config.multi_room else f"{self.id}: "
            if state.ok:
                log.info("%sthe model answers again: windows are decided as usual", where)
            else:
                log.error("%smodel failed: %s; %d rule(s) that were ON turned OFF, and the Model problem sensor is ON "
                          "until answers return (the log above says why the windows fail)", where, state.detail,
                          len(events))
        return changed, events

    @property
    def model_state(self) -> ModelState:
        return self.pipeline.model_state

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """This room's part of the JSON status.

        `state`, when several things are wrong, names the first of: muted (the user's choice), deaf
        (nothing to ask about), model_failed (heard, but not answered).
        """
        p = self.pipeline
        hearing, model = p.hearing, p.model_state
        return {
            "state": ("muted" if p.muted else "deaf" if not hearing.ok else "model_failed" if not model.ok
                      else "listening"),
            "hearing": hearing.label,
            "hearing_detail": hearing.detail if not hearing.ok else None,
            "model": model.label,
            "model_detail": model.detail if not model.ok else None,
            "lag_s": round(p.stats.last_lag, 2),
            "windows": p.stats.windows,
            "processed": p.stats.processed,
            "skipped": p.skipped,
            "lost_windows": p.lost_windows,
            "lost_s": round(p.source.stats.lost_seconds, 1),
            "failed": p.stats.failed,
            "undecided": p.stats.undecided,
            "capture": p.source.stats.state,
            "overflows": p.source.stats.overflows,
        }
