"""What the rule engine decides and the publisher sends: one `Event` per state change or answer."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

EventKind = Literal["on", "off", "text", "match", "described"]


def iso_time(ts: float) -> str:
    """Epoch seconds -> ISO-8601 in local time with its zone, e.g. 2026-11-24T21:03:05.120+01:00."""
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Event:
    """One thing a hub may act on. Carries everything needed to act without asking back."""

    rule_id: str
    rule_name: str
    kind: EventKind
    ts: float  # epoch seconds when it happened (the end of the window that decided it)
    window_start: float  # epoch seconds
    window_end: float
    score: float | None = None  # raw P(yes) for yes_no rules
    lift: float | None = None  # score minus the rule's score on silence
    text: str | None = None  # the answer of a text rule, the transcript a match rule fired on, or a description
    clip: str | None = None  # path of the evidence clip, when one was saved
    source_rule: str | None = None  # for `match` events: the text rule whose answer matched
    source: str = ""  # the room (source id) whose rule it is; names the topics it goes to
    reason: str | None = None  # for `off` events: released, schedule, rule_changed, rule_removed, rule_disabled, muted, capture_lost, model_failed
    incident: str | None = None  # for `on` and `described` events: the incident (one sound, maybe several rooms)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)  # unique; a hub drops duplicates by it

    def with_clip(self, path: str) -> Event:
        return dataclasses.replace(self, clip=path)

    def for_source(self, source: str) -> Event:
        return dataclasses.replace(self, source=source)

    def payload(self, node: str, version: str) -> dict[str, Any]:
        """The JSON body published on {prefix}/{node}/{rule}/event."""
        out: dict[str, Any] = {
            "id": self.id,
            "rule": self.rule_id,
            "name": self.rule_name,
            "node": node,
            "kind": self.kind,
            "event_type": self.kind,  # Home Assistant event entities read this key
            "time": iso_time(self.ts),
            "ts": round(self.ts, 3),
            "score": None if self.score is None else round(self.score, 4),
            "lift": None if self.lift is None else round(self.lift, 4),
            "window_start": iso_time(self.window_start),
            "window_end": iso_time(self.window_end),
            "version": version,
        }
        if self.text is not None:
            out["text"] = self.text
        if self.source_rule is not None:
            out["source_rule"] = self.source_rule
        if self.reason is not None:
            out["reason"] = self.reason
        if self.incident is not None:
            out["incident"] = self.incident
        if self.clip is not None:
            out["clip"] = self.clip
        return out
