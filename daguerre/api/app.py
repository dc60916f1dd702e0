"""The HTTP/WebSocket application: `create_app(settings)` wires store, queue, worker and routes.

Routes are thin: they parse, hand the task to `Protocol`, and shape the reply.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from daguerre import __version__
from daguerre.api.keys import KeyStore
from daguerre.api.runware import (
    HTTP_STATUS,
    TASK_TYPES,
    Protocol,
    ProtocolError,
    Reply,
    delivery_of,
    error_item,
)
from daguerre.api.schema import openapi_tasks_schema
from daguerre.config import Settings
from daguerre.engine.generate import Engine
from daguerre.engine.worker import Worker
from daguerre.errors import DaguerreError
from daguerre.jobs.characters import CharacterStore
from daguerre.jobs.delivery import DeliveryService, derived_webhook_secret
from daguerre.jobs.outbound import OutboundClient, OutboundPolicy
from daguerre.jobs.queue import InProcessQueue
from daguerre.jobs.service import JobService
from daguerre.jobs.store import Job, SQLiteJobStore
from daguerre.storage import CONTENT_TYPES, LocalResultStore, UrlSigner

log = logging.getLogger("daguerre.api")


@dataclass
class Session:
    """A WebSocket session: survives a disconnect so a reconnect gets undelivered results."""

    owner: str
    pending: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # sync job -> imageUUIDs delivered
    last_seen: float = field(default_factory=time.time)


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_secret(data_dir: Path) -> bytes:
    """The server's own secret (image-link signatures, webhook secrets), made once per data folder."""
    return _url_secret(data_dir)


def _url_secret(data_dir: Path) -> bytes:
    path = data_dir / "url-secret"
    if not path.exists():
        path.write_bytes(secrets.token_bytes(32))
        path.chmod(0o600)
    return path.read_bytes()


