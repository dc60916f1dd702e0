"""The JobQueue protocol and its in-process implementation (the embedded default)."""

from __future__ import annotations

import itertools
import queue
from typing import Protocol


class QueueFull(Exception):  # noqa: N818 - a condition, reported as 429
    """The queue holds its maximum number of waiting jobs."""


class JobQueue(Protocol):
    """Job keys waiting for a worker. Called by the service (push) and the worker loop (claim)."""

    def push(self, key: tuple[str, str], *, force: bool = False) -> None:
        """Enqueue a job key (owner, taskUUID); raises QueueFull at capacity unless `force`
        (start-up recovery re-queues every unfinished job, whatever the cap)."""

    def claim(self, timeout: float) -> tuple[str, str] | None:
        """The next key, waiting up to `timeout` seconds; None if none came."""

    def waiting(self, limit: int) -> list[tuple[str, str]]:
        """Up to `limit` waiting keys, oldest first, left in the queue (the worker looks for jobs that can
        share a forward pass with the one it claimed)."""

    def take(self, keys: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Claim these keys if they are still waiting; returns the ones claimed (another worker may have
        been first)."""

    def __len__(self) -> int:
        """Jobs waiting (not counting the one running)."""


class InProcessQueue:
    """A bounded FIFO shared by the API and the worker thread of one process."""

    def __init__(self, maxsize: int):
        self._q: queue.Queue[tuple[str, str]] = queue.Queue(maxsize=maxsize)

    def push(self, key: tuple[str, str], *, force: bool = False) -> None:
        if force:
            with self._q.mutex:  # past the cap: append directly and wake a waiting claim
                self._q.queue.append(key)
                self._q.unfinished_tasks += 1
                self._q.not_empty.notify()
            return
        try:
            self._q.put_nowait(key)
        except queue.Full as e:
            raise QueueFull(f"the queue is full ({self._q.maxsize} waiting jobs)") from e

    def claim(self, timeout: float) -> tuple[str, str] | None:
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def waiting(self, limit: int) -> list[tuple[str, str]]:
        with self._q.mutex:
            return list(itertools.islice(self._q.queue, limit))

    def take(self, keys: list[tuple[str, str]]) -> list[tuple[str, str]]:
        taken = []
        with self._q.mutex:
            for key in keys:
                try:
                    self._q.queue.remove(key)
                except ValueError:
                    continue
                taken.append(key)
            if taken:
                self._q.not_full.notify(len(taken))
        return taken

    def __len__(self) -> int:
        return self._q.qsize()
