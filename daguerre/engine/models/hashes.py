"""Weight hashes for recipes: sha256 of weight files, cached by (path, size, mtime) so a 24 GB file is read once."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path

from daguerre.engine.models.catalog import ModelSpec
from daguerre.errors import ModelLoadError

log = logging.getLogger(__name__)


class HashCache:
    """sha256 of weight files, remembered by (path, size, mtime) so a 24 GB file is read once."""

    def __init__(self, folder: Path):
        self.path = folder / "hashes.json"
        self._lock = threading.Lock()

    def sha256(self, files: list[Path]) -> str:
        digests = [self._file(f) for f in sorted(files)]
        if len(digests) == 1:
            return digests[0]
        return hashlib.sha256("".join(digests).encode()).hexdigest()

    def _file(self, f: Path) -> str:
        st = f.stat()
        key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        with self._lock:
            cache = self._read()
            if key in cache:
                return cache[key]
        h = hashlib.sha256()
        with f.open("rb") as fh:
            while chunk := fh.read(16 * 2**20):
                h.update(chunk)
        digest = h.hexdigest()
        with self._lock:
            cache = self._read()
            cache[key] = digest
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(cache, indent=0))
                tmp.replace(self.path)
            except OSError as e:  # a read-only cache folder only costs re-hashing
                log.warning("cannot write hash cache %s: %s", self.path, e)
        return digest

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}


def transformer_files(spec: ModelSpec) -> list[Path]:
    if spec.format == "single-file":
        return [spec.path]
    files = sorted((spec.path / "transformer").glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{spec.path}/transformer has no .safetensors weights", parameter="model")
    return files
