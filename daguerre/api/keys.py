"""API keys: created once and shown once; only their sha256 is stored.

Keys are 256-bit random tokens, so a fast hash is enough (there is nothing to brute-force);
the comparison of digests is constant-time. The key id (a prefix of the digest) is the
owner of every task and image made with the key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import threading
import time
from pathlib import Path

ANONYMOUS = "anonymous"
PREFIX = "dg_"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def key_id(key_digest: str) -> str:
    return "k_" + key_digest[:16]


class KeyStore:
    """Keys from the SQLite key store plus keys given at start-up (--api-key, DAGUERRE_API_KEYS)."""

    def __init__(self, path: Path, *, extra_keys: list[str] = ()):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS api_keys (digest TEXT PRIMARY KEY, label TEXT, created_at REAL NOT NULL)"
        )
        self._lock = threading.Lock()
        self._extra = {digest(k) for k in extra_keys if k}

    def create(self, label: str = "") -> tuple[str, str]:
        """A new key: returns (key id, the key itself, shown once)."""
        key = PREFIX + secrets.token_urlsafe(32)
        d = digest(key)
        with self._lock:
            # Webhook secrets are derived from the server secret and the key id (jobs/delivery.py),
            # so the row holds only the digest, a label and the creation time.
            self._db.execute("INSERT INTO api_keys VALUES (?,?,?)", (d, label, time.time()))
        return key_id(d), key

    def verify(self, key: str | None) -> str | None:
        """The key id for a valid key, else None. Comparison of digests is constant-time."""
        if not isinstance(key, str) or not key or len(key) > 512:
            return None
        d = digest(key)
        with self._lock:
            row = self._db.execute("SELECT digest FROM api_keys WHERE digest=?", (d,)).fetchone()
        candidates = [row[0]] if row else []
        candidates += list(self._extra)
        found = None
        for c in candidates:  # every candidate is compared, so timing does not say which matched
            if hmac.compare_digest(c, d):
                found = c
        return key_id(found) if found else None

    def count(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM api_keys").fetchone()
        return n + len(self._extra)

    def list(self) -> list[tuple[str, str, float]]:
        with self._lock:
            rows = self._db.execute("SELECT digest, label, created_at FROM api_keys ORDER BY created_at").fetchall()
        return [(key_id(d), label, created) for d, label, created in rows]
