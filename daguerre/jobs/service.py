"""The job service: idempotent submission, lookups, start-up recovery, and change events for subscribers.

Adapters call `submit` (with a JobSpec) and `get`; the worker calls `changed` after every update; the
WebSocket and sync-REST paths `subscribe` to hear about a job without polling. When the worker runs in another
process (or on another machine), its changes come through the change feed (jobs/feed.py): the API process
`watch`es it and re-reads the jobs its clients wait on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable

from daguerre.errors import DaguerreError, RequestError
from daguerre.jobs.feed import ChangeFeed, LocalFeed
from daguerre.jobs.queue import JobQueue
from daguerre.jobs.spec import JobSpec, to_json
from daguerre.jobs.store import CANCELLED, ERROR, QUEUED, RUNNING, Job, JobStore

log = logging.getLogger(__name__)
Listener = Callable[[Job], None]
RECHECK_S = 2.0  # a watching API process re-reads its watched jobs this often, whatever the feed said


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
    def __init__(self, *, store: JobStore, queue: JobQueue, feed: ChangeFeed | None = None):
        self.store = store
        self.queue = queue
        self.feed = feed if feed is not None else LocalFeed()
        self._listeners: dict[tuple[str, str], list[Listener]] = defaultdict(list)
        self._lock = threading.Lock()
        self._submit_lock = threading.Lock()

    def submit(self, spec: JobSpec, fingerprint_: str | None = None) -> tuple[Job, bool]:
        """Store and enqueue a job; returns (job, created). A repeat with the same fingerprint returns the
        existing job (created False) and never runs twice; a different one raises DuplicateTask.

        `fingerprint_` is taken from the task as the client sent it (`fingerprint(task)`), so a resend is
        recognised whatever the adapter made of it; without one (a library caller), the spec's own.
        """
        if fingerprint_ is None:
            fingerprint_ = hashlib.sha256(to_json(spec).encode()).hexdigest()
        job = Job(
            owner=spec.owner,
            task_uuid=spec.task_uuid,
            task_type=spec.task_type,
            spec=spec,
            fingerprint=fingerprint_,
            image_uuids=list(spec.image_uuids),
        )
        with self._submit_lock:
            existing = self.store.create(job)
            if existing is not None:
                self.check_same(existing, fingerprint_)
                if existing.status == QUEUED:
                    # A resend of a waiting job: its first push may have been lost (the queue went away between
                    # the store and the queue). Pushed again; a worker skips the copy of a job already taken.
                    self.queue.push(to_json(existing.spec), force=True)
                return existing, False
            try:
                self.queue.push(to_json(spec))
            except BaseException:
                # A job that never reached the queue is forgotten: the client's retry of the same task
                # (honouring Retry-After) must be a fresh submission, not a lookup of a dead job.
                self.store.delete(spec.owner, spec.task_uuid)
                raise
        return job, True

    @staticmethod
    def check_same(existing: Job, fingerprint_: str) -> None:
        """A taskUUID already used by this key must come with the same task (a resend), else it is an error."""
        if existing.fingerprint != fingerprint_:
            raise DuplicateTask(
                f"taskUUID {existing.task_uuid} was already used for a different task; use a new UUID v4 per task",
                parameter="taskUUID",
            )

    def get(self, owner: str, task_uuid: str) -> Job | None:
        return self.store.get(owner, task_uuid)

    def recover(self, upgrade: Callable[[Job], JobSpec] | None = None) -> int:
        """Re-queue every queued or running job; called once at start-up, and a no-op on a durable queue (its
        messages outlive the processes; a dead worker's claim comes back by itself), except the first time a
        data folder from before the durable queue is opened.

        A job stored before JobSpec existed (its raw task in `legacy`) is given its spec by `upgrade` (the
        Runware adapter's reader for the old form) first; one that cannot be upgraded fails with its error.
        """
        if getattr(self.queue, "durable", False) and not getattr(self.queue, "created", False):
            return 0
        jobs = self.store.unfinished()
        for job in jobs:
            if job.spec is None:
                try:
                    if upgrade is None:
                        raise DaguerreError("this job was stored by an older Daguerre and no reader was given")
                    job.spec = upgrade(job)
                except DaguerreError as e:
                    job.status, job.error = ERROR, {"code": e.code, "message": e.message, "parameter": e.parameter}
                    self.store.update(job)
                    continue
                job.legacy = None
            if job.cancel_requested:  # asked to stop before the restart: it stays stopped
                job.status = CANCELLED
                self.store.update(job)
                continue
            if job.status == RUNNING:
                job.status, job.results = QUEUED, []
            self.store.update(job)
            self.queue.push(to_json(job.spec), force=True)
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
        self._announce(job)
        self._publish(job.key)

    def progressed(self, job: Job) -> None:
        """Persist and announce a job's step progress (`progress`, `log`); called by the worker each step."""
        self.store.save_progress(job)
        self._announce(job)
        self._publish(job.key)

    def cancel(self, owner: str, task_uuid: str) -> Job | None:
        """Ask for a job to stop: a queued one is cancelled at once, a running one at its next step (the worker
        reads the request between steps). Finished jobs are left as they are. None: no such job."""
        job = self.store.request_cancel(owner, task_uuid)
        if job is not None:
            self._announce(job)
            self._publish(job.key)
        return job

    def watch(self) -> Callable[[], None]:
        """Hear the changes other processes make (the change feed), and re-read every watched job each
        RECHECK_S in case a feed message was lost; returns a function that stops watching."""
        stop = threading.Event()

        def reread(key) -> None:
            with self._lock:
                watched = key in self._listeners
            if watched:
                job = self.store.get(*key)
                if job is not None:
                    self._announce(job)

        def recheck() -> None:
            while not stop.wait(RECHECK_S):
                with self._lock:
                    keys = list(self._listeners)
                for key in keys:
                    try:
                        reread(key)
                    except Exception:  # noqa: BLE001 - the store is away for a moment: next round
                        break

        stop_feed = self.feed.listen(reread)
        threading.Thread(target=recheck, name="daguerre-recheck", daemon=True).start()

        def stop_all() -> None:
            stop.set()
            stop_feed()

        return stop_all

    def _publish(self, key: tuple[str, str]) -> None:
        try:
            self.feed.publish(key)
        except Exception as e:  # noqa: BLE001 - the job is stored; watchers re-read it within RECHECK_S
            log.warning("change feed publish failed for %s: %s", key, e)

    def _announce(self, job: Job) -> None:
        with self._lock:
            listeners = list(self._listeners.get(job.key, []))
        for listener in listeners:
            listener(job)
