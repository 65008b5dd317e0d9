"""Hot reload of rule files: notice a change, re-validate, and never swap in a broken set.

The daemon polls `changed()` between windows (and calls `reload()` on SIGHUP). Change
detection hashes the content of every rule file and the folder listing — no watcher thread and
no extra dependency; rule files are a few kilobytes. A reload that fails validation leaves the
running rules in force: every problem is logged, and `status()` says so for the MQTT status.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor.events import iso_time
from monitor.rules.loader import RuleSet, load_rules, rule_files
from monitor.yamlsource import Problem, ValidationFailed

log = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, str], ...]


def fingerprint(path: Path) -> Fingerprint:
    """What the rules at `path` are made of right now: (file, sha256 of its bytes) per file."""
    if not path.exists():
        return (("", "missing"),)
    out = []
    for file in rule_files(path):
        try:
            digest = hashlib.sha256(file.read_bytes()).hexdigest()
        except OSError as exc:
            digest = f"unreadable: {exc.strerror}"
        out.append((str(file), digest))
    return tuple(out)


@dataclass(frozen=True)
class ReloadOutcome:
    """The result of one reload attempt."""

    ok: bool
    ruleset: RuleSet | None  # the new rules when ok; None when the old ones stay in force
    problems: tuple[Problem, ...] = ()
    message: str = ""
    time: float = field(default=0.0)

    def status(self) -> dict[str, Any]:
        """The JSON-able summary published with the monitor's status."""
        return {
            "ok": self.ok,
            "time": iso_time(self.time) if self.time else None,
            "message": self.message,
            "errors": [str(p) for p in self.problems],
            "rules": len(self.ruleset.rules) if self.ruleset is not None else None,
        }


class RuleReloader:
    """Watches the `rules:` path; `reload()` validates it again without touching what runs."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self._clock = clock
        self._seen = fingerprint(self.path)
        self.last: ReloadOutcome | None = None
        """The latest attempt (None before the first reload)."""

    def changed(self) -> bool:
        """True when a rule file's content, or the set of files, differs from the last attempt."""
        return fingerprint(self.path) != self._seen

    def reload(self) -> ReloadOutcome:
        """Read and validate the rules again; never raises for a bad rule file."""
        self._seen = fingerprint(self.path)  # before reading: an edit during the read shows up next poll
        now = self._clock()
        try:
            ruleset = load_rules(self.path)
        except ValidationFailed as exc:
            for problem in exc.problems:
                log.error("%s", problem)
            running = "keeping the running rules"
            outcome = ReloadOutcome(False, None, tuple(exc.problems),
                                    f"rule reload failed with {len(exc.problems)} problem(s); {running}", now)
            log.error("%s: %s", self.path, outcome.message)
        else:
            enabled = len(ruleset.enabled)
            outcome = ReloadOutcome(True, ruleset, (), f"reloaded {len(ruleset.rules)} rule(s), {enabled} enabled", now)
            log.info("%s: %s", self.path, outcome.message)
        self.last = outcome
        return outcome

    def status(self) -> dict[str, Any] | None:
        """The latest attempt's summary for the MQTT status; None before any reload."""
        return None if self.last is None else self.last.status()
