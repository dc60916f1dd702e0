"""The studio: the photographer's web page at `/`, served from the package (no CDN, no build step).

It is a client like any other: it calls the task API (`POST /v1`: imageInference with the `includeProgress`
extension, getResponse, promptEnhance, cancelTask) and the gallery routes with the browser's API key. This
module only serves its files and `/studio/config.json` (the prompt presets, the default negative prompt,
scheduler names and limits it builds its form from).
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, JSONResponse

STATIC = Path(__file__).parent / "static"
router = APIRouter()
ASPECTS = [("1:1", 1, 1), ("4:3", 4, 3), ("3:2", 3, 2), ("16:9", 16, 9), ("3:4", 3, 4), ("2:3", 2, 3), ("9:16", 9, 16)]


@router.get("/", include_in_schema=False)
async def index():
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/studio/config.json", include_in_schema=False)
async def config():
    from daguerre.prompts.studio import DEFAULT_NEGATIVE
    from daguerre.request import RANGES, SCHEDULER_NAMES, SIZE_STEP

    presets = json.loads((Path(__file__).parents[1] / "prompts" / "presets.json").read_text())
    return JSONResponse({
        "presets": presets["categories"],
        "defaultNegative": DEFAULT_NEGATIVE,
        "schedulers": list(SCHEDULER_NAMES),
        "aspects": [{"name": n, "w": w, "h": h} for n, w, h in ASPECTS],
        "sizeStep": SIZE_STEP,
        "ranges": {k: RANGES[k] for k in ("width", "height", "steps", "CFGScale", "trueCFGScale", "numberResults",
                                          "strength")},
    })  # fmt: skip


def mount(app: FastAPI) -> None:
    from starlette.staticfiles import StaticFiles

    app.mount("/studio", StaticFiles(directory=str(STATIC)), name="studio")