def create_app(settings: Settings, *, engine: Engine, demo: bool = False) -> FastAPI:
    """Build the app around an engine. Start-up re-queues unfinished jobs and starts the worker."""
    server = settings.server
    data = server.data_dir
    data.mkdir(parents=True, exist_ok=True)
    store = SQLiteJobStore(data / "jobs.sqlite3")
    jobs = JobService(store=store, queue=InProcessQueue(server.max_queue))
    results = LocalResultStore(data / "images")
    keys = KeyStore(data / "keys.sqlite3", extra_keys=server.api_keys)
    characters = CharacterStore(data / "jobs.sqlite3")
    public = server.public_url or f"http://{server.host}:{server.port}"
    secret_key = _url_secret(data)
    signer = UrlSigner(secret_key, public)
    outbound = OutboundClient(OutboundPolicy(allow_loopback=server.outbound_allow_loopback))
    deliveries = DeliveryService(outbound=outbound, retry_schedule=server.webhook_retry_schedule)
    anonymous = server.allow_anonymous
    if anonymous is None:
        anonymous = is_loopback(server.host) and keys.count() == 0
    state = {"draining": False, "ready": False}
    protocol = Protocol(
        settings=settings,
        jobs=jobs,
        results=results,
        signer=signer,
        keys=keys,
        anonymous=anonymous,
        is_draining=lambda: state["draining"],
        outbound=outbound,
        catalog=engine.models.catalog,
        characters=characters,
    )

    def deliver(job: Job, result: dict | None) -> None:
        """Webhook each result (or the job's error) and PUT each image to uploadEndpoint."""
        d = delivery_of(job)
        if d.webhook_url:
            payload = None
            if result is not None:
                payload = {"data": protocol.items(job, d, with_status=False, only_new={result["imageUUID"]})}
            elif job.status == "error":
                payload = {"errors": [protocol.job_error(job)]}
            if payload:
                secret = derived_webhook_secret(secret_key, job.owner)
                deliveries.webhook(d.webhook_url, payload, secret=secret, task_uuid=job.task_uuid)
        if d.upload_endpoint and result is not None:
            found = results.get(result["imageUUID"], job.owner)
            if found is not None:
                deliveries.upload(d.upload_endpoint, found[1], CONTENT_TYPES[found[0].ext], task_uuid=job.task_uuid)

    worker = Worker(
        engine=engine,
        jobs=jobs,
        results=results,
        resolver_for=protocol.resolver_for,
        characters_for=protocol.characters_for,
        default_ttl=server.default_ttl,
        on_result=deliver,
    )
    sessions: dict[str, Session] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # 1. Recover jobs from before a restart, then start working.
        requeued = jobs.recover()
        if requeued:
            log.info("re-queued %d unfinished jobs", requeued)
        worker.start()
        sweeper = asyncio.create_task(_sweep_forever(results, server.sweep_interval_s))
        loader = asyncio.create_task(_preload(engine, server.preload, state))
        yield
        loader.cancel()
        # 2. Drain: refuse new tasks, let the running job finish (bounded), stop.
        state["draining"] = True
        sweeper.cancel()
        finished = await run_in_threadpool(worker.stop, server.drain_timeout_s)
        if not finished:
            log.warning("drain timeout: the running job is left to be re-queued at next start")
        deliveries.stop()
        store.close()

    app = FastAPI(
        title="Daguerre",
        version=__version__,
        lifespan=lifespan,
        description="Runware-compatible image inference for FLUX.1 models (see docs/api.md).",
        docs_url=None,  # served below from the package's own copy of Swagger UI: no CDN, works offline
        redoc_url=None,
    )
    _mount_docs(app)
    if server.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=server.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])  # fmt: skip
    app.state.protocol, app.state.worker, app.state.jobs = protocol, worker, jobs
    app.state.deliveries, app.state.secret_key, app.state.lifecycle = deliveries, secret_key, state

    def models_info() -> list[dict]:
        loaded = {m.spec.id: m.applied for m in engine.models.resident()}
        return [
            {
                "id": s.id,
                "name": s.name,
                "kind": s.kind,
                "aliases": list(s.aliases),
                "profile": s.profile or engine.models.profile,
                "offload": s.offload or engine.models.offload,
                **(
                    {
                        "resident": True,
                        "compiled": loaded[s.id].compiled,
                        "fp8": loaded[s.id].fp8,
                        "attention": loaded[s.id].attention,
                    }
                    if s.id in loaded
                    else {}
                ),
                **({"demo": True, "note": "random weights: images are noise"} if demo else {}),
            }
            for s in engine.models.catalog
        ]

    @app.get("/health/live")
    async def live():
        return {"status": "live"}

    @app.get("/health/ready")
    async def ready():
        models = models_info()
        ok = state["ready"] and not state["draining"] and bool(models)
        body = {
            "status": "ready" if ok else ("draining" if state["draining"] else "starting"),
            "version": __version__,
            "demo": demo,
            "models": models,
            "queued": len(jobs.queue),
            "device": str(engine.models.device),
            **({"preload_errors": state["preload_errors"]} if state.get("preload_errors") else {}),
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(_index_page(len(engine.models.catalog), demo))

    @app.get("/v1/images/{name}")
    async def image(name: str, exp: str = "0", sig: str = ""):
        # exp and sig are read as text and checked by the signer: a malformed link is a 404 like any bad link.
        image_uuid, _, ext = name.partition(".")
        if not signer.check(image_uuid, exp, sig):
            return JSONResponse(
                {"errors": [{"code": "notFound", "message": "no such image or link expired"}]}, status_code=404
            )
        found = results.get(image_uuid, None)
        if found is None or found[0].ext != ext:
            return JSONResponse(
                {"errors": [{"code": "notFound", "message": "no such image or link expired"}]}, status_code=404
            )
        return Response(found[1], media_type=CONTENT_TYPES[ext], headers={"Cache-Control": "private, max-age=3600"})

    @app.post(
        "/v1",
        summary="Run tasks (JSON array of Runware tasks)",
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": openapi_tasks_schema()}}},
            "responses": {
                "200": {"description": '{"data": [result items]} and, for failed tasks, "errors"'},
                "400": {"description": '{"errors": [{"code", "message", "parameter", "taskType", "taskUUID"}]}'},
                "401": {"description": "missingApiKey / invalidApiKey"},
                "404": {"description": "taskNotFound / imageNotFound"},
                "413": {"description": "payloadTooLarge"},
                "429": {"description": "queueFull (Retry-After)"},
                "503": {"description": "serverShuttingDown"},
            },
        },
    )
    async def rest(request: Request):
        # 1. Body: JSON typed, capped, a list of task objects.
        try:
            _check_json_type(request.headers.get("content-type"))
            body = await _read_capped(request, server.max_body_bytes)
            tasks = _parse_tasks(body)
            del body
        except ProtocolError as e:
            return _error_response([error_item(e, None)], e.code)
        # 2. Authentication: Bearer header, or a leading authentication task.
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else None
        if tasks and tasks[0].get("taskType") == "authentication":
            key = key or tasks[0].get("apiKey")
        try:
            owner = protocol.authenticate(key)
        except ProtocolError as e:
            return _error_response([error_item(e, tasks[0] if tasks else None)], e.code)
        # 3. Each task in order; errors are per task.
        reply = Reply([], [])
        for task in tasks:
            try:
                await _rest_task(protocol, server.sync_wait_s, owner, task, reply)
            except DaguerreError as e:
                reply.errors.append(error_item(e, task))
        code = reply.errors[0]["code"] if reply.errors and not reply.data else None
        return _error_response(reply.errors, code, reply) if code else JSONResponse(reply.body())

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ())[1:]) or None
        e = ProtocolError(f"{where or 'request'}: {first.get('msg', 'invalid')}", parameter=where,
                          code="invalidParameter")  # fmt: skip
        return _error_response([error_item(e, None)], e.code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "notFound", 405: "methodNotAllowed"}.get(exc.status_code, "invalidRequest")
        message = "no such endpoint" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse({"errors": [{"code": code, "message": message}]}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))  # fmt: skip

    @app.websocket("/v1")
    async def ws(websocket: WebSocket):
        if not _origin_allowed(websocket.headers, server.cors_origins):
            # Browsers open WebSockets across origins without asking: only this server's own pages (and the
            # configured origins) may, or any site a user visits could use a keyless local server.
            await websocket.close(code=1008, reason="origin not allowed")
            return
        await websocket.accept()
        conn = _Connection(websocket, protocol, sessions, server)
        try:
            await conn.serve()
        finally:
            conn.close()

    return app


