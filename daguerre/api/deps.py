"""What the routes share: reading a capped JSON body safely, the error response shape, and running blocking
work in the thread pool without keeping a request's memory alive."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from daguerre.api.intake import HTTP_STATUS, ProtocolError
from daguerre.errors import DaguerreError

if TYPE_CHECKING:
    from daguerre.api.runware import Reply

MAX_JSON_DEPTH = 32  # the deepest task (controlNet entries in a list in a task in the array) is 4 levels
JSON_TYPES = ("application/json",)


def check_json_type(content_type: str | None) -> None:
    """Only JSON bodies: text/plain and form posts are what a web page can send cross-origin without a
    CORS preflight, so accepting them would let any site a user visits run tasks on a keyless server."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in JSON_TYPES and not (media.startswith("application/") and media.endswith("+json")):
        raise ProtocolError(
            f"Content-Type must be application/json, got {content_type or 'none'!r}", code="unsupportedMediaType"
        )


async def read_capped(request: Request, cap: int) -> bytearray:
    """The body in one buffer (no list of chunks joined into a second copy), refused past `cap` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise ProtocolError(f"request body is over the {cap}-byte cap", code="payloadTooLarge")
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > cap:
            raise ProtocolError(f"request body is over the {cap}-byte cap", code="payloadTooLarge")
        body += chunk
    return body


def parse_json(body: bytes | bytearray | str):
    """JSON text -> value, refusing malformed and too deeply nested input with invalidJSON."""
    try:
        value = json.loads(body)
    except RecursionError:
        raise ProtocolError(f"body is nested deeper than {MAX_JSON_DEPTH} levels", code="invalidJSON") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(f"body is not valid JSON: {e}", code="invalidJSON") from None
    if depth(value) > MAX_JSON_DEPTH:
        raise ProtocolError(f"body is nested deeper than {MAX_JSON_DEPTH} levels", code="invalidJSON")
    return value


def parse_tasks(body: bytes | bytearray | str) -> list[dict]:
    """A Runware body: a JSON array of task objects (a single object is accepted too)."""
    tasks = parse_json(body)
    if isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, dict) for t in tasks):
        raise ProtocolError("body must be a non-empty JSON array of task objects", code="invalidJSON")
    return tasks


def depth(value) -> int:
    """Nesting depth of parsed JSON, without recursion (deep values must not exhaust the stack later)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d)
            if d <= MAX_JSON_DEPTH:
                stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def error_response(errors: list[dict], code: str, reply: Reply | None = None) -> JSONResponse:
    """The documented error shape, with the HTTP status of the first error's code."""
    status = HTTP_STATUS.get(code, 400)
    headers = {"Retry-After": "5"} if code == "queueFull" else None
    body = reply.body() if reply else {"errors": errors}
    return JSONResponse(body, status_code=status, headers=headers)


async def in_thread(fn, *args):
    """Run blocking work in the thread pool. A DaguerreError comes back as a value, detached from the worker
    thread's frames, and is raised here: an exception that crosses the pool stays in a reference cycle with
    those frames (and the request body and images in them) until the next full garbage collection."""
    outcome = await run_in_threadpool(_capture, fn, *args)
    if not isinstance(outcome, _Failure):
        return outcome
    error = outcome.error
    try:
        raise error
    finally:
        del error, outcome  # this frame must not hold the exception whose traceback holds this frame


@dataclass
class _Failure:
    error: DaguerreError


def _capture(fn, *args):
    try:
        return fn(*args)
    except DaguerreError as e:
        e.__traceback__ = e.__cause__ = e.__context__ = None
        return _Failure(e)


def get_services(request: Request):
    """The server's daguerre.services.Services (built by services.build_server), as a route dependency."""
    return request.app.state.services


# A route parameter `services: Services` gets the server's services. (Typed Any here: api/ is assembled by
# services.py, so importing it would make a cycle.)
Services = Annotated[Any, Depends(get_services)]
