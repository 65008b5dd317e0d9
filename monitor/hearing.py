"""Whether a room can hear: a small record shared by the listening path and everything that shows it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Hearing:
    """Whether a room can hear, and if not, why (`muted` or `capture_lost`) and a detail for people."""

    ok: bool
    reason: str | None = None
    detail: str = field(default="", compare=False)

    @property
    def label(self) -> str:
        return "ok" if self.ok else str(self.reason)


HEARING_OK = Hearing(True)
