"""The HTTP/WebSocket application: `create_app(services)` mounts the routes on what services.py built.

Start-up re-queues unfinished jobs where the queue is not durable (and upgrades ones an older Daguerre
stored), starts the worker (a thread here, or serve's worker processes), the change feed watch, the sweeper and
the preloads; shutdown drains (no new tasks, the running jobs finish) and stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from daguerre import __version__
from daguerre.api import eachlabs, health, metrics, modelslab, replicate, rest, studio, ws
from daguerre.api.deps import error_response, in_thread
from daguerre.api.intake import ProtocolError
from daguerre.api.runware import error_item
from daguerre.errors import DaguerreError
from daguerre.jobs.store import backend_errors

if TYPE_CHECKING:
    from daguerre.services import Services

log = logging.getLogger("daguerre.api")


def create_app(services: Services) -> FastAPI:
    """The app around a server's services (services.build_server)."""
    server = services.settings.server

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # 1. Recover jobs from before a restart, then start working.
        requeued = services.jobs.recover(upgrade=services.runware.upgrade)
        if requeued:
            log.info("re-queued %d unfinished jobs", requeued)
        unwatch = services.jobs.watch()
        if services.worker is not None:
            services.worker.start()
            loader = asyncio.create_task(_preload(services, server.preload))
        else:  # the workers preload; readiness comes from their heartbeats
            if services.pool is not None:
                services.pool.start()
            services.lifecycle["ready"] = True
            loader = None
        sweeper = asyncio.create_task(_sweep_forever(services.results, server.sweep_interval_s))
        yield
        if loader is not None:
            loader.cancel()
        # 2. Drain: refuse new tasks, let the running jobs finish (bounded), stop.
        services.lifecycle["draining"] = True
        sweeper.cancel()
        if services.worker is not None:
            finished = await run_in_threadpool(services.worker.stop, server.drain_timeout_s)
        else:
            finished = services.pool is None or await run_in_threadpool(services.pool.stop, server.drain_timeout_s)
        if not finished:
            log.warning("drain timeout: the running job is left to be re-queued at next start")
        unwatch()
        services.close()

    app = FastAPI(
        title="Daguerre",
        version=__version__,
        lifespan=lifespan,
        description="Image inference for FLUX.1 models through four protocols on one job service: the Runware "
        "task API (POST /v1, WebSocket /v1), eachlabs predictions (/v1/prediction), Replicate predictions "
        "(/v1/predictions) and the ModelsLab image API (/api/v6/images/). Field mappings: docs/api.md.",
        docs_url=None,  # served by health.mount_docs from the package's own copy of Swagger UI: works offline
        redoc_url=None,
    )
    app.state.services = services
    app.state.sessions = {}  # WebSocket sessions by connectionSessionUUID (ws.py)
    if server.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=server.cors_origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type"])  # fmt: skip
    health.mount_docs(app)
    for module in (studio, health, metrics, rest, ws, eachlabs, replicate, modelslab):  # studio first: it serves "/"
        app.include_router(module.router)
    studio.mount(app)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ())[1:]) or None
        e = ProtocolError(f"{where or 'request'}: {first.get('msg', 'invalid')}", parameter=where,
                          code="invalidParameter")  # fmt: skip
        return error_response([error_item(e, None)], e.code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "notFound", 405: "methodNotAllowed"}.get(exc.status_code, "invalidRequest")
        message = "no such endpoint" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse({"errors": [{"code": code, "message": message}]}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))  # fmt: skip

    for kind in backend_errors():

        @app.exception_handler(kind)
        async def backend_away(request: Request, exc: Exception):
            log.warning("job store or queue unreachable: %s", exc)
            message = "the job store is unreachable for a moment (a restart?); send the same request again"
            return JSONResponse({"errors": [{"code": "serviceUnavailable", "message": message}]}, status_code=503,
                                headers={"Retry-After": "2"})  # fmt: skip

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


async def _preload(services: Services, refs: list[str]) -> None:
    """Load (and compile, per the profile) the `server.preload` models, then report ready.

    Runs beside the server so /health/live answers at once; /health/ready says "starting" until
    every listed model is resident. A model that fails to load is logged with its error (requests
    for it will get that error) and does not keep the server from becoming ready.
    """
    state = services.lifecycle
    for ref in refs:
        t0 = time.perf_counter()
        try:
            await in_thread(_lease_once, services.engine, ref)
            log.info("preloaded %s in %.1f s", ref, time.perf_counter() - t0)
        except DaguerreError as e:
            state.setdefault("preload_errors", []).append({"model": ref, "code": e.code, "message": e.message})
            log.error("preload of %s failed: %s", ref, e.message)
    state["ready"] = True


def _lease_once(engine, ref: str) -> None:
    with engine.models.lease(ref):
        pass
