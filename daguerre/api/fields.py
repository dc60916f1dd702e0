"""Reading one protocol's JSON fields into request values, for the prediction doors (eachlabs, Replicate,
ModelsLab): strict readers for typed protocols, lenient ones for protocols whose clients send numbers as
strings and flags as "yes"/"no", and the renaming of the request checks' parameter names into the door's own
(so an error names the field the client sent, not the engine's name for it).
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

from daguerre.errors import DaguerreError, RequestError

_MISSING = object()
YES = ("yes", "true", "1", "on")
NO = ("no", "false", "0", "off", "")


class Fields:
    """One object of client fields; reads each once and can list the ones left unread (unknown fields)."""

    def __init__(self, data: Any, where: str, *, lenient: bool = False):
        if not isinstance(data, dict):
            raise RequestError(f"{where or 'body'} must be a JSON object", parameter=where or None)
        self.data, self.where, self.lenient = data, where, lenient
        self.read: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def raw(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        value = self.data.get(key, _MISSING)
        return default if value is _MISSING or value is None else value

    def present(self, key: str) -> bool:
        return self.data.get(key) is not None

    def text(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self.raw(key)
        if value is None:
            if required:
                raise RequestError(f"{self.name(key)} is required", parameter=self.name(key))
            return default
        if not isinstance(value, str):
            raise RequestError(f"{self.name(key)} must be text, got {value!r}", parameter=self.name(key))
        return value

    def integer(self, key: str, default: int | None = None, *, lo: int | None = None, hi: int | None = None):
        value = self.raw(key)
        if value is None:
            return default
        if self.lenient and isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            value = int(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise RequestError(f"{self.name(key)} must be an integer, got {value!r}", parameter=self.name(key))
        _check_range(self.name(key), value, lo, hi)
        return value

    def number(self, key: str, default: float | None = None, *, lo: float | None = None, hi: float | None = None):
        value = self.raw(key)
        if value is None:
            return default
        if self.lenient and isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RequestError(f"{self.name(key)} must be a number, got {value!r}", parameter=self.name(key))
        _check_range(self.name(key), value, lo, hi)
        return float(value)

    def flag(self, key: str, default: bool | None = None) -> bool | None:
        """true/false; lenient: also "yes"/"no" (any case), "true"/"false", 1/0."""
        value = self.raw(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if self.lenient and isinstance(value, str) and value.strip().lower() in YES + NO:
            return value.strip().lower() in YES
        if self.lenient and value in (0, 1):
            return bool(value)
        allowed = '"yes" or "no" (or true/false)' if self.lenient else "true or false"
        raise RequestError(f"{self.name(key)} must be {allowed}, got {value!r}", parameter=self.name(key))

    def choice(self, key: str, allowed: tuple[str, ...], default: str | None = None) -> str | None:
        value = self.raw(key)
        if value is None:
            return default
        if value not in allowed:
            raise RequestError(f"{self.name(key)} must be one of {', '.join(allowed)}, got {value!r}",
                               parameter=self.name(key))  # fmt: skip
        return value

    def unknown(self) -> list[str]:
        return sorted(set(self.data) - self.read)

    def refuse_unknown(self, what: str) -> None:
        left = self.unknown()
        if left:
            raise RequestError(f"unknown field {self.name(left[0])!r} for {what}", parameter=self.name(left[0]))


def _check_range(name: str, value, lo, hi) -> None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise RequestError(f"{name} must be in [{lo}, {hi}], got {value!r}", parameter=name)


def renamed(error: DaguerreError, names: dict[str, str]) -> DaguerreError:
    """The request check's error with its parameter (and the name in its message) in the door's terms."""
    door = names.get(error.parameter or "")
    if door is None:
        return error
    error.message = re.sub(rf"(?<![\w.]){re.escape(error.parameter)}(?![\w])", door, error.message)
    error.parameter = door
    return error
