"""The JobQueue protocol and its in-process implementation (the embedded default).

A queue message is a JobSpec serialized by jobs/spec.py (JSON text): the queue never looks inside it, so
any backend that moves text (SQLite, Redis Streams) can carry it.
"""

from __future__ import annotations

import itertools
import queue
from typing import Protocol


class QueueFull(Exception):  # noqa: N818 - a condition, reported as 429
    """The queue holds its maximum number of waiting jobs."""


class JobQueue(Protocol):
    """Jobs waiting for a worker. Called by the service (push) and the worker loop (claim, waiting, take)."""

    def push(self, message: str, *, force: bool = False) -> None:
        """Enqueue a job's message; raises QueueFull at capacity unless `force` (start-up recovery re-queues
        every unfinished job, whatever the cap)."""

    def claim(self, timeout: float) -> str | None:
        """The next message, waiting up to `timeout` seconds; None if none came."""

    def waiting(self, limit: int) -> list[str]:
        """Up to `limit` waiting messages, oldest first, left in the queue (the worker looks for jobs that can
        share a forward pass with the one it claimed)."""

    def take(self, messages: list[str]) -> list[str]:
        """Claim these messages if they are still waiting; returns the ones claimed (another worker may have
        been first)."""

    def __len__(self) -> int:
        """Jobs waiting (not counting the ones running)."""


class InProcessQueue:
    """A bounded FIFO shared by the API and the worker thread of one process."""

    def __init__(self, maxsize: int):
        self._q: queue.Queue[str] = queue.Queue(maxsize=maxsize)

    def push(self, message: str, *, force: bool = False) -> None:
        if force:
            with self._q.mutex:  # past the cap: append directly and wake a waiting claim
                self._q.queue.append(message)
                self._q.unfinished_tasks += 1
                self._q.not_empty.notify()
            return
        try:
            self._q.put_nowait(message)
        except queue.Full as e:
            raise QueueFull(f"the queue is full ({self._q.maxsize} waiting jobs)") from e

    def claim(self, timeout: float) -> str | None:
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def waiting(self, limit: int) -> list[str]:
        with self._q.mutex:
            return list(itertools.islice(self._q.queue, limit))

    def take(self, messages: list[str]) -> list[str]:
        taken = []
        with self._q.mutex:
            for message in messages:
                try:
                    self._q.queue.remove(message)
                except ValueError:
                    continue
                taken.append(message)
            if taken:
                self._q.not_full.notify(len(taken))
        return taken

    def __len__(self) -> int:
        return self._q.qsize()
