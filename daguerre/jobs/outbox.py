"""The Outbox protocol (webhooks and uploads owed, with their due times and leases) and its SQLite implementation.

A send (one webhook POST or one upload PUT) is written to the outbox before it is tried, so a process that stops
(a restart, a SIGKILL, a dead node) loses none: the delivery sender of any process on the same store takes it up.
Whoever tries a send holds its lease: the item is not due again until the lease runs out, so two processes never
send it at the same time. The sender then marks it done, or due again at its next retry time; both only apply
while its lease is still the holder's (a sender that stalled past its lease cannot undo another's work).

A send's id is chosen by its writer, and the same id is owed once: a worker that runs a job again (its first
worker died) announces the job's stored images again under the same ids, and the outbox keeps only the first
(a settled send is remembered for KEEP_S). Delivery is still at least once where HTTP cannot do better: a sender
that dies after the receiver answered but before it marked the send done leaves it to be sent again when its
lease runs out. A webhook keeps its webhook-id (the send's id) across every try, which is what Standard Webhooks
receivers de-duplicate on.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

KEEP_S = 24 * 3600  # a settled send's id is remembered this long (a job run again re-announces its images)


@dataclass(frozen=True)
class Lease:
    """A send handed to one sender until `done`, `retry`, or its lease runs out."""

    id: str  # the send's id (a webhook's webhook-id)
    token: str  # this lease (done and retry check it)
    item: dict  # what to send (jobs/delivery.py writes and reads it)
    attempt: int  # tries so far, this one included (1 = the first)


class Outbox(Protocol):
    """Sends owed. Called by jobs/delivery.py's sender only."""

    def add(self, id: str, item: dict, *, lease_s: float | None) -> Lease | None:
        """Owe a new send, unless a send with this id is owed or was settled already (then nothing changes). With
        `lease_s` the caller holds the new send (it sends at once) and gets its lease; without, it is due now for
        any sender. None when there is no lease to hold (a known id, or no `lease_s`)."""

    def due(self, limit: int, *, lease_s: float) -> list[Lease]:
        """Lease up to `limit` sends that are due (their retry time came, or their last lease ran out: its sender
        stopped), soonest first; each lease lasts `lease_s`."""

    def done(self, lease: Lease) -> bool:
        """Sent, or given up: settled (its id is remembered for KEEP_S, then forgotten). False if the lease had run
        out and another sender holds it now."""

    def retry(self, lease: Lease, at: float) -> bool:
        """Failed for now: due again at `at` (epoch seconds), for any sender. False as for `done`."""

    def next_due(self) -> float | None:
        """When the soonest send is due (epoch seconds), or None if none is owed."""

    def __len__(self) -> int:
        """Sends owed (tried or not; not the settled ones)."""

    def close(self) -> None:
        """Let go of the backend (the process is stopping)."""


class SQLiteOutbox:
    """The embedded default: a table in the data folder's jobs.sqlite3, shared by the API process and its workers.

    `due` is when a send may next be taken: now when written unleased, the lease's end while a sender holds it,
    the retry time after a failure, NULL once settled. Taking sends is one UPDATE ... RETURNING, so two processes
    get different ones.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            """CREATE TABLE IF NOT EXISTS outbox (
                id TEXT PRIMARY KEY, item TEXT, due REAL, token TEXT, attempt INTEGER NOT NULL DEFAULT 0,
                created REAL NOT NULL, settled REAL)"""
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS outbox_due ON outbox(due)")
        self._lock = threading.Lock()
        self._swept = 0.0

    def add(self, id: str, item: dict, *, lease_s: float | None) -> Lease | None:
        now = time.time()
        token = secrets.token_hex(8) if lease_s is not None else None
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO outbox (id, item, due, token, attempt, created) VALUES (?, ?, ?, ?, ?, ?)",
                (id, json.dumps(item), now + (lease_s or 0), token, 1 if token else 0, now),
            )
        return Lease(id=id, token=token, item=item, attempt=1) if token and cur.rowcount else None

    def due(self, limit: int, *, lease_s: float) -> list[Lease]:
        if limit <= 0:
            return []
        now = time.time()
        token = secrets.token_hex(8)
        with self._lock:
            if now - self._swept > 600:  # forget settled sends past KEEP_S
                self._swept = now
                self._db.execute("DELETE FROM outbox WHERE due IS NULL AND settled<?", (now - KEEP_S,))
            if self._db.execute("SELECT 1 FROM outbox WHERE due<=? LIMIT 1", (now,)).fetchone() is None:
                return []  # a read first: polling takes no write lock
            rows = self._db.execute(
                "UPDATE outbox SET due=?, token=?, attempt=attempt+1 WHERE id IN (SELECT id FROM outbox WHERE due<=?"
                " ORDER BY due LIMIT ?) RETURNING id, item, attempt",
                (now + lease_s, token, now, limit),
            ).fetchall()
        return [Lease(id=i, token=token, item=json.loads(item), attempt=a) for i, item, a in rows]

    def done(self, lease: Lease) -> bool:
        with self._lock:
            cur = self._db.execute(
                "UPDATE outbox SET due=NULL, token=NULL, item=NULL, settled=? WHERE id=? AND token=?",
                (time.time(), lease.id, lease.token),
            )
        return bool(cur.rowcount)

    def retry(self, lease: Lease, at: float) -> bool:
        with self._lock:
            cur = self._db.execute(
                "UPDATE outbox SET due=?, token=NULL WHERE id=? AND token=?", (at, lease.id, lease.token)
            )
        return bool(cur.rowcount)

    def next_due(self) -> float | None:
        with self._lock:
            (at,) = self._db.execute("SELECT MIN(due) FROM outbox").fetchone()
        return at

    def __len__(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM outbox WHERE due IS NOT NULL").fetchone()
        return n

    def close(self) -> None:
        with self._lock:
            self._db.close()
