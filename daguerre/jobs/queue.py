"""The JobQueue protocol and its embedded implementation on SQLite (one machine, any number of processes).

A queue message is a JobSpec serialized by jobs/spec.py (JSON text): the queue never looks inside it, so
any backend that moves text (SQLite, Redis Streams) can carry it.

Delivery is at least once. A claim hands a message to one worker for `visibility_s` seconds; the worker
keeps extending that while it runs the job and acknowledges the message only once the job's results are
stored. A worker that dies stops extending: when the time runs out, the message is handed to the next
worker that claims, with its delivery count raised. The worker sets a message delivered too many times
aside in the dead-letter list (`bury`), and its task fails with a clear code (jobs/worker.py).
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

POLL_S = 0.05  # how often a waiting claim looks for another process's push (SQLite has no blocking read)


class QueueFull(Exception):  # noqa: N818 - a condition, reported as 429
    """The queue holds its maximum number of waiting jobs."""


@dataclass(frozen=True)
class Claim:
    """A message handed to one worker until it is acknowledged or its visibility time runs out."""

    message: str
    id: str  # the backend's id of this delivery (ack, extend, bury)
    deliveries: int = 1  # times the message has been handed out, this one included
    riders: tuple[str, ...] = field(default=())  # messages taken with it (`take`) and owed again with it
    token: str = ""  # this delivery, where the backend needs one to tell it from the next (SQLite)


class JobQueue(Protocol):
    """Jobs waiting for a worker. Called by the service (push) and the worker loop (the rest)."""

    visibility_s: float  # how long a claim lasts without `extend`
    durable: bool  # messages survive a restart of every process (start-up need not re-queue)

    def push(self, message: str, *, force: bool = False) -> None:
        """Enqueue a job's message; raises QueueFull at capacity unless `force` (start-up recovery re-queues
        every unfinished job, whatever the cap)."""

    def claim(self, timeout: float) -> Claim | None:
        """The next message: one whose claim ran out (its worker died) first, else the oldest waiting one,
        waiting up to `timeout` seconds for one; None if none came."""

    def waiting(self, limit: int) -> list[str]:
        """Up to `limit` waiting messages, oldest first, left in the queue (the worker looks for jobs that can
        share a forward pass with the one it claimed)."""

    def take(self, messages: list[str], with_: Claim) -> list[Claim]:
        """Claim these messages, if they are still waiting, alongside `with_` (they run in its forward passes):
        acknowledging `with_` acknowledges them, and if its worker dies they come back with it, as its
        `riders`. Returns the ones claimed (another worker may have been first)."""

    def ack(self, claim: Claim) -> bool:
        """The job is finished and its results are stored: forget the message (and its riders). Only while this
        delivery holds it: False (nothing forgotten) when its claim ran out and another worker took it over."""

    def extend(self, claims: list[Claim]) -> list[Claim]:
        """Still running: these claims last another `visibility_s` from now; one given back unrun meanwhile
        (`defer`, `release`) is taken back. Returns the ones this worker does not hold any more (its claim ran
        out and another worker took the message, or it was acknowledged): their jobs are that worker's now, and
        this one stops running them."""

    def defer(self, claim: Claim, seconds: float) -> None:
        """Give a claimed message back unrun: any worker may claim it again after `seconds`, and this delivery
        does not count (model-aware routing: a worker with the job's model loaded should take it; a live worker
        still runs it, whose claim ran out while it paused: its next `extend` takes the message back)."""

    def release(self, idle_s: float) -> None:
        """Every claim not extended for `idle_s` seconds runs out now: called when no worker is live, so their
        workers are gone (a restart); a claim extended since belongs to a worker starting at the same time."""

    def bury(self, claim: Claim, reason: str) -> bool:
        """Move the message to the dead-letter list with `reason` (acknowledging it and forgetting its riders:
        the worker queues those again); False, like `ack`, when this delivery no longer holds it."""

    def dead(self, limit: int = 100) -> list[dict]:
        """The dead-letter list, newest first: {message, reason, deliveries, at}."""

    def dead_count(self) -> int:
        """How many messages the dead-letter list holds (/metrics reads it each scrape)."""

    def __len__(self) -> int:
        """Jobs waiting (not counting the ones running)."""


_CLAIMABLE = "SELECT 1 FROM queue WHERE rider_of IS NULL AND (deadline IS NULL OR deadline<?) LIMIT 1"


class SQLiteQueue:
    """The embedded default: a table in a SQLite file that the API process and its worker processes share.

    A row is waiting while `deadline` is NULL, claimed until `deadline` (epoch seconds) otherwise; a claim is
    one UPDATE ... RETURNING, so of two processes claiming at once each gets a different row, and a new random
    `token` (a worker extends only while its token is the row's: one that stalled past its deadline cannot take
    back a row another worker claimed since). Riders are rows whose `rider_of` names their claim's row:
    acknowledging that row deletes them too.
    """

    durable = True

    def __init__(self, path: Path, *, maxsize: int = 100, visibility_s: float = 30.0):
        self.path, self.maxsize, self.visibility_s = Path(path), maxsize, visibility_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        have = self._db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='queue'").fetchone()
        self.created = have is None  # a data folder from before this queue: its unfinished jobs are re-queued once
        self._db.execute(
            """CREATE TABLE IF NOT EXISTS queue (
                id INTEGER PRIMARY KEY AUTOINCREMENT, message TEXT NOT NULL, deadline REAL,
                deliveries INTEGER NOT NULL DEFAULT 0, rider_of INTEGER)"""
        )
        if "token" not in {row[1] for row in self._db.execute("PRAGMA table_info(queue)")}:
            self._db.execute("ALTER TABLE queue ADD COLUMN token TEXT")  # a data folder from before tokens
        self._db.execute("CREATE INDEX IF NOT EXISTS queue_deadline ON queue(deadline, id)")
        self._db.execute(
            """CREATE TABLE IF NOT EXISTS dead_letters (
                id INTEGER PRIMARY KEY AUTOINCREMENT, message TEXT NOT NULL, reason TEXT NOT NULL,
                deliveries INTEGER NOT NULL, at REAL NOT NULL)"""
        )
        self._lock = threading.Lock()
        self._pushed = threading.Condition()  # a push from this process wakes its waiting claims at once

    def push(self, message: str, *, force: bool = False) -> None:
        with self._lock:
            if not force and self._waiting_count() >= self.maxsize:
                raise QueueFull(f"the queue is full ({self.maxsize} waiting jobs)")
            self._db.execute("INSERT INTO queue (message) VALUES (?)", (message,))
        with self._pushed:
            self._pushed.notify_all()

    def claim(self, timeout: float) -> Claim | None:
        end = time.monotonic() + timeout
        while True:
            now = time.time()
            with self._lock:
                row = None
                if self._db.execute(_CLAIMABLE, (now,)).fetchone() is not None:  # a read first: no write lock
                    row = self._db.execute(
                        "UPDATE queue SET deadline=?, deliveries=deliveries+1, token=? WHERE id=(SELECT id FROM"
                        " queue WHERE rider_of IS NULL AND (deadline IS NULL OR deadline<?) ORDER BY deadline IS"
                        " NULL, id LIMIT 1) RETURNING id, message, deliveries, token",
                        (now + self.visibility_s, secrets.token_hex(8), now),
                    ).fetchone()
                riders = ()
                if row is not None and row[2] > 1:
                    riders = tuple(m for (m,) in self._db.execute(
                        "SELECT message FROM queue WHERE rider_of=? ORDER BY id", (row[0],)))  # fmt: skip
            if row is not None:
                return Claim(message=row[1], id=str(row[0]), deliveries=row[2], riders=riders, token=row[3])
            if time.monotonic() >= end:
                return None
            with self._pushed:
                self._pushed.wait(min(POLL_S, max(0.0, end - time.monotonic())))

    def waiting(self, limit: int) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT message FROM queue WHERE deadline IS NULL ORDER BY id LIMIT ?", (limit,))
            return [m for (m,) in rows.fetchall()]

    def take(self, messages: list[str], with_: Claim) -> list[Claim]:
        taken = []
        with self._lock:
            for message in messages:
                row = self._db.execute(
                    "UPDATE queue SET deadline=?, deliveries=deliveries+1, rider_of=? WHERE id=(SELECT id FROM queue"
                    " WHERE deadline IS NULL AND message=? ORDER BY id LIMIT 1) RETURNING id, deliveries",
                    (time.time() + self.visibility_s, int(with_.id), message),
                ).fetchone()
                if row is not None:
                    taken.append(Claim(message=message, id=str(row[0]), deliveries=row[1]))
        return taken

    def ack(self, claim: Claim) -> bool:
        with self._lock:
            return self._settle(claim)

    def _settle(self, claim: Claim, dead_reason: str | None = None) -> bool:
        """Delete a claimed row and its riders if this delivery holds it (its token), keeping it as a dead letter
        with `dead_reason`, in one transaction; the caller holds the lock."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            cur = self._db.execute("DELETE FROM queue WHERE id=? AND (token=? OR ?='')",
                                   (int(claim.id), claim.token, claim.token))  # fmt: skip
            if cur.rowcount:
                self._db.execute("DELETE FROM queue WHERE rider_of=?", (int(claim.id),))
                if dead_reason is not None:
                    self._db.execute("INSERT INTO dead_letters (message, reason, deliveries, at) VALUES (?, ?, ?, ?)",
                                     (claim.message, dead_reason, claim.deliveries, time.time()))  # fmt: skip
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return cur.rowcount > 0

    def extend(self, claims: list[Claim]) -> list[Claim]:
        lost = []
        deadline = time.time() + self.visibility_s
        with self._lock:
            for c in claims:
                if not c.token:  # a rider: it lasts as long as its claim
                    continue
                cur = self._db.execute(  # a NULL token: given back unrun (`defer`), taken back here
                    "UPDATE queue SET deadline=?, token=? WHERE id=? AND (token=? OR token IS NULL)",
                    (deadline, c.token, int(c.id), c.token),
                )
                if cur.rowcount:
                    self._db.execute("UPDATE queue SET deadline=? WHERE rider_of=?", (deadline, int(c.id)))
                else:
                    lost.append(c)
        return lost

    def defer(self, claim: Claim, seconds: float) -> None:
        with self._lock:
            self._db.execute("UPDATE queue SET deadline=?, deliveries=MAX(0, deliveries-1), token=NULL WHERE id=?"
                             " AND (token=? OR ?='')", (time.time() + seconds, int(claim.id), claim.token,
                                                        claim.token))  # fmt: skip

    def release(self, idle_s: float) -> None:
        with self._lock:  # a claim's deadline is visibility_s after its last extension
            self._db.execute("UPDATE queue SET deadline=0 WHERE deadline IS NOT NULL AND deadline<?",
                             (time.time() + self.visibility_s - idle_s,))  # fmt: skip

    def bury(self, claim: Claim, reason: str) -> bool:
        with self._lock:
            # Its riders go with it from here; the worker queues them again (jobs/worker.py _requeue).
            return self._settle(claim, reason)

    def dead(self, limit: int = 100) -> list[dict]:
        with self._lock:
            rows = self._db.execute(
                "SELECT message, reason, deliveries, at FROM dead_letters ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [{"message": m, "reason": r, "deliveries": d, "at": at} for m, r, d, at in rows]

    def dead_count(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()
        return n

    def __len__(self) -> int:
        with self._lock:
            return self._waiting_count()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _waiting_count(self) -> int:
        (n,) = self._db.execute(
            "SELECT COUNT(*) FROM queue WHERE rider_of IS NULL AND (deadline IS NULL OR deadline<?)", (time.time(),)
        ).fetchone()
        return n
