"""Errors a user can act on: a code from a documented list, a message, and the parameter.

Every protocol adapter (CLI, task API) maps these to its own shape; the codes are listed in
docs/api.md. Nothing here knows about HTTP.
"""

from __future__ import annotations


class DaguerreError(Exception):
    """Base class: carries a stable error code and, where it applies, the offending parameter."""

    code = "internalError"

    def __init__(self, message: str, *, parameter: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.parameter = parameter
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class RequestError(DaguerreError):
    """A request field is missing, malformed or out of range."""

    code = "invalidParameter"


class UnsupportedError(DaguerreError):
    """A field or file is understood but its feature is not built yet."""

    code = "unsupportedParameter"


class ImageInputError(RequestError):
    """An input image could not be accepted (format, size, corruption)."""

    code = "invalidImage"


class ModelNotFoundError(DaguerreError):
    """The model id is not in the catalog and is not a path to a loadable model."""

    code = "modelNotFound"


class ModelLoadError(DaguerreError):
    """A model file or folder exists but cannot be loaded as a FLUX.1 model."""

    code = "modelLoadFailed"


class Cancelled(DaguerreError):  # noqa: N818 - it is an outcome, not a failure
    """Generation was cancelled between two denoising steps."""

    code = "cancelled"


class OutOfMemory(DaguerreError):  # noqa: N818
    """The device ran out of memory for this request; the worker survives."""

    code = "outOfMemory"
