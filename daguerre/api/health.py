"""Operator routes: /health/live, /health/ready, the start page at /, and the API explorer at /docs."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse

from daguerre import __version__
from daguerre.api.deps import Services, in_thread

router = APIRouter()


@router.get("/health/live")
async def live():
    return {"status": "live"}


@router.get("/health/ready")
async def ready(services: Services):
    state = services.lifecycle
    workers = await in_thread(live_workers, services)
    models = models_info(services, workers)
    working = any(w.get("ready") and not w.get("draining") for w in workers)
    ok = state["ready"] and not state["draining"] and bool(models) and working
    status = "ready" if ok else "draining" if state["draining"] else "starting" if state["ready"] is False else \
        "no workers"  # fmt: skip
    errors = state.get("preload_errors", []) + [e for w in workers for e in w.get("preload_errors", [])]
    body = {
        "status": status,
        "version": __version__,
        "demo": services.demo,
        "models": models,
        "queued": await in_thread(len, services.jobs.queue),
        "device": workers[0].get("device")
        if len({w.get("device") for w in workers}) == 1
        else [w.get("device") for w in workers],
        "workers": [
            {
                k: w.get(k)
                for k in ("id", "host", "pid", "device", "ready", "busy", "draining", "resident", "done", "images")
            }
            for w in workers
        ],  # fmt: skip
        **({"preload_errors": errors} if errors else {}),
    }
    return JSONResponse(body, status_code=200 if ok else 503)


def live_workers(services) -> list[dict]:
    """The workers heard from lately (heartbeats in the store): this process's own thread or worker processes."""
    if services.worker is not None and not services.lifecycle["draining"]:
        own = services.worker.info(ttl=0)
        return [own, *[w for w in services.store.workers() if w["id"] != own["id"]]]
    return services.store.workers()


def models_info(services, workers: list[dict]) -> list[dict]:
    """Each catalog model as /health/ready lists it: what it is, how it runs, whether it is resident (on which
    workers)."""
    demo = services.demo
    engine = services.engine
    loaded = {m.spec.id: m.applied for m in engine.models.resident()} if engine is not None else {}
    on = {}
    for w in workers:
        for model_id in w.get("resident", []):
            on.setdefault(model_id, []).append(w["id"])
    defaults = services.settings
    out = []
    for s in services.catalog:
        entry = {
            "id": s.id,
            "name": s.name,
            "kind": s.kind,
            "size_bytes": s.size_bytes,
            "aliases": list(s.aliases),
            "profile": s.profile or defaults.profile,
            "offload": s.offload or defaults.offload,
        }
        if s.id in on:
            entry.update(resident=True, workers=on[s.id])
        if s.id in loaded:
            a = loaded[s.id]
            entry.update(resident=True, compiled=a.compiled, fp8=a.fp8, attention=a.attention)
        if s.missing:
            entry.update(available=False, problem=s.missing)
        if demo:
            entry.update(demo=True, note="random weights: images are noise")
        out.append(entry)
    return out


def mount_docs(app: FastAPI) -> None:
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