async def _sweep_forever(results, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            n = await run_in_threadpool(results.sweep)
            if n:
                log.info("swept %d expired images", n)
        except Exception:  # noqa: BLE001 - the sweeper must not die
            log.exception("sweep failed")


async def _read_capped(request: Request, cap: int) -> bytearray:
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


JSON_TYPES = ("application/json",)


def _check_json_type(content_type: str | None) -> None:
    """Only JSON bodies: text/plain and form posts are what a web page can send cross-origin without a
    CORS preflight, so accepting them would let any site a user visits run tasks on a keyless server."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in JSON_TYPES and not (media.startswith("application/") and media.endswith("+json")):
        raise ProtocolError(
            f"Content-Type must be application/json, got {content_type or 'none'!r}", code="unsupportedMediaType"
        )


MAX_JSON_DEPTH = 32  # the deepest task (controlNet entries in a list in a task in the array) is 4 levels


def _parse_tasks(body: bytes | bytearray | str) -> list[dict]:
    try:
        tasks = json.loads(body)
    except RecursionError:
        raise ProtocolError(f"body is nested deeper than {MAX_JSON_DEPTH} levels", code="invalidJSON") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(f"body is not valid JSON: {e}", code="invalidJSON") from None
    if _depth(tasks) > MAX_JSON_DEPTH:
        raise ProtocolError(f"body is nested deeper than {MAX_JSON_DEPTH} levels", code="invalidJSON")
    if isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, dict) for t in tasks):
        raise ProtocolError("body must be a non-empty JSON array of task objects", code="invalidJSON")
    return tasks


def _depth(value) -> int:
    """Nesting depth of parsed JSON, without recursion (deep values must not exhaust the stack later)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d)
            if d <= MAX_JSON_DEPTH:
                stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


