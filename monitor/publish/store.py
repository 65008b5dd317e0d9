"""Where events wait for the broker: the durable outbox, and memory while the outbox cannot write.

An alarm sent without the safety net beats no alarm: when the outbox cannot store an event (disk
full, read-only file system, a damaged file that cannot be moved aside, or it cannot even be
opened at start), the event waits in memory instead ("direct"): it is sent at most once, after
the events stored before it, and never stored later. The condition is logged when it starts and
ends (and `on_change` tells the publisher, which re-publishes its status); every new event, and
the publisher's worker every few seconds while the outbox is not open, tries the outbox again.

Acknowledged rows that SQLite cannot delete (a full disk: in WAL mode a DELETE needs room too)
no longer count as waiting and are not sent again; `retry` deletes them once there is room. Only
if the monitor stops before that are they sent again at the next start (hubs drop duplicates by
event id).

Threads: `add` runs on the daemon's thread; `take`, `acknowledged` and `retry` on the
publisher's worker; the counters are read anywhere.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from monitor.publish.outbox import Outbox, OutboxError, Row
from monitor.publish.settings import OutboxSettings

log = logging.getLogger(__name__)

Route = Literal["outbox", "direct"]
REOPEN_EVERY = 5.0  # seconds between attempts to open an outbox that could not be opened
DELETE_EVERY = 1.0  # seconds between attempts to delete acknowledged rows a full disk kept


@dataclass(frozen=True)
class Waiting:
    """An event handed out to be sent: an outbox row (`seq`) or a direct one (`seq` None)."""

    kind: Literal["row", "direct"]
    seq: int | None
    topic: str
    payload: bytes


@dataclass(frozen=True)
class _Direct:
    after_seq: int  # the highest outbox number when it arrived: rows up to it are older and go first
    topic: str
    payload: bytes


class EventStore:
    """The outbox at `path`, degrading to memory while it cannot write; events come out in order."""

    def __init__(self, path: Path, settings: OutboxSettings, on_change: Callable[[], None] = lambda: None):
        self.path = Path(path)
        self.settings = settings
        self.on_change = on_change  # called (any thread) when storing stops or starts working
        self._outbox: Outbox | None = None  # None while it cannot be opened
        self._lock = threading.Lock()  # one attempt to open it at a time; closing
        self._problem: str | None = None  # why events cannot be stored now
        self._problem_lock = threading.Lock()
        self._last_open_try = 0.0
        self._last_stored = 0  # the highest outbox number so far: the place of a direct event among rows
        self._closed = False
        self._direct: collections.deque[_Direct] = collections.deque()
        self._direct_queued = 0  # events sent directly so far (written by `add`)
        self._direct_done = 0  # of those, acknowledged or given up (written by the worker)
        self._last_handed = 0  # the highest row handed out (worker)
        self._unreadable = False  # the worker could not read the outbox: store nothing new in it
        self._undeletable = False  # acknowledged rows could not be deleted (logged once; worker)
        self._last_delete_try = 0.0
        self.opened = threading.Event()  # set whenever the outbox (re)opens: it may hold events from before
        self._open()

    # ------------------------------------------------------------------ read anywhere

    @property
    def depth(self) -> int:
        """Events in the outbox waiting for the broker's acknowledgement (sent or not)."""
        box = self._outbox
        return box.depth if box is not None else 0

    @property
    def direct_waiting(self) -> int:
        """Events waiting in memory (not stored) that the broker has not acknowledged yet."""
        return self._direct_queued - self._direct_done

    @property
    def waiting(self) -> int:
        """Events not acknowledged yet, stored or not."""
        return self.depth + self.direct_waiting

    @property
    def ok(self) -> bool:
        return self._problem is None

    @property
    def problem(self) -> str | None:
        """Why events cannot be stored now (None while they can)."""
        return self._problem

    @property
    def direct_events(self) -> int:
        return self._direct_queued

    @property
    def dropped(self) -> int:
        box = self._outbox
        return box.dropped if box is not None else 0

    def pending_clips(self) -> set[str]:
        """Clip paths of events still in the outbox: clip retention must not delete them."""
        box = self._outbox
        try:
            return box.clips() if box is not None else set()
        except OutboxError:
            return set()

    # ------------------------------------------------------------------ the daemon's thread

    def add(self, topic: str, payload: bytes, ident: str, clip: str | None) -> Route:
        """Store an event durably ("outbox"), or keep it in memory in its place in line ("direct")."""
        if self._closed:
            raise OutboxError(f"the publisher is stopped; event {ident} was not sent")
        if self._store(topic, payload, ident, clip):
            return "outbox"
        self._direct_queued += 1  # counted first: the worker may send and count its acknowledgement at once
        self._direct.append(_Direct(self._last_stored, topic, payload))
        return "direct"

    def _store(self, topic: str, payload: bytes, ident: str, clip: str | None) -> bool:
        box = self._open()
        if box is None or self._unreadable:
            return False
        try:
            self._last_stored = box.add(topic, payload, ident, clip)
        except OutboxError as exc:
            self._failed(str(exc))
            return False
        if self._problem is not None:
            self._works(box)
        return True

    # ------------------------------------------------------------------ the worker

    def take(self, limit: int) -> list[Waiting]:
        """Up to `limit` events not handed out yet, oldest first: rows and direct events merged by age."""
        # Count the direct events before reading rows: every row older than one of these was
        # committed before it was queued, so it is among the rows read now (or handed already).
        direct = list(itertools.islice(self._direct, limit))
        rows = collections.deque(self._unsent_rows(limit))
        out: list[Waiting] = []
        while len(out) < limit:
            if direct and (not rows or direct[0].after_seq < rows[0].seq):
                event = direct.pop(0)
                self._direct.popleft()
                out.append(Waiting("direct", None, event.topic, event.payload))
            elif rows:
                row = rows.popleft()
                self._last_handed = row.seq
                out.append(Waiting("row", row.seq, row.topic, row.payload))
            else:
                break
        return out

    def acknowledged(self, done: list[Waiting]) -> None:
        """The broker has these: forget the rows (one transaction), count the direct ones."""
        seqs = [w.seq for w in done if w.kind == "row" and w.seq is not None]
        self._direct_done += sum(1 for w in done if w.kind == "direct")
        box = self._outbox
        if seqs and box is not None:
            self._delete(box, lambda: box.remove(seqs))

    def retry(self) -> None:
        """Try again to open an outbox that could not be opened (every few seconds at most), and to
        delete acknowledged rows that a full disk kept (every second)."""
        now = time.monotonic()
        if self._outbox is None and now - self._last_open_try >= REOPEN_EVERY:
            self._open()
        box = self._outbox
        if box is not None and box.undeleted and now - self._last_delete_try >= DELETE_EVERY:
            self._delete(box, box.remove_acknowledged)

    def _delete(self, box: Outbox, delete: Callable[[], None]) -> None:
        """Delete acknowledged rows; say once when that starts failing and when it works again."""
        self._last_delete_try = time.monotonic()
        try:
            delete()
        except OutboxError as exc:
            if not self._undeletable:
                self._undeletable = True
                log.error("%s; they are not sent again, and are deleted once state_dir has room", exc)
            else:
                log.debug("outbox still cannot delete %d acknowledged event(s): %s", box.undeleted, exc)
            return
        if self._undeletable:
            self._undeletable = False
            log.info("outbox %s: deleted the acknowledged events kept while it could not delete", box.path)

    def _unsent_rows(self, limit: int) -> list[Row]:
        box = self._outbox
        if box is None:
            return []
        try:
            rows = box.after(self._last_handed, limit)
        except OutboxError as exc:
            # new events go directly meanwhile, so none is stored where it cannot be read back
            self._unreadable = True
            self._failed(str(exc))
            return []
        self._unreadable = False
        return rows

    # ------------------------------------------------------------------ opening and health

    def _open(self) -> Outbox | None:
        """The outbox; if it could not be opened before, try again now. None while it cannot be."""
        box = self._outbox
        if box is not None or self._closed:
            return box
        with self._lock:
            if self._outbox is None and not self._closed:
                self._last_open_try = time.monotonic()
                try:
                    box = Outbox(self.path, self.settings.max_events, self.settings.fsync)
                except OutboxError as exc:
                    self._failed(str(exc))
                    return None
                self._last_stored = max(self._last_stored, box.last_seq)
                self._outbox = box
                self.opened.set()
            return self._outbox

    def close(self) -> None:
        with self._lock:
            self._closed = True
            box = self._outbox
            if box is None:
                return
            if box.undeleted:
                try:
                    box.remove_acknowledged()
                except OutboxError as exc:
                    log.warning("%s; the next start sends these %d acknowledged event(s) again (hubs drop duplicates "
                                "by event id)", exc, box.undeleted)
            box.close()

    def _failed(self, reason: str) -> None:
        """Events cannot be stored now: log it when that starts (not for every event), tell the publisher."""
        with self._problem_lock:
            started = self._problem is None
            self._problem = reason
        if not started:
            log.debug("outbox still cannot write: %s", reason)
            return
        log.error("outbox cannot write (%s); publishing directly: events still go out in order, but one is lost "
                  "if the monitor stops before the broker has it", reason)
        self.on_change()

    def _works(self, box: Outbox) -> None:
        with self._problem_lock:
            was = self._problem
            self._problem = None
        if was is not None:
            log.info("outbox writable again (%s); events are stored before sending again", box.path)
            self.on_change()
