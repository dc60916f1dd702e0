"""WebSocket /v1: Runware tasks over one connection, with sessions that survive a reconnect.

A sync imageInference streams each image as it is stored; a reconnect that names its
connectionSessionUUID gets what the previous connection missed, and the stream goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from daguerre.api.deps import in_thread, parse_tasks
from daguerre.api.intake import ProtocolError
from daguerre.api.runware import Running, check_task_type, error_item
from daguerre.errors import DaguerreError
from daguerre.jobs.store import Job

log = logging.getLogger("daguerre.api")
router = APIRouter()
SESSION_DAYS = 1  # sessions idle this long are forgotten


@dataclass
class Session:
    """A WebSocket session: survives a disconnect so a reconnect gets undelivered results."""

    owner: str
    pending: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # sync job -> imageUUIDs delivered
    last_seen: float = field(default_factory=time.time)


@router.websocket("/v1")
async def tasks(websocket: WebSocket):
    services = websocket.app.state.services
    if not origin_allowed(websocket.headers, services.settings.server.cors_origins):
        # Browsers open WebSockets across origins without asking: only this server's own pages (and the
        # configured origins) may, or any site a user visits could use a keyless local server.
        await websocket.close(code=1008, reason="origin not allowed")
        return
    await websocket.accept()
    conn = Connection(websocket, services, websocket.app.state.sessions)
    try:
        await conn.serve()
    finally:
        conn.close()


def origin_allowed(headers, allowed: list[str]) -> bool:
    """A WebSocket without Origin (SDKs, scripts), from this server's own origin, or from a configured one."""
    origin = headers.get("origin")
    if origin is None:
        return True
    if origin in allowed or "*" in allowed:
        return True
    host = headers.get("host", "")
    return origin.lower() in (f"http://{host}".lower(), f"https://{host}".lower())


class Connection:
    """One WebSocket connection: authentication state, its session, its streaming tasks."""

    def __init__(self, websocket: WebSocket, services, sessions: dict[str, Session]):
        self.ws = websocket
        self.runware = services.runware
        self.intake = services.intake
        self.server = services.settings.server
        self.sessions = sessions
        self.session_id: str | None = None
        self.streams: set[asyncio.Task] = set()
        self.send_lock = asyncio.Lock()

    async def send(self, body: dict) -> None:
        async with self.send_lock:
            await self.ws.send_text(json.dumps(body))

    async def serve(self) -> None:
        while True:
            try:
                message = await asyncio.wait_for(self.ws.receive(), self.server.ws_idle_timeout_s)
            except (TimeoutError, WebSocketDisconnect):
                return
            except RuntimeError:  # receive after close
                return
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:  # a binary frame: JSON as UTF-8 bytes is accepted too
                text = message.get("bytes") or b""
            if len(text) > self.server.max_body_bytes:
                e = ProtocolError(f"message is over the {self.server.max_body_bytes}-byte cap", code="payloadTooLarge")
                await self.send({"errors": [error_item(e, None)]})
                continue
            try:
                batch = parse_tasks(text)
            except ProtocolError as e:
                await self.send({"errors": [error_item(e, None)]})
                continue
            del text, message
            for task in batch:
                try:
                    await self.handle(task)
                except DaguerreError as e:
                    await self.send({"errors": [error_item(e, task)]})
                except (WebSocketDisconnect, RuntimeError):
                    return
                except Exception:  # noqa: BLE001 - one task's bug must not drop the connection
                    log.exception("task %s failed inside the server", task.get("taskUUID"))
                    e = DaguerreError("the task failed inside the server; see its log")
                    await self.send({"errors": [error_item(e, task)]})

    @property
    def session(self) -> Session | None:
        return self.sessions.get(self.session_id) if self.session_id else None

    async def handle(self, task: dict) -> None:
        task_type = check_task_type(task)
        if task_type == "authentication":
            return await self.authenticate(task)
        if task_type == "ping":
            return await self.send({"data": [{"taskType": "ping", "pong": True}]})
        session = self.session
        if session is None:
            raise ProtocolError(
                "authenticate first: send an authentication task with your apiKey",
                parameter="apiKey",
                code="missingApiKey",
            )
        session.last_seen = time.time()
        outcome = await in_thread(self.runware.handle, session.owner, task)
        if isinstance(outcome, Running):
            session.pending.setdefault(outcome.job.key, set())
            self.stream(outcome.job)
            return
        await self.send(outcome.body())

    def stream(self, job: Job) -> None:
        """Push each image of a sync job as it is stored, then forget the job."""

        async def run():
            async def on_change(current: Job) -> None:
                session = self.session
                delivered = session.pending.get(job.key, set()) if session else set()
                new = {r["imageUUID"] for r in current.results} - delivered
                if new:
                    await self.send({"data": self.runware.items(current, with_status=False, only_new=new)})
                    delivered |= new
                if current.status == "error":
                    await self.send({"errors": [self.runware.job_error(current)]})
                if current.done and session:
                    session.pending.pop(job.key, None)

            await self.intake.wait(job, float("inf"), on_change)

        t = asyncio.create_task(run())
        self.streams.add(t)
        t.add_done_callback(self.streams.discard)

    async def authenticate(self, task: dict) -> None:
        try:
            owner = self.intake.authenticate(task.get("apiKey"))
        except ProtocolError as e:
            await self.send(
                {"errors": [error_item(e, {"taskType": "authentication", "taskUUID": task.get("taskUUID")})]}
            )
            return
        wanted = task.get("connectionSessionUUID")
        resumed = self.sessions.get(wanted) if isinstance(wanted, str) else None
        if resumed is not None and resumed.owner == owner:
            self.session_id = wanted
        else:
            self.session_id = str(uuid.uuid4())
            self.sessions[self.session_id] = Session(owner=owner)
            resumed = None
        await self.send({"data": [{"taskType": "authentication", "connectionSessionUUID": self.session_id}]})
        if resumed is not None:  # deliver what the previous connection missed, and keep streaming
            for key in list(resumed.pending):
                job = self.intake.jobs.get(*key)
                if job is not None:
                    self.stream(job)

    def close(self) -> None:
        for t in list(self.streams):
            t.cancel()
        cutoff = time.time() - SESSION_DAYS * 86400
        for sid in [s for s, v in self.sessions.items() if v.last_seen < cutoff]:
            self.sessions.pop(sid, None)