async def _in_thread(fn, *args):
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


async def _preload(engine: Engine, refs: list[str], state: dict) -> None:
    """Load (and compile, per the profile) the `server.preload` models, then report ready.

    Runs beside the server so /health/live answers at once; /health/ready says "starting" until
    every listed model is resident. A model that fails to load is logged with its error (requests
    for it will get that error) and does not keep the server from becoming ready.
    """
    for ref in refs:
        t0 = time.perf_counter()
        try:
            await _in_thread(_lease_once, engine, ref)
            log.info("preloaded %s in %.1f s", ref, time.perf_counter() - t0)
        except DaguerreError as e:
            state.setdefault("preload_errors", []).append({"model": ref, "code": e.code, "message": e.message})
            log.error("preload of %s failed: %s", ref, e.message)
    state["ready"] = True


def _lease_once(engine: Engine, ref: str) -> None:
    with engine.models.lease(ref):
        pass


def _mount_docs(app: FastAPI) -> None:
    """/docs: Swagger UI from the swagger-ui-bundle package (FastAPI's default loads it from a CDN)."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from starlette.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs/assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="Daguerre API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
        )


def _origin_allowed(headers, allowed: list[str]) -> bool:
    """A WebSocket without Origin (SDKs, scripts), from this server's own origin, or from a configured one."""
    origin = headers.get("origin")
    if origin is None:
        return True
    if origin in allowed or "*" in allowed:
        return True
    host = headers.get("host", "")
    return origin.lower() in (f"http://{host}".lower(), f"https://{host}".lower())


def _index_page(models: int, demo: bool) -> str:
    note = " (demo model: random weights, images are noise)" if demo else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Daguerre</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: system-ui, sans-serif; max-width: 42rem; margin: 3rem auto; line-height: 1.5">
