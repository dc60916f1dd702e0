"""Where generated images and uploaded inputs live: the ResultStore protocol and a local-disk store.

Image ids are random UUIDs (unguessable); URLs are signed with an HMAC of the id and an
expiry, so a link stops working at its TTL even before the sweeper deletes the file.
Every stored object records its owner (API key id): another key's objects answer as absent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class StoredObject:
    """Metadata kept beside each stored image."""

    uuid: str  # imageUUID
    owner: str  # API key id that may read it
    ext: str  # jpg | png | webp
    kind: str  # "result" (generated) or "upload" (imageUpload input)
    expires_at: float  # unix time after which it is gone


class ResultStore(Protocol):
    """Stores image bytes by imageUUID. Called by the worker (put), routes and the resolver (get), the sweeper."""

    def put(self, obj: StoredObject, data: bytes) -> None:
        """Store bytes; called once per generated image or upload."""

    def get(self, uuid: str, owner: str | None) -> tuple[StoredObject, bytes] | None:
        """Bytes and metadata, or None if absent, expired or owned by someone else (owner None: any)."""

    def delete(self, uuid: str) -> None:
        """Remove an object at once (an input stored for a submission that was then refused)."""

    def sweep(self, now: float | None = None) -> int:
        """Delete expired objects; called periodically. Returns how many went."""


class LocalResultStore:
    """Images under one folder: `<uuid>.<ext>` plus `<uuid>.json` metadata."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _paths(self, uuid: str) -> tuple[Path, Path]:
        if not _is_uuid_like(uuid):
            raise KeyError(uuid)
        return self.root / f"{uuid}.bin", self.root / f"{uuid}.json"

    def put(self, obj: StoredObject, data: bytes) -> None:
        blob, meta = self._paths(obj.uuid)
        tmp = blob.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(blob)
        meta.write_text(json.dumps(asdict(obj)))

    def get(self, uuid: str, owner: str | None) -> tuple[StoredObject, bytes] | None:
        try:
            blob, meta = self._paths(uuid)
            obj = StoredObject(**json.loads(meta.read_text()))
            if obj.expires_at < time.time() or (owner is not None and obj.owner != owner):
                return None
            return obj, blob.read_bytes()
        except (KeyError, OSError, ValueError, TypeError):
            return None

    def delete(self, uuid: str) -> None:
        try:
            paths = self._paths(uuid)
        except KeyError:
            return
        for p in paths:
            p.unlink(missing_ok=True)

    def sweep(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        gone = 0
        with self._lock:
            for meta in self.root.glob("*.json"):
                try:
                    obj = StoredObject(**json.loads(meta.read_text()))
                except (OSError, ValueError, TypeError):
                    continue
                if obj.expires_at < now:
                    for p in self._paths(obj.uuid):
                        p.unlink(missing_ok=True)
                    gone += 1
        return gone


def _is_uuid_like(s: str) -> bool:
    return isinstance(s, str) and 8 <= len(s) <= 64 and all(c in "0123456789abcdef-" for c in s.lower())


class UrlSigner:
    """HMAC-signed, expiring image links: /v1/images/<uuid>.<ext>?exp=<unix>&sig=<hex>."""

    def __init__(self, secret: bytes, base_url: str):
        self.secret = secret
        self.base_url = base_url.rstrip("/")

    def sign(self, uuid: str, ext: str, expires_at: float) -> str:
        exp = int(expires_at)
        return f"{self.base_url}/v1/images/{uuid}.{ext}?exp={exp}&sig={self._mac(uuid, exp)}"

    def check(self, uuid: str, exp: int | str, sig: str) -> bool:
        """True for an unexpired link with its own signature; any malformed exp or sig is simply False."""
        try:
            exp = int(exp)
        except (TypeError, ValueError):
            return False
        if not isinstance(sig, str) or not sig.isascii():  # compare_digest refuses non-ASCII text
            return False
        return exp >= time.time() and hmac.compare_digest(self._mac(uuid, exp), sig)

    def _mac(self, uuid: str, exp: int) -> str:
        return hmac.new(self.secret, f"{uuid}:{exp}".encode(), hashlib.sha256).hexdigest()[:32]
