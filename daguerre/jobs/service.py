"""The job service: idempotent submission, lookups, and change events for subscribers.

Routes call `submit` and `get`; the worker calls `changed` after every update; the WebSocket
and sync-REST paths `subscribe` to hear about a job without polling.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable

from daguerre.errors import DaguerreError, RequestError
from daguerre.jobs.queue import JobQueue
from daguerre.jobs.store import Job, JobStore

Listener = Callable[[Job], None]


class DuplicateTask(DaguerreError):  # noqa: N818
    """The taskUUID was already used by this key with a different payload."""

    code = "duplicateTaskUUID"


def fingerprint(task: dict) -> str:
    return hashlib.sha256(json.dumps(task, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_task_uuid(value) -> str:
    """taskUUID must be a UUID v4 in its canonical text form."""
    try:
        parsed = uuid.UUID(str(value))
    except (ValueError, TypeError, AttributeError):
        parsed = None
    if parsed is None or parsed.version != 4 or str(parsed) != str(value).lower():
        raise RequestError(f"taskUUID must be a UUID v4 (e.g. {uuid.uuid4()}), got {value!r}", parameter="taskUUID")
    return str(value).lower()


class JobService:
    def __init__(self, *, store: JobStore, queue: JobQueue):
        self.store = store
        self.queue = queue
        self._listeners: dict[tuple[str, str], list[Listener]] = defaultdict(list)
        self._lock = threading.Lock()
        self._submit_lock = threading.Lock()

    def submit(self, owner: str, task: dict, number_results: int, *, payload: dict | None = None) -> tuple[Job, bool]:
        """Store and enqueue a validated task; returns (job, created). A repeat with the same payload
        returns the existing job (created False) and never runs twice; a different payload raises.

        `payload` is what the worker will run (the task with inline images swapped for stored
        imageUUIDs); the idempotency fingerprint is always taken from the task as the client sent it.
        """
        task_uuid = check_task_uuid(task.get("taskUUID"))
        fp = fingerprint(task)
        payload = dict(payload if payload is not None else task)
        if payload.get("seed") is None:
            # Fix the random seed now, so a job re-run after a restart makes the same images.
            payload["seed"] = secrets.randbelow(2**32)
        job = Job(
            owner=owner,
            task_uuid=task_uuid,
            task_type=task["taskType"],
            payload=payload,
            fingerprint=fp,
            image_uuids=[str(uuid.uuid4()) for _ in range(number_results)],
        )
        with self._submit_lock:
            existing = self.store.create(job)
            if existing is not None:
                self.check_same(existing, task)
                return existing, False
            try:
                self.queue.push(job.key)
            except BaseException:
                # A job that never reached the queue is forgotten: the client's retry of the same task
                # (honouring Retry-After) must be a fresh submission, not a lookup of a dead job.
                self.store.delete(owner, task_uuid)
                raise
        return job, True

    @staticmethod
    def check_same(existing: Job, task: dict) -> None:
        """A taskUUID already used by this key must come with the same task (a resend), else it is an error."""
        if existing.fingerprint != fingerprint(task):
            raise DuplicateTask(
                f"taskUUID {existing.task_uuid} was already used for a different task; use a new UUID v4 per task",
                parameter="taskUUID",
            )

    def get(self, owner: str, task_uuid: str) -> Job | None:
        return self.store.get(owner, task_uuid)

    def recover(self) -> int:
        """Re-queue every queued or running job; called once at start-up."""
        jobs = self.store.unfinished()
        for job in jobs:
            if job.status == "running":
                job.status, job.results = "queued", []
                self.store.update(job)
            self.queue.push(job.key, force=True)
        return len(jobs)

    def subscribe(self, key: tuple[str, str], listener: Listener) -> Callable[[], None]:
        """Call `listener(job)` from the worker thread on every change; returns an unsubscribe function."""
        with self._lock:
            self._listeners[key].append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners.get(key, []):
                    self._listeners[key].remove(listener)
                    if not self._listeners[key]:
                        del self._listeners[key]

        return unsubscribe

    def changed(self, job: Job) -> None:
        """Persist and announce a job change; called by the worker."""
        self.store.update(job)
        with self._lock:
            listeners = list(self._listeners.get(job.key, []))
        for listener in listeners:
            listener(job)