<h1>Daguerre</h1>
<p>Photoreal FLUX.1 image generation. This server holds {models} model(s){note}.</p>
<ul>
<li><a href="/docs">API explorer</a> (OpenAPI: <a href="/openapi.json">/openapi.json</a>)</li>
<li><a href="/health/ready">/health/ready</a>: models, queue, device</li>
<li>Task API: <code>POST /v1</code> (JSON array of tasks) and the WebSocket <code>/v1</code>,
compatible with the official Runware SDKs</li>
<li>Reference: <code>docs/api.md</code> in the Daguerre source tree</li>
</ul>
</body></html>"""


def _error_response(errors: list[dict], code: str, reply: Reply | None = None) -> JSONResponse:
    status = HTTP_STATUS.get(code, 400)
    headers = {"Retry-After": "5"} if code == "queueFull" else None
    body = reply.body() if reply else {"errors": errors}
    return JSONResponse(body, status_code=status, headers=headers)


def _check_task_type(task: dict) -> str:
    task_type = task.get("taskType")
    if task_type not in TASK_TYPES:
        raise ProtocolError(
            f"taskType {task_type!r} is not supported; supported: {', '.join(TASK_TYPES)}",
            parameter="taskType",
            code="unsupportedTaskType",
        )
    return task_type


async def _rest_task(protocol: Protocol, sync_wait: float, owner: str, task: dict, reply: Reply) -> None:
    task_type = _check_task_type(task)
    if task_type == "authentication":
        return
    if task_type == "ping":
        reply.data.append({"taskType": "ping", "pong": True})
    elif task_type == "imageUpload":
        reply.data.append(await _in_thread(protocol.upload, owner, task))
    elif task_type == "promptEnhance":
        reply.data.extend(protocol.prompt_enhance(task))
    elif task_type == "getResponse":
        job, delivery = await _in_thread(protocol.lookup, owner, task)
        _add_job(protocol, job, delivery, reply, with_status=True)
    else:
        job, delivery = await _in_thread(protocol.submit, owner, task)
        if delivery.method == "async":
            reply.data.append({"taskType": job.task_type, "taskUUID": job.task_uuid, "status": "processing"})
            return
        job = await protocol.wait(job, sync_wait)
        # Past the wait cap the task goes on async: processing items tell the client to poll getResponse.
        _add_job(protocol, job, delivery, reply, with_status=not job.done)


def _add_job(protocol: Protocol, job: Job, delivery, reply: Reply, *, with_status: bool) -> None:
    if job.status == "error":
        reply.errors.append(protocol.job_error(job))
    else:
        reply.data.extend(protocol.items(job, delivery, with_status=with_status))


class _Connection:
    """One WebSocket connection: authentication state, its session, its streaming tasks."""

    def __init__(self, websocket: WebSocket, protocol: Protocol, sessions: dict[str, Session], server):
        self.ws = websocket
        self.protocol = protocol
        self.sessions = sessions
        self.server = server
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
                tasks = _parse_tasks(text)
            except ProtocolError as e:
                await self.send({"errors": [error_item(e, None)]})
                continue
            del text, message
            for task in tasks:
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
        task_type = _check_task_type(task)
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
        owner = session.owner
        if task_type == "imageUpload":
            item = await _in_thread(self.protocol.upload, owner, task)
            return await self.send({"data": [item]})
        if task_type == "promptEnhance":
            return await self.send({"data": self.protocol.prompt_enhance(task)})
        if task_type == "getResponse":
            job, delivery = await _in_thread(self.protocol.lookup, owner, task)
            if job.status == "error":
                return await self.send({"errors": [self.protocol.job_error(job)]})
            return await self.send({"data": self.protocol.items(job, delivery, with_status=True)})
        job, delivery = await _in_thread(self.protocol.submit, owner, task)
        if delivery.method == "async":
            return await self.send(
                {"data": [{"taskType": job.task_type, "taskUUID": job.task_uuid, "status": "processing"}]}
            )
        session.pending.setdefault(job.key, set())
        self.stream(job, delivery)

    def stream(self, job: Job, delivery) -> None:
        """Push each image of a sync job as it is stored, then forget the job."""

        async def run():
            async def on_change(current: Job) -> None:
                session = self.session
                delivered = session.pending.get(job.key, set()) if session else set()
                new = {r["imageUUID"] for r in current.results} - delivered
                if new:
                    items = self.protocol.items(current, delivery, with_status=False, only_new=new)
                    await self.send({"data": items})
                    delivered |= new
                if current.status == "error":
                    await self.send({"errors": [self.protocol.job_error(current)]})
                if current.done and session:
                    session.pending.pop(job.key, None)

            await self.protocol.wait(job, float("inf"), on_change)

        t = asyncio.create_task(run())
        self.streams.add(t)
        t.add_done_callback(self.streams.discard)

    async def authenticate(self, task: dict) -> None:
        try:
            owner = self.protocol.authenticate(task.get("apiKey"))
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
                job = self.protocol.jobs.get(*key)
                if job is not None:
                    self.stream(job, delivery_of(job))

    def close(self) -> None:
        for t in list(self.streams):
            t.cancel()
        # Sessions idle for a day are forgotten.
        cutoff = time.time() - 86400
        for sid in [s for s, v in self.sessions.items() if v.last_seen < cutoff]:
            self.sessions.pop(sid, None)
