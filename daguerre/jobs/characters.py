"""Saved characters: an anchor text and a locked seed (plus an optional reference image), per API key.

A request naming a character gets the anchor prepended to its prompt and the character's seed, the
two things the photoreal guides say consistency needs ("a locked seed and a stable character anchor").
They live in the job store's SQLite file, in their own table, keyed by (owner, name).
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from daguerre.errors import RequestError
from daguerre.request import check_text

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_ANCHOR = 1000


@dataclass(frozen=True)
class Character:
    name: str
    anchor: str  # physical description prepended to every prompt that names the character
    seed: int  # locked seed: the noise starts from the same point every time
    reference_image: bytes | None = None  # encoded image kept for identity features (PuLID/IP-Adapter)
    created_at: float = 0.0

    def apply(self, prompt: str) -> str:
        """The prompt with the anchor first (a prompt that already starts with it is left alone)."""
        prompt = prompt.strip()
        return prompt if prompt.startswith(self.anchor) else f"{self.anchor}, {prompt}"

    def resolve(self, prompt: str, seed: int | None) -> tuple[str, int]:
        """(prompt with the anchor, the locked seed); a request's own different seed is an error."""
        if seed is not None and seed != self.seed:
            raise RequestError(
                f"character {self.name!r} locks seed {self.seed}; omit seed or send that one", parameter="seed"
            )
        return self.apply(prompt), self.seed


def check(name: str, anchor: str, seed: int) -> None:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise RequestError(
            f"character name {name!r} must be 1-64 letters, digits, '_', '.', '-' (starting with a letter or digit)",
            parameter="character",
        )
    if not isinstance(anchor, str) or not 2 <= len(anchor.strip()) <= MAX_ANCHOR:
        raise RequestError(f"character anchor must be 2-{MAX_ANCHOR} characters of text", parameter="anchor")
    check_text("anchor", anchor)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise RequestError(f"character seed must be an integer in [0, 2^63), got {seed!r}", parameter="seed")


class Characters(Protocol):
    """Saved characters per owner. The SQLite implementation is the embedded default; a shared
    backend (Redis, for several servers) implements the same four calls."""

    def put(self, owner: str, character: Character) -> Character:
        """Save or replace; validates name, anchor and seed."""

    def get(self, owner: str, name: str) -> Character:
        """The character, or RequestError (parameter `character`) when this owner has none of that name."""

    def list(self, owner: str) -> list[Character]:
        """This owner's characters, by name."""

    def delete(self, owner: str, name: str) -> bool:
        """True if it existed."""


class CharacterStore:
    """Characters in SQLite (the job store's file by default), isolated per owner (API key id)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute(
            """CREATE TABLE IF NOT EXISTS characters (
                owner TEXT NOT NULL, name TEXT NOT NULL, anchor TEXT NOT NULL, seed INTEGER NOT NULL,
                reference_image BLOB, created_at REAL NOT NULL, PRIMARY KEY (owner, name))"""
        )
        self._lock = threading.Lock()

    def put(self, owner: str, character: Character) -> Character:
        """Save (or replace) a character."""
        check(character.name, character.anchor, character.seed)
        c = Character(character.name, character.anchor.strip(), character.seed, character.reference_image, time.time())
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO characters VALUES (?,?,?,?,?,?)",
                (owner, c.name, c.anchor, c.seed, c.reference_image, c.created_at),
            )
        return c

    def get(self, owner: str, name: str) -> Character:
        with self._lock:
            row = self._db.execute(
                "SELECT name, anchor, seed, reference_image, created_at FROM characters WHERE owner=? AND name=?",
                (owner, name),
            ).fetchone()
        if row is None:
            raise RequestError(f"no character named {name!r} for this API key", parameter="character")
        return Character(*row)

    def list(self, owner: str) -> list[Character]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, anchor, seed, reference_image, created_at FROM characters WHERE owner=? ORDER BY name",
                (owner,),
            ).fetchall()
        return [Character(*r) for r in rows]

    def delete(self, owner: str, name: str) -> bool:
        with self._lock:
            cur = self._db.execute("DELETE FROM characters WHERE owner=? AND name=?", (owner, name))
        return cur.rowcount > 0

    def close(self) -> None:
        with self._lock:
            self._db.close()
