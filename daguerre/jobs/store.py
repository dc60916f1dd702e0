"""Jobs: the record of one task, the JobStore protocol, and its SQLite implementation.

A job is keyed by (owner, taskUUID): taskUUIDs are unique per API key. Its record holds its JobSpec (the
queue message), so its state survives a restart: queued jobs are run again after restart and running ones
are re-queued (the worker is idempotent per job: results already stored are not produced twice). Rows
written before JobSpec existed hold the raw Runware task instead; they come back with `legacy` set, and
the start-up recovery upgrades them.
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

QUEUED, RUNNING, SUCCESS, ERROR = "queued", "running", "success", "error"


@dataclass
class Job:
    """One submitted task and everything known about its outcome. Its spec is what the queue carries."""

    owner: str  # API key id ("anonymous" when keys are off)
    task_uuid: str  # client-chosen UUID v4, unique per owner
    task_type: str  # "imageInference"
    spec: JobSpec | None  # what the worker runs; None only for a job stored before JobSpec (see `legacy`)
    fingerprint: str  # sha256 of the task as the client sent it: same UUID + same task = same job
    image_uuids: list[str]  # pre-allocated, one per expected result, reported while processing
    status: str = QUEUED  # queued | running | success | error
    results: list[dict] = field(default_factory=list)  # per finished image: imageUUID, seed, ext, seconds
    error: dict | None = None  # {code, message, parameter} when status == error
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    legacy: dict | None = None  # a job stored by Daguerre before JobSpec: the raw task, upgraded at start-up

    @property
    def key(self) -> tuple[str, str]:
        return self.owner, self.task_uuid

    @property
    def done(self) -> bool:
        return self.status in (SUCCESS, ERROR)


class JobStore(Protocol):
    """Durable job records. Called by the service (create/get), the worker (update), start-up (recover)."""

    def create(self, job: Job) -> Job | None:
        """Insert a new job; returns the existing job instead if (owner, taskUUID) is taken."""

    def get(self, owner: str, task_uuid: str) -> Job | None:
        """The job, or None (also when it belongs to another owner)."""

    def update(self, job: Job) -> None:
        """Persist a job's status, results, error and spec; called by the worker after each change (and at
        start-up, when a job stored before JobSpec gets its spec)."""

    def delete(self, owner: str, task_uuid: str) -> None:
        """Forget a job; called by the service when a job it created could not be queued."""

    def unfinished(self) -> list[Job]:
        """Queued and running jobs, oldest first; called once at start-up to re-queue them."""

    def counts(self) -> dict[str, int]:
        """Jobs per status, for health output."""


class SQLiteJobStore:
    """The embedded default: one SQLite file, one connection guarded by a lock (WAL mode)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
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
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, created_at)")
        self._lock = threading.Lock()

    def create(self, job: Job) -> Job | None:
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        job.owner,
                        job.task_uuid,
                        job.task_type,
                        _payload(job),
                        job.fingerprint,
                        json.dumps(job.image_uuids),
                        job.status,
                        json.dumps(job.results),
                        json.dumps(job.error) if job.error else None,
                        job.created_at,
                        job.updated_at,
                    ),
                )
                return None
            except sqlite3.IntegrityError:
                pass
        return self.get(job.owner, job.task_uuid)

    def get(self, owner: str, task_uuid: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE owner=? AND task_uuid=?", (owner, task_uuid)).fetchone()
        return _job(row) if row else None

    def update(self, job: Job) -> None:
        job.updated_at = time.time()
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET payload=?, status=?, results=?, error=?, updated_at=? WHERE owner=? AND task_uuid=?",
                (
                    _payload(job),
                    job.status,
                    json.dumps(job.results),
                    json.dumps(job.error) if job.error else None,
                    job.updated_at,
                    job.owner,
                    job.task_uuid,
                ),
            )

    def delete(self, owner: str, task_uuid: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE owner=? AND task_uuid=?", (owner, task_uuid))

    def unfinished(self) -> list[Job]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE status IN (?, ?) ORDER BY created_at", (QUEUED, RUNNING)
            ).fetchall()
        return [_job(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return dict(rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _payload(job: Job) -> str:
    """The payload column: the JobSpec's JSON (or, for a job stored before JobSpec, its raw task)."""
    return spec.to_json(job.spec) if job.spec is not None else json.dumps(job.legacy)


def _job(row) -> Job:
    (owner, task_uuid, task_type, payload, fingerprint, image_uuids, status, results, error, created, updated) = row
    data = json.loads(payload)
    is_spec = spec.is_spec(data)
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
        legacy=None if is_spec else data,
    )
