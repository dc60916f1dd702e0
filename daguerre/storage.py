"""Where generated images and uploaded inputs live: the ResultStore protocol, a folder (local disk, or a
directory every machine mounts) and S3-compatible object storage.

Image ids are random UUIDs (unguessable); URLs are signed with an HMAC of the id and an
expiry, so a link stops working at its TTL even before the sweeper deletes the file. On S3 the
links are the bucket's own presigned URLs instead (valid for the image's ttl, at most 7 days:
SigV4's limit), so images are downloaded from the storage, not through an API node.
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

    def presign(self, uuid: str, ext: str, expires_at: float) -> str | None:
        """The storage's own download link for an image, or None where links go through the server."""


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

    def presign(self, uuid: str, ext: str, expires_at: float) -> str | None:
        return None

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


PRESIGN_MAX_S = 7 * 24 * 3600  # the longest a SigV4 presigned URL may live
_CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


class S3ResultStore:
    """Images as objects `<prefix><uuid>` in one bucket (boto3: AWS S3, MinIO, Cloudflare R2, moto...), their
    StoredObject fields in the object's metadata. Credentials come from boto3's usual chain (environment,
    ~/.aws, instance role). A bucket lifecycle rule that expires objects after the longest ttl saves the
    sweeper's listing on large buckets (docs/deploy.md)."""

    def __init__(self, bucket: str, *, prefix: str = "", endpoint_url: str | None = None,
                 region: str | None = None, client=None):  # fmt: skip
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region,
                                  config=Config(signature_version="s3v4"))  # fmt: skip
        self.s3, self.bucket, self.prefix = client, bucket, prefix

    def _key(self, uuid: str) -> str:
        if not _is_uuid_like(uuid):
            raise KeyError(uuid)
        return f"{self.prefix}{uuid}"

    def put(self, obj: StoredObject, data: bytes) -> None:
        meta = {"owner": obj.owner, "ext": obj.ext, "kind": obj.kind, "expires-at": repr(obj.expires_at)}
        self.s3.put_object(Bucket=self.bucket, Key=self._key(obj.uuid), Body=data, Metadata=meta,
                           ContentType=_CONTENT_TYPES.get(obj.ext, "application/octet-stream"))  # fmt: skip

    def get(self, uuid: str, owner: str | None) -> tuple[StoredObject, bytes] | None:
        from botocore.exceptions import ClientError

        try:
            got = self.s3.get_object(Bucket=self.bucket, Key=self._key(uuid))
        except KeyError:
            return None
        except ClientError as e:  # absent is None; throttling, 5xx or a refusal is an error, not "expired"
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        obj = _from_meta(uuid, got.get("Metadata", {}))
        if obj is None or obj.expires_at < time.time() or (owner is not None and obj.owner != owner):
            return None
        return obj, got["Body"].read()

    def delete(self, uuid: str) -> None:
        try:
            self.s3.delete_object(Bucket=self.bucket, Key=self._key(uuid))
        except KeyError:
            return

    def presign(self, uuid: str, ext: str, expires_at: float) -> str | None:
        ttl = int(min(PRESIGN_MAX_S, max(1, expires_at - time.time())))
        return self.s3.generate_presigned_url(
            "get_object", ExpiresIn=ttl,
            Params={"Bucket": self.bucket, "Key": self._key(uuid),
                    "ResponseContentType": _CONTENT_TYPES.get(ext, "application/octet-stream"),
                    "ResponseContentDisposition": f'inline; filename="{uuid}.{ext}"'},
        )  # fmt: skip

    def sweep(self, now: float | None = None) -> int:
        from botocore.exceptions import ClientError

        now = time.time() if now is None else now
        gone = 0
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                try:
                    head = self.s3.head_object(Bucket=self.bucket, Key=item["Key"])
                except ClientError:
                    continue
                obj = _from_meta(item["Key"][len(self.prefix) :], head.get("Metadata", {}))
                if obj is not None and obj.expires_at < now:
                    self.s3.delete_object(Bucket=self.bucket, Key=item["Key"])
                    gone += 1
        return gone


def _from_meta(uuid: str, meta: dict) -> StoredObject | None:
    try:
        return StoredObject(uuid=uuid, owner=meta["owner"], ext=meta["ext"], kind=meta["kind"],
                            expires_at=float(meta["expires-at"]))  # fmt: skip
    except (KeyError, ValueError):
        return None


def _is_uuid_like(s: str) -> bool:
    return isinstance(s, str) and 8 <= len(s) <= 64 and all(c in "0123456789abcdef-" for c in s.lower())


class UrlSigner:
    """HMAC-signed, expiring image links: /v1/images/<uuid>.<ext>?exp=<unix>&sig=<hex>."""

    def __init__(self, secret: bytes, base_url: str, results: ResultStore | None = None):
        self.secret = secret
        self.base_url = base_url.rstrip("/")
        self.results = results  # a store with its own links (S3 presigned URLs) answers `sign` itself

    def sign(self, uuid: str, ext: str, expires_at: float) -> str:
        if self.results is not None:
            link = self.results.presign(uuid, ext, expires_at)
            if link is not None:
                return link
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
