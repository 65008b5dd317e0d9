"""The durable outbox: every event is on disk before it is sent, and leaves only when acknowledged.

A hub calls for help on these events, so an event accepted by `add` survives a dead broker, a
SIGKILL and (with `fsync`) a power cut. Rows are numbered by an AUTOINCREMENT key, so the order of
acceptance is the order of sending, also after a restart, and a number is never reused even when
the table runs empty.

An acknowledged row leaves the count at once, and the file as soon as SQLite can delete it: in WAL
mode a DELETE needs free space too, so on a full disk acknowledged rows may stay a while. They are
remembered, never handed out again, and deleted by a later `remove` or `remove_acknowledged`.

Thread use: one `Outbox` is shared by the caller that adds events and the publisher's worker that
sends and deletes them; a lock serialises the two.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    topic   TEXT    NOT NULL,
    payload BLOB    NOT NULL,
    created REAL    NOT NULL,
    ident   TEXT,
    clip    TEXT
)
"""


class OutboxError(Exception):
    """The outbox file cannot be opened or written; the message says which file and what to do."""


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    """Whether SQLite says the file itself is broken (not a database, malformed), not its place."""
    name = getattr(exc, "sqlite_errorname", "")  # Python 3.11+
    if name:
        return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text


@dataclass(frozen=True)
class Row:
    """One waiting message."""

    seq: int
    topic: str
    payload: bytes
    ident: str | None


