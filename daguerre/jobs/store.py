"""Jobs: the record of one task, the JobStore protocol, and its SQLite implementation.

A job is keyed by (owner, taskUUID): taskUUIDs are unique per API key. Its record holds its JobSpec (the
queue message), so its state survives a restart: queued jobs are run again after restart and running ones
are re-queued (the worker is idempotent per job: results already stored are not produced twice). Rows
written before JobSpec existed hold the raw Runware task instead; they come back with `legacy` set, and
the start-up recovery upgrades them.

Every door sees the same records: a prediction created on one is a job any door's polling endpoint finds
under the same API key (by taskUUID, or by the store's sequential `number` for doors with integer ids).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from daguerre.jobs import spec
from daguerre.jobs.spec import JobSpec

QUEUED, RUNNING, SUCCESS, ERROR, CANCELLED = "queued", "running", "success", "error", "cancelled"
FINAL = (SUCCESS, ERROR, CANCELLED)
LOG_LINES = 200  # progress lines kept per job (the last ones)


@dataclass
class Job:
    """One submitted task and everything known about its outcome. Its spec is what the queue carries."""

    owner: str  # API key id ("anonymous" when keys are off)
    task_uuid: str  # client-chosen (or door-assigned) UUID, unique per owner
    task_type: str  # "imageInference"
    spec: JobSpec | None  # what the worker runs; None only for a job stored before JobSpec (see `legacy`)
    fingerprint: str  # sha256 of the task as the client sent it: same UUID + same task = same job
    image_uuids: list[str]  # pre-allocated, one per expected result, reported while processing
    status: str = QUEUED  # queued | running | success | error | cancelled
    results: list[dict] = field(default_factory=list)  # per finished image: imageUUID, seed, ext, seconds, nsfw
    error: dict | None = None  # {code, message, parameter} when status == error
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    started_at: float | None = None  # when a worker started it
    completed_at: float | None = None  # when it ended (success, error or cancelled)
    progress: dict | None = None  # {"step", "total", "images"} of the pass running now
    log: list[str] = field(default_factory=list)  # progress lines, the last LOG_LINES
    cancel_requested: bool = False  # a client asked to cancel: the worker stops at the next step
    number: int | None = None  # the store's sequential id (for doors whose ids are integers)
    legacy: dict | None = None  # a job stored by Daguerre before JobSpec: the raw task, upgraded at start-up

    @property
    def key(self) -> tuple[str, str]:
        return self.owner, self.task_uuid

    @property
    def done(self) -> bool:
        return self.status in FINAL


class JobStore(Protocol):
    """Durable job records. Called by the service (create/get/cancel), the worker (start/update/progress),
    start-up (unfinished)."""

    def create(self, job: Job) -> Job | None:
        """Insert a new job (setting its `number`); returns the existing job instead if (owner, taskUUID) is
        taken."""

    def get(self, owner: str, task_uuid: str) -> Job | None:
        """The job, or None (also when it belongs to another owner)."""

    def get_number(self, owner: str, number: int) -> Job | None:
        """The job with this sequential number, or None (also another owner's)."""

    def start(self, job: Job, *, again: bool = False) -> bool:
        """Move a queued job to running (setting started_at); False if it is no longer queued (a cancel came
        first). Called by the worker when it claims the job; `again` (a redelivery: the worker that ran it
        died) also restarts a job left running."""

    def update(self, job: Job) -> None:
        """Persist a job's status, results, error, times and spec; called by the worker after each change (and at
        start-up, when a job stored before JobSpec gets its spec). Never clears a cancel request."""

    def save_progress(self, job: Job) -> None:
        """Persist `progress` and `log` only; called by the worker after each denoising step."""

    def request_cancel(self, owner: str, task_uuid: str) -> Job | None:
        """Flag a job for cancellation; a queued one is cancelled at once. Returns the job, or None."""

    def cancel_requested(self, owner: str, task_uuid: str) -> bool:
        """Whether a cancel was asked for; the worker reads it between steps."""

    def delete(self, owner: str, task_uuid: str) -> None:
        """Forget a job; called by the service when a job it created could not be queued."""

    def unfinished(self) -> list[Job]:
        """Queued and running jobs, oldest first; called once at start-up to re-queue them."""

    def count_unfinished(self, owner: str) -> int:
        """This owner's queued and running jobs (the per-key in-flight limit)."""

    def queued_before(self, created_at: float) -> int:
        """Jobs still queued that were created before `created_at` (a queued job's queuePosition)."""

    def recent(self, owner: str, limit: int, before: int | None = None) -> list[Job]:
        """This owner's newest jobs first, up to `limit`, numbered below `before` when given (listings)."""

    def counts(self) -> dict[str, int]:
        """Jobs per status, for health output."""

    def beat(self, worker: dict) -> None:
        """Record a live worker (its `id`, `ttl` in seconds, device, resident models...); it counts as live
        until `ttl` seconds pass without another beat."""

    def workers(self) -> list[dict]:
        """The live workers' last beats."""

    def forget(self, worker_id: str) -> None:
        """A worker stopped: not live any more."""


def backend_errors() -> tuple[type[Exception], ...]:
    """Exceptions meaning the job store or queue is away (Redis restarting, SQLite locked), not a job's or a
    request's fault: the API answers 503 (retry), a worker runs its job again once they are back."""
    kinds: list[type[Exception]] = [sqlite3.OperationalError]
    try:
        import redis

        kinds += [redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError]
    except ImportError:
        pass
    return tuple(kinds)


_COLUMNS = ("owner", "task_uuid", "task_type", "payload", "fingerprint", "image_uuids", "status", "results", "error",
            "created_at", "updated_at", "started_at", "completed_at", "progress", "cancel")  # fmt: skip
_ADDED = {"started_at": "REAL", "completed_at": "REAL", "progress": "TEXT", "cancel": "INTEGER NOT NULL DEFAULT 0"}


class SQLiteJobStore:
    """The embedded default: one SQLite file, one connection guarded by a lock (WAL mode)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            """CREATE TABLE IF NOT EXISTS jobs (
                owner TEXT NOT NULL, task_uuid TEXT NOT NULL, task_type TEXT NOT NULL,
                payload TEXT NOT NULL, fingerprint TEXT NOT NULL, image_uuids TEXT NOT NULL,
                status TEXT NOT NULL, results TEXT NOT NULL, error TEXT,
                created_at REAL NOT NULL, updated_at REAL NOT NULL,
                PRIMARY KEY (owner, task_uuid))"""
        )
        # Columns added since the first release: a database from an older Daguerre gains them here.
        have = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for name, kind in _ADDED.items():
            if name not in have:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, created_at)")
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_owner_status ON jobs(owner, status)")
        self._db.execute("CREATE TABLE IF NOT EXISTS workers (id TEXT PRIMARY KEY, info TEXT NOT NULL, until REAL)")
        self._lock = threading.Lock()
        self._select = f"SELECT rowid, {', '.join(_COLUMNS)} FROM jobs"

    def create(self, job: Job) -> Job | None:
        with self._lock:
            try:
                cur = self._db.execute(
                    f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                    (job.owner, job.task_uuid, job.task_type, _payload(job), job.fingerprint,
                     json.dumps(job.image_uuids), job.status, json.dumps(job.results), _json(job.error),
                     job.created_at, job.updated_at, job.started_at, job.completed_at, _progress(job),
                     int(job.cancel_requested)),
                )  # fmt: skip
                job.number = cur.lastrowid
                return None
            except sqlite3.IntegrityError:
                pass
        return self.get(job.owner, job.task_uuid)

    def get(self, owner: str, task_uuid: str) -> Job | None:
        return self._one(f"{self._select} WHERE owner=? AND task_uuid=?", (owner, task_uuid))

    def get_number(self, owner: str, number: int) -> Job | None:
        return self._one(f"{self._select} WHERE rowid=? AND owner=?", (number, owner))

    def start(self, job: Job, *, again: bool = False) -> bool:
        now = time.time()
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET status=?, started_at=?, updated_at=? WHERE owner=? AND task_uuid=?"
                " AND status IN (?, ?)",
                (RUNNING, now, now, job.owner, job.task_uuid, QUEUED, RUNNING if again else QUEUED),
            )
        if cur.rowcount:
            job.status, job.started_at, job.updated_at = RUNNING, now, now
        return bool(cur.rowcount)

    def update(self, job: Job) -> None:
        job.updated_at = time.time()
        if job.done and job.completed_at is None:
            job.completed_at = job.updated_at
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET payload=?, status=?, results=?, error=?, updated_at=?, started_at=?, completed_at=?,"
                " progress=? WHERE owner=? AND task_uuid=?",
                (_payload(job), job.status, json.dumps(job.results), _json(job.error), job.updated_at,
                 job.started_at, job.completed_at, _progress(job), job.owner, job.task_uuid),
            )  # fmt: skip

    def save_progress(self, job: Job) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET progress=? WHERE owner=? AND task_uuid=?", (_progress(job), job.owner, job.task_uuid)
            )

    def request_cancel(self, owner: str, task_uuid: str) -> Job | None:
        now = time.time()
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET cancel=1, status=CASE WHEN status=? THEN ? ELSE status END,"
                " completed_at=CASE WHEN status=? THEN ? ELSE completed_at END, updated_at=?"
                " WHERE owner=? AND task_uuid=?",
                (QUEUED, CANCELLED, QUEUED, now, now, owner, task_uuid),
            )
        return self.get(owner, task_uuid)

    def cancel_requested(self, owner: str, task_uuid: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT cancel FROM jobs WHERE owner=? AND task_uuid=?", (owner, task_uuid)
            ).fetchone()
        return bool(row and row[0])

    def delete(self, owner: str, task_uuid: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE owner=? AND task_uuid=?", (owner, task_uuid))

    def unfinished(self) -> list[Job]:
        with self._lock:
            rows = self._db.execute(f"{self._select} WHERE status IN (?, ?) ORDER BY created_at", (QUEUED, RUNNING))
            rows = rows.fetchall()
        return [_job(r) for r in rows]

    def count_unfinished(self, owner: str) -> int:
        with self._lock:
            (n,) = self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE owner=? AND status IN (?, ?)", (owner, QUEUED, RUNNING)
            ).fetchone()
        return n

    def queued_before(self, created_at: float) -> int:
        with self._lock:
            (n,) = self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status=? AND created_at<?", (QUEUED, created_at)
            ).fetchone()
        return n

    def recent(self, owner: str, limit: int, before: int | None = None) -> list[Job]:
        with self._lock:
            rows = self._db.execute(
                f"{self._select} WHERE owner=? AND rowid<? ORDER BY rowid DESC LIMIT ?",
                (owner, before if before is not None else 2**62, limit),
            ).fetchall()
        return [_job(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return dict(rows)

    def beat(self, worker: dict) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO workers (id, info, until) VALUES (?, ?, ?)",
                             (worker["id"], json.dumps(worker), time.time() + worker["ttl"]))  # fmt: skip

    def workers(self) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT info FROM workers WHERE until>? ORDER BY id", (time.time(),)).fetchall()
        return [json.loads(r) for (r,) in rows]

    def forget(self, worker_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM workers WHERE id=?", (worker_id,))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _one(self, sql: str, args: tuple) -> Job | None:
        with self._lock:
            row = self._db.execute(sql, args).fetchone()
        return _job(row) if row else None


def _json(value) -> str | None:
    return json.dumps(value) if value else None


def _payload(job: Job) -> str:
    """The payload column: the JobSpec's JSON (or, for a job stored before JobSpec, its raw task)."""
    return spec.to_json(job.spec) if job.spec is not None else json.dumps(job.legacy)


def _progress(job: Job) -> str | None:
    if job.progress is None and not job.log:
        return None
    return json.dumps({"progress": job.progress, "log": job.log[-LOG_LINES:]})


def _job(row) -> Job:
    (number, owner, task_uuid, task_type, payload, fingerprint, image_uuids, status, results, error, created,
     updated, started, completed, progress, cancel) = row  # fmt: skip
    data = json.loads(payload)
    is_spec = spec.is_spec(data)
    prog = json.loads(progress) if progress else {}
    return Job(
        owner=owner,
        task_uuid=task_uuid,
        task_type=task_type,
        spec=spec.from_json(data) if is_spec else None,
        fingerprint=fingerprint,
        image_uuids=json.loads(image_uuids),
        status=status,
        results=json.loads(results),
        error=json.loads(error) if error else None,
        created_at=created,
        updated_at=updated,
        started_at=started,
        completed_at=completed,
        progress=prog.get("progress"),
        log=prog.get("log", []),
        cancel_requested=bool(cancel),
        number=number,
        legacy=None if is_spec else data,
    )
