"""What the page shows, kept between the daemon's main thread and the web server's event loop.

The main thread writes (through `monitor.web.sink.WebSink`: windows, events, rules, status) and never waits for a client: each update is
encoded once, appended to one bounded backlog and announced to the loop with a single
`call_soon_threadsafe`, whatever the number of clients. Each client's stream follows the backlog
at its own pace; one that falls further behind than the backlog holds is dropped (the page
reconnects and starts again from a fresh snapshot), so a slow phone never holds anything up.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor.engine.api import Result
from monitor.events import Event
from monitor.rules import RuleSet

log = logging.getLogger(__name__)

HISTORY_S = 600.0  # seconds of scores kept for the page (its charts show the last 10 minutes)
RECENT_EVENTS = 20  # events listed per room
BACKLOG = 512  # updates a client may be behind before it is dropped
PING_S = 15.0  # a comment line on an idle stream keeps proxies from closing it


class SlowClient(Exception):
    """A client fell behind by more than the backlog holds."""


@dataclass
class RoomView:
    """One room as the page sees it."""

    id: str
    name: str
    clips: Path | None = None  # the folder its clips are served from
    rules: list[dict[str, Any]] = field(default_factory=list)
    points: deque[dict[str, Any]] = field(default_factory=deque)  # {t, dbfs, s: {rule: [score, lift]}}
    spans: dict[str, list[list[float | None]]] = field(default_factory=dict)  # rule -> [[on_t, off_t|None]]
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_EVENTS))
    transcripts: dict[str, dict[str, Any]] = field(default_factory=dict)  # text rule -> {text, t}
    off: list[str] = field(default_factory=list)  # rules switched off (not asked)
    labels: dict[str, Any] = field(default_factory=dict)  # rule -> labels kept, hits on them, the last comparison

    def snapshot(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "rules": self.rules, "points": list(self.points),
                "spans": self.spans, "events": list(self.events), "transcripts": self.transcripts, "off": self.off,
                "labels": self.labels}


def rule_info(ruleset: RuleSet) -> list[dict[str, Any]]:
    """What the page draws per rule: kind, and for yes/no rules which value and which lines."""
    out = []
    for rule in ruleset.rules:
        if not rule.enabled:
            continue
        info: dict[str, Any] = {"id": rule.id, "name": rule.name, "kind": rule.kind}
        if rule.kind == "yes_no":
            info.update(use=rule.use, threshold=rule.threshold, release=rule.release)
        out.append(info)
    return out


class Hub:
    """The page's state and the one backlog every client follows."""

    def __init__(self, history_s: float | None = HISTORY_S, backlog: int = BACKLOG, mode: str = "live",
                 recent_events: int | None = RECENT_EVENTS):
        """`history_s`: seconds of scores kept, `recent_events`: events listed (None: all, for a finished replay)."""
        self.history_s = history_s
        self.recent_events = recent_events
        self.mode = mode
        self.rooms: dict[str, RoomView] = {}
        self.status: dict[str, Any] = {}
        self.dropped = 0  # clients dropped for falling behind
        self._lock = threading.Lock()
        self._backlog: deque[tuple[int, str]] = deque(maxlen=backlog)
        self._seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._closed = False
        self.finished = False  # nothing more will come (a finished replay): streams end after what there is

    # ------------------------------------------------------------------ writers (any thread)

    def finish(self) -> None:
        """Say that the page is complete: each stream sends what there is, then `end`, and closes.

        The page then stops listening (a finished replay is not a lost connection)."""
        with self._lock:
            self.finished = True
        self._post("end", {})

    def add_room(self, room_id: str, name: str, clips: Path | None) -> None:
        with self._lock:
            self.rooms[room_id] = RoomView(room_id, name, clips, events=deque(maxlen=self.recent_events))

    def set_rules(self, room_id: str, rules: list[dict[str, Any]], on_states: Mapping[str, bool], t: float) -> None:
        """The room's rules (at start and after a reload), with which of them are ON now."""
        with self._lock:
            room = self.rooms[room_id]
            room.rules = rules
            for rule in rules:
                _mark(room.spans.setdefault(rule["id"], []), on_states.get(rule["id"], False), t)
            spans_now = {k: [list(s) for s in v] for k, v in room.spans.items()}
        self._post("rules", {"room": room_id, "rules": rules, "spans": spans_now})

    def set_switches(self, room_id: str, off: list[str]) -> None:
        """Which of the room's rules are switched off (the page's switches)."""
        with self._lock:
            room = self.rooms.get(room_id)
            if room is None:
                return
            room.off = list(off)
        self._post("switches", {"room": room_id, "off": list(off)})

    def set_labels(self, room_id: str, labels: dict[str, Any]) -> None:
        """Per rule: the labels kept, the current threshold's hits and false alarms on them, the last comparison."""
        with self._lock:
            room = self.rooms.get(room_id)
            if room is None:
                return
            room.labels = labels
        self._post("labels", {"room": room_id, "labels": labels})

    def set_status(self, status: dict[str, Any]) -> None:
        with self._lock:
            self.status = status
        self._post("status", status)

    def add_window(self, room_id: str, result: Result) -> None:
        w = result.window
        self.add_point(room_id, {"t": round(w.t_end, 3), "dbfs": round(w.dbfs, 1),
                                 "s": {k: [round(s.score, 4), round(s.lift, 4)] for k, s in result.scores.items()}})

    def add_point(self, room_id: str, point: dict[str, Any]) -> None:
        """One window as the page draws it: {t, dbfs, s: {rule: [score, lift]}}."""
        with self._lock:
            room = self.rooms.get(room_id)
            if room is None:
                return
            room.points.append(point)
            if self.history_s is not None:
                while room.points and room.points[0]["t"] < point["t"] - self.history_s:
                    room.points.popleft()
                for spans in room.spans.values():
                    while spans and spans[0][1] is not None and spans[0][1] < point["t"] - self.history_s:
                        spans.pop(0)
        self._post("window", {"room": room_id, **point})

    def add_event(self, room_id: str, event: Event, clip_url: str | None = None) -> None:
        record = {"id": event.id, "rule": event.rule_id, "name": event.rule_name, "kind": event.kind,
                  "t": round(event.ts, 3), "score": None if event.score is None else round(event.score, 4),
                  "lift": None if event.lift is None else round(event.lift, 4), "text": event.text,
                  "reason": event.reason, "clip": clip_url}
        if event.incident is not None:
            record["incident"] = event.incident
        self.add_record(room_id, record)

    def add_record(self, room_id: str, record: dict[str, Any]) -> None:
        """An event as the page lists it (live, or read back from a replay's events.jsonl).

        A `described` event is not listed: its text is shown beside the ON events of its incident, in every room.
        """
        with self._lock:
            room = self.rooms.get(room_id)
            if room is None:
                return
            if record["kind"] == "described":
                for view in self.rooms.values():
                    for shown in view.events:
                        if shown.get("incident") == record.get("incident") and shown["kind"] == "on":
                            shown["description"] = record["text"]
            else:
                room.events.append(record)
            if record["kind"] in ("on", "off"):
                _mark(room.spans.setdefault(record["rule"], []), record["kind"] == "on", record["t"])
            if record["kind"] == "text" and record.get("text") is not None:
                room.transcripts[record["rule"]] = {"text": record["text"], "t": record["t"]}
        self._post("event", {"room": room_id, **record})

    def _post(self, kind: str, data: dict[str, Any]) -> None:
        """Encode once, append to the backlog, wake the loop (never waits for a client)."""
        text = f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
        with self._lock:
            self._seq += 1
            self._backlog.append((self._seq, text))
            loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._notify)
            except RuntimeError:  # the loop has just closed (shutting down)
                pass

    # ------------------------------------------------------------------ the event loop's side

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called on the server's loop before it serves."""
        self._changed = asyncio.Event()
        with self._lock:
            self._loop = loop

    def close(self) -> None:
        """End every stream (the server is stopping)."""
        self._closed = True
        with self._lock:
            loop = self._loop
            self._loop = None
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._notify)
            except RuntimeError:
                pass

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        if changed is not None:
            changed.set()

    def _snapshot(self) -> dict[str, Any]:
        """Everything the page needs to draw itself (call with the lock held)."""
        return {"mode": self.mode, "history_s": self.history_s, "status": self.status, "finished": self.finished,
                "rooms": [room.snapshot() for room in self.rooms.values()]}

    def snapshot_json(self) -> str:
        with self._lock:
            return json.dumps(self._snapshot(), separators=(",", ":"))

    async def stream(self) -> AsyncIterator[str]:
        """Server-Sent Events: the snapshot, then every update; raises SlowClient when left behind."""
        with self._lock:
            seq = self._seq
            first = f"event: snapshot\ndata: {json.dumps(self._snapshot(), separators=(',', ':'))}\n\n"
            finished = self.finished
        if finished:  # all there is, and the end: the page stops listening instead of reconnecting
            yield "retry: 2000\n\n" + first + "event: end\ndata: {}\n\n"
            return
        yield "retry: 2000\n\n" + first
        while not self._closed:
            changed = self._changed
            with self._lock:
                oldest = self._backlog[0][0] if self._backlog else self._seq + 1
                if seq + 1 < oldest:
                    self.dropped += 1
                    raise SlowClient(f"{oldest - seq - 1} update(s) behind")
                fresh = list(itertools.islice(self._backlog, seq + 1 - oldest, None))
                seq = self._seq
            if fresh:
                yield "".join(text for _, text in fresh)
                if any(text.startswith("event: end\n") for _, text in fresh):
                    return
                continue
            if changed is None:
                return
            try:
                await asyncio.wait_for(changed.wait(), PING_S)
            except asyncio.TimeoutError:
                yield ": ping\n\n"


def _mark(spans: list[list[float | None]], on: bool, t: float) -> None:
    """Open an ON span at `t`, or close the open one."""
    is_open = bool(spans) and spans[-1][1] is None
    if on and not is_open:
        spans.append([t, None])
    elif not on and is_open:
        spans[-1][1] = t

