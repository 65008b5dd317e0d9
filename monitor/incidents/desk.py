"""The daemon's incidents: every ON event gets one, descriptions are asked at low priority, incidents go out.

On the daemon's main thread: `stamp` sees each ON event before the sinks do (its room's clip
already attached) and gives it the incident id. `tick` sends an incident on the node's
`{rule}/incident` topic once every room that could join has (one room: at once), or its window
has passed; then, for a `describe` rule, it asks the engine, in its low-priority lane, what the
window of the room the incident is attributed to holds (the text path every backend has: local,
served, SALMONN): one question per incident, about the room that heard it best. The engine
thread only queues the answer (`_answered`); `tick` turns it into a `described` event on that
room's rule topic and sends the incident again (`update: true`). The incident's JSON, as last
sent, is kept beside each clip it names.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from monitor.config import Config
from monitor.engine.api import Request, Result, TextTask
from monitor.events import Event
from monitor.incidents.grouping import Grouper, Incident, Member
from monitor.rules import YesNoRule

if TYPE_CHECKING:
    from monitor.engine.worker import EngineWorker
    from monitor.rooms import ActiveRoom
    from monitor.windows import Window

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, str, "str | None"], object]
"""(rule id, JSON, message id, clip): the publisher's `publish_incident`."""


class IncidentDesk:
    """Incidents and descriptions for every room of a daemon (owned by its main thread)."""

    def __init__(self, config: Config, rooms: Mapping[str, ActiveRoom], worker: EngineWorker,
                 wake: Callable[[], None], clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.rooms = rooms
        self.worker = worker
        self.wake = wake
        self.clock = clock
        self.grouper = Grouper(config.incidents.window)
        self.publish: Publish | None = None  # set once the publisher exists
        self._answers: deque[tuple[str, str, Result]] = deque(maxlen=64)  # (incident, room, answer) from the engine
        self._windows: dict[str, Window] = {}  # ON event id -> its window, until its incident is first sent
        self._failed_logged = False

    # ------------------------------------------------------------------ ON events (main thread)

    def stamp(self, room: ActiveRoom, event: Event, result: Result | None) -> Event:
        """An ON event with its incident; asks for a description when its rule wants one."""
        window = result.window if result is not None else None
        member = Member(room.id, room.name, event.id, event.ts, event.score,
                        window.dbfs if window is not None else math.nan, event.clip,
                        (event.window_start, event.window_end))
        incident, _new = self.grouper.join(event.rule_id, event.rule_name, member, self.clock())
        if window is not None and incident.sent == 0:
            self._windows[event.id] = window
        return dataclasses.replace(event, incident=incident.id)

    def _ask(self, incident: Incident) -> None:
        """Ask what the attributed room's window holds, when its rule describes (at low priority)."""
        top = incident.attributed
        room, window = self.rooms.get(top.room), self._windows.get(top.event)
        rule = room.pipeline.rules.ruleset.get(incident.rule) if room is not None else None
        if not isinstance(rule, YesNoRule) or not rule.describes or window is None:
            return
        task = TextTask(key=rule.id, prompt=rule.describe_prompt, start=window.start, end=window.end,
                        max_new_tokens=self.config.describe.max_new_tokens)
        request = Request(window=window, texts=(task,), source=top.room, live=True)
        iid = incident.id
        self.worker.submit_low(iid, request, lambda answer, rid=top.room: self._answered(iid, rid, answer))

    def _answered(self, incident: str, room: str, result: Result) -> None:
        """From the engine thread: a description came back; the main loop takes it."""
        self._answers.append((incident, room, result))
        self.wake()

    # ------------------------------------------------------------------ the main loop

    def tick(self, *, flush: bool = False) -> None:
        """Take the descriptions that came, send the incidents that are due. Never raises."""
        try:
            while self._answers:
                self._described(*self._answers.popleft())
            for incident in self.grouper.due(self.clock(), self._can_join, flush=flush):
                self._send(incident)
        except Exception:  # noqa: BLE001 - incidents must not stop the listening
            log.exception("incidents: unexpected error; carrying on")

    def flush(self) -> None:
        """At the end: what came, and every incident not sent yet, now (before the publisher stops)."""
        self.tick(flush=True)

    def _can_join(self, rule_id: str) -> set[str]:
        """The rooms that could still hear this rule turn ON: they have it, not switched off, and can hear."""
        out = set()
        for room in self.rooms.values():
            rule = room.pipeline.rules.ruleset.get(rule_id)
            if (rule is not None and rule.enabled and rule_id not in room.pipeline.rules.switched_off
                    and room.hearing.ok and not room.pipeline.muted):
                out.add(room.id)
        return out

    def _described(self, incident_id: str, room_id: str, result: Result) -> None:
        text = " ".join(result.texts[0].text.split()) if result.error is None and result.texts else ""
        incident = self.grouper.get(incident_id)
        if not text or incident is None:
            level = logging.DEBUG if self._failed_logged else logging.WARNING
            self._failed_logged = True
            log.log(level, "incidents: no description of incident %s (%s)", incident_id,
                    result.error or ("forgotten" if incident is None else "the model answered nothing"))
            return
        self.grouper.describe(incident_id, text)
        room = self.rooms.get(room_id)
        member = next((m for m in incident.members if m.room == room_id), None)
        if room is None or member is None:
            return
        start, end = member.window
        rule = room.pipeline.rules.ruleset.get(incident.rule)
        event = Event(rule_id=incident.rule, rule_name=rule.name if rule is not None else incident.rule_name,
                      kind="described", ts=time.time(), window_start=start, window_end=end, text=text,
                      source=room_id, incident=incident_id, clip=member.clip)
        room.publish([event], None)

    def _send(self, incident: Incident) -> None:
        payload = incident.payload(self.config.web.public_url)
        first = incident.sent == 0
        self.grouper.mark_sent(incident)
        body = json.dumps(payload, ensure_ascii=False)
        route = None  # how it went out, as an event's line says: "outbox", or "direct" while the outbox cannot write
        if self.publish is not None:
            route = self.publish(incident.rule, body.encode(), f"{incident.id}-{incident.sent}", payload["clip"])
        log.info("incident %s %s: %s (%s)%s%s%s", incident.rule, incident.id, payload["room"],
                 ", ".join(r["room"] for r in payload["rooms"]), " update" if payload["update"] else "",
                 f" description={len(payload['description'])} chars" if payload["description"] else "",
                 f" via={route}" if isinstance(route, str) else "")
        for member in incident.members:  # kept with each clip: the rooms, the description
            room = self.rooms.get(member.room)
            if room is not None and member.clip:
                room.clips.save_note(member.clip, {**payload, "event": member.event})
        if first:
            self._ask(incident)
            for member in incident.members:
                self._windows.pop(member.event, None)