class Outbox:
    """SQLite (WAL) queue of messages that must reach the broker, oldest first."""

    def __init__(self, path: Path, max_rows: int = 100_000, fsync: bool = True):
        self.path = Path(path)
        self.max_rows = max_rows
        self.dropped = 0  # rows dropped because the outbox was full (each one logged)
        self._lock = threading.Lock()
        self._acked: set[int] = set()  # acknowledged rows SQLite could not delete yet (a full disk)
        self._db = self._open(fsync)
        try:
            self._depth = int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
            self._last_seq = int(self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0])
        except sqlite3.Error as exc:
            self._db.close()
            raise OutboxError(f"cannot read the outbox {self.path}: {exc}; check state_dir") from None
        if self._depth:
            log.info("outbox %s holds %d event(s) from before; they are sent first", self.path, self._depth)

    # ------------------------------------------------------------------ opening

    def _open(self, fsync: bool) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxError(f"cannot create the folder {self.path.parent} for the outbox: {exc.strerror}; check state_dir") from None
        try:
            return self._connect(fsync)
        except sqlite3.DatabaseError as exc:
            if not _is_damage(exc):
                # a full disk or a read-only file system is not damage: moving the file aside would
                # only hide the events in it
                raise OutboxError(f"cannot open the outbox {self.path}: {exc}; check that state_dir is writable and not full") from None
            aside = self._move_aside(exc)
            log.error("outbox %s is damaged (%s); moved it to %s and started an empty one (recover events from it with sqlite3 if needed)",
                      self.path, exc, aside)
            try:
                return self._connect(fsync)
            except sqlite3.DatabaseError as exc2:
                raise OutboxError(f"cannot create the outbox {self.path}: {exc2}; check state_dir") from None

    def _move_aside(self, damage: sqlite3.DatabaseError) -> Path:
        """Rename a damaged file (and its -wal/-shm) so a fresh outbox can start; OutboxError if it cannot."""
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            for suffix in ("", "-wal", "-shm"):
                part = Path(f"{self.path}{suffix}")
                if part.exists():
                    part.rename(Path(f"{aside}{suffix}"))
        except OSError as exc:
            raise OutboxError(f"the outbox {self.path} is damaged ({damage}) and cannot be moved aside ({exc.strerror}); "
                              "check that state_dir is writable") from None
        return aside

    def _connect(self, fsync: bool) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10)
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("outbox %s: SQLite refused WAL mode (got %s); continuing", self.path, mode)
            db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            db.execute(_SCHEMA)
            db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    # ------------------------------------------------------------------ use

    @property
    def depth(self) -> int:
        """Messages waiting (sent or not) for the broker's acknowledgement."""
        return self._depth

    @property
    def undeleted(self) -> int:
        """Acknowledged rows still in the file because SQLite could not delete them yet."""
        return len(self._acked)

    @property
    def last_seq(self) -> int:
        """The highest sequence number of any row stored (0: none): later rows get higher ones."""
        return self._last_seq

    def add(self, topic: str, payload: bytes, ident: str | None = None, clip: str | None = None) -> int:
        """Store a message durably; return its sequence number. Drops (and logs) the oldest when full."""
        with self._lock:
            try:
                if self._depth >= self.max_rows:
                    self._drop_oldest(self._depth - self.max_rows + 1)
                cur = self._db.execute(
                    "INSERT INTO outbox (topic, payload, created, ident, clip) VALUES (?, ?, ?, ?, ?)",
                    (topic, payload, time.time(), ident, clip),
                )
            except sqlite3.ProgrammingError:
                raise OutboxError(f"outbox {self.path} is closed (publisher stopped); the event was not stored") from None
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot write to the outbox {self.path}: {exc}; check free space in state_dir") from None
            self._depth += 1
            self._last_seq = int(cur.lastrowid)
            return self._last_seq

    def _drop_oldest(self, count: int) -> None:
        rows = self._db.execute("SELECT seq, topic, ident FROM outbox ORDER BY seq LIMIT ?",
                                (count + len(self._acked),)).fetchall()
        oldest = [r for r in rows if r[0] not in self._acked][:count]
        self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(r[0],) for r in oldest])
        self._depth -= len(oldest)
        self.dropped += len(oldest)
        for _seq, old_topic, old_id in oldest:
            log.error("outbox full (%d events waiting, mqtt.outbox.max_events): dropped the oldest event %s on %s; "
                      "the broker has been unreachable for long, check it", self.max_rows, old_id, old_topic)

    def after(self, seq: int, limit: int) -> list[Row]:
        """Up to `limit` rows with a sequence number above `seq`, oldest first; OutboxError if unreadable."""
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT seq, topic, payload, ident FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
                ).fetchall()
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot read the outbox {self.path}: {exc}") from None
        return [Row(int(s), t, bytes(p), i) for s, t, p, i in rows]

    def clips(self) -> set[str]:
        """Evidence clips named by waiting events (clip retention must keep these)."""
        with self._lock:
            try:
                rows = self._db.execute("SELECT DISTINCT clip FROM outbox WHERE clip IS NOT NULL").fetchall()
            except sqlite3.Error as exc:
                log.warning("outbox %s: cannot list clips of waiting events (%s)", self.path, exc)
                return set()
        return {r[0] for r in rows}

    def remove(self, seqs: list[int]) -> None:
        """Forget acknowledged rows: they stop counting now, and are deleted with any left from before.

        OutboxError when SQLite cannot delete them now; they are kept aside (never handed out again)
        for the next `remove` or `remove_acknowledged`.
        """
        with self._lock:
            new = set(seqs) - self._acked
            present: set[int] = set()
            if new:
                marks = ",".join("?" * len(new))
                try:  # a read needs no free space; a row dropped for room while in flight is not counted twice
                    present = {r[0] for r in self._db.execute(f"SELECT seq FROM outbox WHERE seq IN ({marks})",
                                                              list(new))}
                except sqlite3.Error:
                    present = new
                self._acked |= present
            try:
                self._delete_acked()
            finally:  # after the attempt: when it works, `depth` 0 means an empty file
                self._depth -= len(present)

    def remove_acknowledged(self) -> None:
        """Try again to delete the acknowledged rows a full disk kept; OutboxError if it still cannot."""
        with self._lock:
            self._delete_acked()

    def _delete_acked(self) -> None:
        if not self._acked:
            return
        try:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq in sorted(self._acked)])
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise OutboxError(f"cannot delete acknowledged events from the outbox {self.path}: {exc}") from None
        self._acked.clear()

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error as exc:  # pragma: no cover - closing a healthy connection does not fail
                log.warning("outbox %s: close failed: %s", self.path, exc)
