"""What a person asks when labelling (the page's POST, MQTT's `set/label`), checked at the edge, and what came of it.

Both ways in read the same body: `{"event": ID, "verdict": "right"|"wrong"}` labels an alert, and
`{"missed_seconds": N}` says that the rule missed something in the last N seconds. A body that is
neither is one line saying what was expected; nothing of it reaches the daemon's main thread.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

ANSWERS = ("right", "wrong")  # what a person says of an alert; "missed" is said with missed_seconds
MISSED_DEFAULT = 30.0  # seconds: the page's "it missed something" unless chosen otherwise
MISSED_MAX = 600.0  # never more than this (the room's ring buffer holds less anyway)
_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")  # a room, rule or event id (a topic segment, a file-name part)
EXPECTED = ('expected {"event": ID, "verdict": "right"|"wrong"} or {"missed_seconds": N} '
            f"(N from 1 to {MISSED_MAX:g})")


@dataclass(frozen=True)
class LabelRequest:
    """One label asked for: an alert judged (`event`, `answer` right|wrong) or a miss (`missed_seconds`)."""

    room: str
    rule: str
    answer: str  # right | wrong | missed
    event: str | None = None
    missed_seconds: float | None = None
    origin: str = "page"  # page | mqtt


@dataclass(frozen=True)
class Outcome:
    """What became of a label, as the page's HTTP status says it: 200 saved, 404 nothing known of it, 409 refused
    (muted, a text rule), 410 its clip is gone, 503 the daemon could not (busy, disk)."""

    status: int
    message: str  # one line
    wav: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


def parse_label(body: Any, room: str, rule: str, origin: str) -> LabelRequest | str:
    """The request in `body` for `room`'s `rule`, or why it is not one (one line)."""
    if not isinstance(body, dict):
        return EXPECTED
    for what, value in (("room", room), ("rule", rule)):
        if not isinstance(value, str) or not _ID.fullmatch(value):
            return f"{what} {value!r} is not an id"
    if "missed_seconds" in body:
        seconds = body["missed_seconds"]
        if set(body) - {"missed_seconds", "room", "rule"} or isinstance(seconds, bool) \
                or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or not 1 <= seconds <= MISSED_MAX:
            return EXPECTED
        return LabelRequest(room, rule, "missed", missed_seconds=float(seconds), origin=origin)
    event, verdict = body.get("event"), body.get("verdict")
    if set(body) - {"event", "verdict", "room", "rule"} or not isinstance(event, str) or not _ID.fullmatch(event) \
            or verdict not in ANSWERS:
        return EXPECTED
    return LabelRequest(room, rule, verdict, event=event, origin=origin)
