"""Change feeds: how a job change made in a worker process reaches the API process holding its client.

The worker's JobService publishes the key of every job it changes; each API process listens and re-reads the
job from the store for the clients waiting on it (WebSocket, sync REST, `Prefer: wait`, SSE). A feed carries
keys only, never job contents, so a missed message costs a delay, not data: the listener also re-reads its
watched jobs every few seconds (JobService.watch).

- `LocalFeed`: one process (the worker is a thread beside the API): nothing to carry.
- `SQLiteFeed`: one machine, several processes: a `changes` table in the jobs file, read from the last seen row
  every POLL_S (rows older than KEEP_S are pruned).
- `RedisFeed`: many machines: Redis pub/sub on one channel; every API node subscribes, so the fan-out is the
  number of API nodes, not the number of tasks.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)
Key = tuple[str, str]
POLL_S = 0.05
KEEP_S = 120.0
_SEP = "\x00"


class ChangeFeed(Protocol):
    def publish(self, key: Key) -> None:
        """A job changed (called by the process that changed it)."""

    def listen(self, on_change: Callable[[Key], None]) -> Callable[[], None]:
        """Call `on_change(key)` from a background thread for every change published from now on (by any
        process); returns a function that stops listening."""


class LocalFeed:
    def publish(self, key: Key) -> None:
        pass

    def listen(self, on_change: Callable[[Key], None]) -> Callable[[], None]:
        return lambda: None


class SQLiteFeed:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
                         " owner TEXT NOT NULL, task_uuid TEXT NOT NULL, at REAL NOT NULL)")  # fmt: skip
        self._lock = threading.Lock()
        self._published = 0

    def publish(self, key: Key) -> None:
        now = time.time()
        with self._lock:
            self._db.execute("INSERT INTO changes (owner, task_uuid, at) VALUES (?, ?, ?)", (*key, now))
            self._published += 1
            if self._published % 500 == 0:
                self._db.execute("DELETE FROM changes WHERE at<?", (now - KEEP_S,))

    def listen(self, on_change: Callable[[Key], None]) -> Callable[[], None]:
        stop = threading.Event()
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        (last,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()

        def loop() -> None:
            nonlocal last
            while not stop.wait(POLL_S):
                try:
                    rows = db.execute("SELECT seq, owner, task_uuid FROM changes WHERE seq>? ORDER BY seq",
                                      (last,)).fetchall()  # fmt: skip
                except sqlite3.Error as e:
                    log.warning("change feed read failed: %s", e)
                    continue
                for key in dict.fromkeys((owner, task) for _, owner, task in rows):  # each key once per read
                    _call(on_change, key)
                if rows:
                    last = rows[-1][0]
            db.close()

        threading.Thread(target=loop, name="daguerre-feed", daemon=True).start()
        return stop.set


class RedisFeed:
    def __init__(self, client, *, channel: str = "daguerre:changes"):
        self.r, self.channel = client, channel

    def publish(self, key: Key) -> None:
        self.r.publish(self.channel, _SEP.join(key))

    def listen(self, on_change: Callable[[Key], None]) -> Callable[[], None]:
        import redis

        stop = threading.Event()

        def loop() -> None:
            pubsub = None
            while not stop.is_set():
                try:
                    if pubsub is None:
                        pubsub = self.r.pubsub(ignore_subscribe_messages=True)
                        pubsub.subscribe(self.channel)
                    msg = pubsub.get_message(timeout=0.5)
                except (redis.RedisError, OSError) as e:
                    if stop.is_set():
                        break
                    log.warning("change feed lost Redis (%s); reconnecting", e)
                    pubsub = None
                    stop.wait(0.5)
                    continue
                if msg and msg.get("type") == "message":
                    data = msg["data"].decode() if isinstance(msg["data"], bytes) else msg["data"]
                    owner, _, task = data.partition(_SEP)
                    _call(on_change, (owner, task))
            if pubsub is not None:
                with contextlib.suppress(redis.RedisError, OSError):
                    pubsub.close()

        threading.Thread(target=loop, name="daguerre-feed", daemon=True).start()
        return stop.set


def _call(on_change: Callable[[Key], None], key: Key) -> None:
    try:
        on_change(key)
    except Exception:  # noqa: BLE001 - one listener's trouble must not stop the feed
        log.exception("change listener failed for %s", key)
