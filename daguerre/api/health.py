"""Operator routes: /health/live, /health/ready, the start page at /, and the API explorer at /docs."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse

from daguerre import __version__
from daguerre.api.deps import Services

router = APIRouter()


@router.get("/health/live")
async def live():
    return {"status": "live"}


@router.get("/health/ready")
async def ready(services: Services):
    state = services.lifecycle
    models = models_info(services)
    ok = state["ready"] and not state["draining"] and bool(models)
    body = {
        "status": "ready" if ok else ("draining" if state["draining"] else "starting"),
        "version": __version__,
        "demo": services.demo,
        "models": models,
        "queued": len(services.jobs.queue),
        "device": str(services.engine.models.device),
        **({"preload_errors": state["preload_errors"]} if state.get("preload_errors") else {}),
    }
    return JSONResponse(body, status_code=200 if ok else 503)


def models_info(services) -> list[dict]:
    """Each catalog model as /health/ready lists it: what it is, how it runs, whether it is resident."""
    models = services.engine.models
    demo = services.demo
    loaded = {m.spec.id: m.applied for m in models.resident()}
    out = []
    for s in models.catalog:
        entry = {
            "id": s.id,
            "name": s.name,
            "kind": s.kind,
            "size_bytes": s.size_bytes,
            "aliases": list(s.aliases),
            "profile": s.profile or models.profile,
            "offload": s.offload or models.offload,
        }
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
