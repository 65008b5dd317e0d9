"""Which ON events form one incident, the room it is attributed to, and the JSON a hub gets: no I/O, no threads.

One sound is often heard by several rooms: the same rule turning ON in rooms whose ON events lie
within `window` seconds of the incident's first (their own wall times) joins that incident.
A room that turns ON again is a new sound: a new incident. The incident is attributed to the
room that heard it best: the highest score, then the highest level.

When its message goes out: as soon as every room that could join has joined (one room at once),
else when `window` seconds have passed since it opened (the caller's monotonic clock). After
that, each change (a description, a room that joins late) sends the incident again, with the
same id and `update: true`.
"""

from __future__ import annotations

import math
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

KEEP = 256  # incidents remembered (for late rooms and descriptions); the oldest are forgotten first


@dataclass(frozen=True)
class Member:
    """One room's ON event in an incident."""

    room: str
    room_name: str
    event: str  # the ON event's id
    ts: float  # its wall time (epoch seconds)
    score: float | None
    level: float  # dBFS of the window that turned it ON
    clip: str | None = None
    window: tuple[float, float] = (0.0, 0.0)  # wall times of the window that turned it ON

    @property
    def rank(self) -> tuple[float, float]:
        """Highest score first, then the loudest (an unknown value ranks last)."""
        score = -math.inf if self.score is None else self.score
        return score, -math.inf if not math.isfinite(self.level) else self.level


@dataclass
class Incident:
    id: str
    rule: str
    rule_name: str
    opened: float  # the caller's monotonic clock when the first ON came
    members: list[Member] = field(default_factory=list)
    description: str | None = None
    sent: int = 0  # messages sent so far
    changed: bool = True  # something is not in the last message sent

    @property
    def first_ts(self) -> float:
        return self.members[0].ts

    @property
    def attributed(self) -> Member:
        return max(self.members, key=lambda m: m.rank)  # max keeps the first of equals: the earliest

    def rooms(self) -> set[str]:
        return {m.room for m in self.members}

    def payload(self, public_url: str | None) -> dict[str, Any]:
        """The JSON on {prefix}/{node}/{rule}/incident (the field names are a contract with automations)."""
        top = self.attributed
        return {
            "incident": self.id, "event_type": "incident", "rule": self.rule, "rule_name": self.rule_name,
            "room": top.room, "room_name": top.room_name, "time": utc(self.first_ts),
            "score": _round(top.score, 4), "level": _round(top.level, 1),
            "rooms": [{"room": m.room, "room_name": m.room_name, "score": _round(m.score, 4),
                       "level": _round(m.level, 1), "event": m.event}
                      for m in sorted(self.members, key=lambda m: m.rank, reverse=True)],
            "description": self.description, "clip": top.clip, "clip_url": clip_url(public_url, top.room, top.clip),
            "update": self.sent > 0,
        }


def utc(ts: float) -> str:
    """Epoch seconds -> ISO-8601 in UTC, e.g. 2026-11-24T20:03:05.120+00:00."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


def clip_url(public_url: str | None, room: str, clip: str | None) -> str | None:
    """Where a phone fetches a room's clip from the page (`/clips/{room}/{file}`); None without `web.public_url`."""
    if not public_url or not clip:
        return None
    return f"{public_url.rstrip('/')}/clips/{room}/{Path(clip).name}"


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


class Grouper:
    """The incidents of a daemon, rule by rule (owned by its main thread)."""

    def __init__(self, window: float, new_id: Callable[[], str] = lambda: uuid.uuid4().hex):
        self.window = window
        self.new_id = new_id
        self._latest: dict[str, Incident] = {}  # rule id -> its latest incident
        self._all: OrderedDict[str, Incident] = OrderedDict()  # id -> incident, oldest first

    def join(self, rule: str, rule_name: str, member: Member, now: float) -> tuple[Incident, bool]:
        """The incident this ON event belongs to, and whether it was opened by it."""
        latest = self._latest.get(rule)
        if latest is not None and member.room not in latest.rooms() and abs(member.ts - latest.first_ts) <= self.window:
            latest.members.append(member)
            latest.changed = True
            return latest, False
        incident = Incident(self.new_id(), rule, rule_name, now, [member])
        self._latest[rule] = incident
        self._all[incident.id] = incident
        while len(self._all) > KEEP:
            old = self._all.popitem(last=False)[1]
            if self._latest.get(old.rule) is old:
                del self._latest[old.rule]
        return incident, True

    def get(self, incident_id: str) -> Incident | None:
        return self._all.get(incident_id)

    def describe(self, incident_id: str, text: str) -> Incident | None:
        """Record an incident's description (the first one that comes); the incident, or None when forgotten."""
        incident = self._all.get(incident_id)
        if incident is not None and incident.description is None:
            incident.description = text
            incident.changed = True
        return incident

    def due(self, now: float, can_join: Callable[[str], Iterable[str]], *, flush: bool = False) -> list[Incident]:
        """The incidents whose (next) message should go now; `can_join(rule)`: the rooms that could still join.

        The caller publishes each one's `payload`, then `mark_sent`s it.
        """
        out = []
        for incident in self._all.values():
            if not incident.changed:
                continue
            if incident.sent == 0 and not flush and now - incident.opened < self.window \
                    and not set(can_join(incident.rule)) <= incident.rooms():
                continue  # another room may still hear it
            out.append(incident)
        return out

    @staticmethod
    def mark_sent(incident: Incident) -> None:
        incident.sent += 1
        incident.changed = False
