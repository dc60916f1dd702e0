"""The Replicate predictions protocol (base /v1), as the official `replicate` client calls it.

    POST /v1/models/{owner}/{name}/predictions   {"input", "webhook", "webhook_events_filter"} -> 201 prediction
    POST /v1/predictions                          the same with "version" (a version id, or owner/name:id)
    GET  /v1/predictions                          this key's predictions, newest first ({next, previous, results})
    GET  /v1/predictions/{id}                     the prediction
    POST /v1/predictions/{id}/cancel              the prediction, canceled (or as it ended)
    GET  /v1/predictions/{id}/stream              server-sent events: output, logs, error, done
    GET  /v1/models/{owner}/{name}[/versions[/{id}]]
    POST /v1/files                                an input file (multipart `content`) -> {id, urls.get, ...}
    GET  /v1/webhooks/default/secret              {"key": "whsec_..."}: this key's webhook signing secret

`Prefer: wait` (or `wait=N`, 1-60 s) holds a create until the prediction ends, at most
server.prediction_wait_s; a prediction still running then is answered as `starting`, the status the
official client keeps polling on (it takes any other status for final). Auth: `Authorization: Bearer KEY`
(or `Token KEY`). Errors are RFC 7807 bodies {type, title, status, detail}; GETs never answer 503 (the
client retries those ten times). A model is named owner/name: a catalog alias with a slash
(`black-forest-labs/flux-dev`), or `daguerre/<short name>`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from daguerre.api.deps import Services, check_json_type, in_thread, parse_json, read_capped
from daguerre.api.fields import Fields, renamed
from daguerre.api.intake import HTTP_STATUS, Inputs, Intake, ProtocolError
from daguerre.errors import DaguerreError, RequestError
from daguerre.jobs.delivery import derived_webhook_secret
from daguerre.jobs.spec import DeliverySpec
from daguerre.jobs.store import CANCELLED, ERROR, QUEUED, RUNNING, SUCCESS, Job
from daguerre.request import RANGES, SIZE_STEP, AccelOptions, GenerationRequest, OutputSpec, validate

PROTOCOL = "replicate"
OWNER = "daguerre"  # the owner of models that have no owner/name alias
COG_VERSION = "0.14.0"
# aspect_ratio -> (width, height) at 1 megapixel, as the FLUX.1 models on that service size them.
ASPECT_RATIOS = {"1:1": (1024, 1024), "16:9": (1344, 768), "21:9": (1536, 640), "3:2": (1216, 832),
                 "2:3": (832, 1216), "4:5": (896, 1088), "5:4": (1088, 896), "3:4": (896, 1152),
                 "4:3": (1152, 896), "9:16": (768, 1344), "9:21": (640, 1536)}  # fmt: skip
MEGAPIXELS = ("1", "0.25")
OUTPUT_FORMATS = {"webp": "WEBP", "jpg": "JPG", "png": "PNG"}
GO_FAST_TEA_CACHE = 0.25  # go_fast: TeaCache at this distance (docs/api.md)
IMAGE_MAX = 1440  # img2img: the source is scaled to fit this square
EVENTS = ("start", "output", "logs", "completed")
DEFAULT_EVENTS = ("output", "completed")
STATUS = {QUEUED: "starting", RUNNING: "processing", SUCCESS: "succeeded", ERROR: "failed", CANCELLED: "canceled"}
NAMES = {"steps": "input.num_inference_steps", "CFGScale": "input.guidance", "seed": "input.seed",
         "numberResults": "input.num_outputs", "width": "input.width", "height": "input.height",
         "strength": "input.prompt_strength", "positivePrompt": "input.prompt", "model": "model",
         "seedImage": "input.image", "outputQuality": "input.output_quality",
         "webhookURL": "webhook"}  # fmt: skip
TITLES = {400: "Bad request", 401: "Unauthenticated", 404: "Not found", 413: "Payload too large",
          415: "Unsupported media type", 422: "Invalid input", 429: "Too many requests",
          500: "Internal server error", 503: "Service unavailable"}  # fmt: skip

router = APIRouter(tags=["replicate"])


def version_id(spec) -> str:
    """A model's one version: a stable 64-hex id from its catalog id."""
    return hashlib.sha256(f"daguerre-version:{spec.id}".encode()).hexdigest()


def model_name(spec) -> str:
    """owner/name of a catalog model: its first alias with a slash, else daguerre/<short name>."""
    return next((a for a in spec.aliases if a.count("/") == 1 and ":" not in a), f"{OWNER}/{spec.name}")


def timestamp(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


class Replicate:
    """Replicate predictions -> jobs, and jobs -> prediction objects and webhook bodies."""

    def __init__(self, intake: Intake):
        self.intake = intake

    # ---- models
    def model(self, owner: str, name: str):
        """The catalog model behind owner/name (daguerre/<anything> is a plain catalog reference)."""
        ref = f"{owner}/{name}"
        catalog = self.intake.catalog
        try:
            return catalog.get(ref, allow_paths=False)
        except DaguerreError:
            if owner != OWNER:
                raise
        return catalog.get(name, allow_paths=False)

    def by_version(self, version: str):
        """The model of a version id (bare, or owner/name:id), or of a catalog reference given as version."""
        ref, _, vid = version.rpartition(":") if ":" in version and "/" in version.split(":")[0] else ("", "", version)
        for spec in self.intake.catalog.available():
            if version_id(spec) == vid:
                if ref and self.model(*ref.split("/", 1)).id != spec.id:
                    break
                return spec
        raise ProtocolError(f"version {version!r} does not exist on this server", parameter="version",
                            code="modelNotFound")  # fmt: skip

    def version(self, spec) -> dict:
        return {"id": version_id(spec), "created_at": timestamp(0), "cog_version": COG_VERSION,
                "openapi_schema": openapi_schema(spec)}  # fmt: skip

    def model_view(self, spec, base: str) -> dict:
        owner, name = model_name(spec).split("/", 1)
        return {"url": f"{base}/v1/models/{owner}/{name}", "owner": owner, "name": name,
                "description": f"{spec.kind} FLUX.1 model {spec.id} served by Daguerre", "visibility": "private",
                "github_url": None, "paper_url": None, "license_url": None, "run_count": 0, "cover_image_url": None,
                "default_example": None, "latest_version": self.version(spec)}  # fmt: skip

    # ---- requests
    def create(self, owner: str, body, spec, idempotency_key: str | None) -> Job:
        intake = self.intake
        intake.check_open()
        top = Fields(body, "")
        top.raw("version")  # read by the route
        raw_input = top.raw("input")
        webhook = top.text("webhook")
        events = top.raw("webhook_events_filter")
        top.raw("webhook_completed")  # the legacy name of a completed-only webhook
        if top.present("webhook_completed") and webhook is None:
            webhook, events = top.text("webhook_completed"), ["completed"]
        if top.flag("stream"):
            pass  # every prediction has urls.stream
        top.refuse_unknown("a prediction")
        if events is not None and (not isinstance(events, list) or not all(e in EVENTS for e in events)):
            raise RequestError(f"webhook_events_filter must be a list of {', '.join(EVENTS)}, got {events!r}",
                               parameter="webhook_events_filter")  # fmt: skip
        task_uuid = intake.job_id(owner, PROTOCOL, idempotency_key)
        task = {"model": spec.id, **body}
        job = intake.existing(owner, task_uuid, task, idempotency_key)
        if job is not None:
            return job
        inputs = Inputs()
        try:
            req = self.parse(spec, Fields(raw_input if raw_input is not None else {}, "input"),
                             intake.resolver(owner, inputs))  # fmt: skip
        except DaguerreError as e:
            raise renamed(e, NAMES) from None
        delivery = DeliverySpec(protocol=PROTOCOL, method="async", webhook_url=webhook,
                                webhook_events=tuple(events) if events is not None else DEFAULT_EVENTS)  # fmt: skip
        try:
            return intake.submit(owner, task_uuid, task, req, delivery, inputs, task_type="prediction")
        except DaguerreError as e:
            raise renamed(e, NAMES) from None

    def parse(self, spec, f: Fields, resolve) -> GenerationRequest:
        """The model's inputs -> a validated GenerationRequest."""
        prompt = f.text("prompt", required=True)
        ratio = f.choice("aspect_ratio", (*ASPECT_RATIOS, "custom"), "1:1")
        megapixels = f.raw("megapixels", "1")
        megapixels = {1: "1", 0.25: "0.25"}.get(megapixels, megapixels) if not isinstance(megapixels, bool) else None
        if megapixels not in MEGAPIXELS:
            raise RequestError(f"input.megapixels must be \"1\" or \"0.25\", got {f.data.get('megapixels')!r}",
                               parameter="input.megapixels")  # fmt: skip
        image = f.text("image")
        seed_image = resolve(image, "input.image", False) if image else None
        if seed_image is not None:  # the output follows the source image
            width, height = _fit(*seed_image.size)
        elif ratio == "custom":
            width, height = f.integer("width"), f.integer("height")
            if width is None or height is None:
                raise RequestError("aspect_ratio custom needs input.width and input.height", parameter="input.width")
        else:
            width, height = ASPECT_RATIOS[ratio]
        if ratio != "custom":
            for key in ("width", "height"):
                if f.present(key):
                    raise RequestError(f'input.{key} needs aspect_ratio "custom"', parameter=f"input.{key}")
                f.raw(key)
        if megapixels == "0.25" and seed_image is None:
            width, height = (_round_size(v / 2) for v in (width, height))
        quality = f.integer("output_quality", 80, lo=0, hi=100)
        lo, hi = RANGES["outputQuality"]
        go_fast = f.flag("go_fast", True)
        prompt_strength = f.number("prompt_strength", 0.8 if seed_image is not None else None, lo=0, hi=1)
        if prompt_strength is not None and seed_image is None:
            raise RequestError("input.prompt_strength needs input.image", parameter="input.prompt_strength")
        seed = f.integer("seed")
        req = GenerationRequest(
            model=spec.id,
            positive_prompt=prompt,
            width=width,
            height=height,
            steps=f.integer("num_inference_steps"),  # None: the model's default (28 dev, 4 schnell)
            guidance=f.number("guidance", None if spec.kind == "schnell" else 3.0, lo=0, hi=10),
            seed=seed,
            number_results=f.integer("num_outputs", 1, lo=1, hi=4),
            output=OutputSpec(
                OUTPUT_FORMATS[f.choice("output_format", tuple(OUTPUT_FORMATS), "webp")], min(hi, max(lo, quality))
            ),  # fmt: skip
            seed_image=seed_image,
            strength=prompt_strength,
            accelerator=AccelOptions(tea_cache=True, tea_cache_distance=GO_FAST_TEA_CACHE)
            if go_fast
            else AccelOptions(),
            safety=self.intake.safety(
                None if not f.flag("disable_safety_checker", False) else False,
                default=True,
                parameter="input.disable_safety_checker",
            ),  # fmt: skip
        )
        f.refuse_unknown(model_name(spec))
        return validate(req)

    # ---- replies
    def view(self, job: Job, base: str, *, blocking_timeout: bool = False) -> dict:
        """The prediction object (webhook bodies are the same)."""
        spec = self._spec(job)
        status = "starting" if blocking_timeout and not job.done else STATUS[job.status]
        url = f"{base}/v1/predictions/{job.task_uuid}"
        metrics: dict = {}
        if job.started_at and job.completed_at:
            metrics = {"predict_time": round(job.completed_at - job.started_at, 6),
                       "total_time": round(job.completed_at - job.created_at, 6)}  # fmt: skip
        output = self.intake.outputs(job)
        return {
            "id": job.task_uuid,
            "model": model_name(spec) if spec is not None else job.spec.request.model,
            "version": version_id(spec) if spec is not None else "unknown",
            "input": self._input(job),
            "output": output if output or job.status == SUCCESS else None,
            "logs": "\n".join(job.log),
            "error": (job.error or {}).get("message") if job.status == ERROR else None,
            "status": status,
            "source": "api",
            "data_removed": False,
            "created_at": timestamp(job.created_at),
            "started_at": timestamp(job.started_at),
            "completed_at": timestamp(job.completed_at),
            "metrics": metrics,
            "urls": {"get": url, "cancel": f"{url}/cancel", "stream": f"{url}/stream"},
        }

    def _spec(self, job: Job):
        try:
            return self.intake.catalog.get(job.spec.request.model, allow_paths=False)
        except DaguerreError:
            return None

    @staticmethod
    def _input(job: Job) -> dict:
        """The input as it ran, in this protocol's names (a job from another door shows its request the same way)."""
        r = job.spec.request
        out = {"prompt": r.positive_prompt, "aspect_ratio": "custom", "width": r.width, "height": r.height,
               "num_outputs": r.number_results, "num_inference_steps": r.steps, "seed": r.seed,
               "output_format": r.output.format.lower(), "output_quality": r.output.quality,
               "disable_safety_checker": r.safety is None, "go_fast": r.accelerator.enabled}  # fmt: skip
        if r.guidance is not None:
            out["guidance"] = r.guidance
        if r.strength is not None:
            out["prompt_strength"] = r.strength
        return out

    def webhook_body(self, job: Job, event: str, result: dict | None) -> dict | None:
        """Every event the prediction asked for sends the prediction as it stands."""
        return self.view(job, self.intake.signer.base_url)


def _fit(w: int, h: int) -> tuple[int, int]:
    """img2img: the source size scaled to fit IMAGE_MAX, each side a multiple of SIZE_STEP."""
    scale = min(1.0, IMAGE_MAX / max(w, h))
    return _round_size(w * scale), _round_size(h * scale)


def _round_size(v: float) -> int:
    lo, hi = RANGES["width"]
    return int(min(hi, max(lo, SIZE_STEP * math.floor(v / SIZE_STEP + 0.5))))


def openapi_schema(spec) -> dict:
    """A Cog-style OpenAPI schema of the model's Input and Output."""
    props = {
        "prompt": {"type": "string", "x-order": 0},
        "aspect_ratio": {"enum": [*ASPECT_RATIOS, "custom"], "default": "1:1"},
        "width": {"type": "integer", "minimum": 128, "maximum": 2048, "multipleOf": SIZE_STEP},
        "height": {"type": "integer", "minimum": 128, "maximum": 2048, "multipleOf": SIZE_STEP},
        "megapixels": {"enum": list(MEGAPIXELS), "default": "1"},
        "num_outputs": {"type": "integer", "minimum": 1, "maximum": 4, "default": 1},
        "num_inference_steps": {"type": "integer", "minimum": 1, "maximum": 50,
                                "default": 4 if spec.kind == "schnell" else 28},
        "guidance": {"type": "number", "minimum": 0, "maximum": 10, "default": 3},
        "seed": {"type": "integer"},
        "output_format": {"enum": list(OUTPUT_FORMATS), "default": "webp"},
        "output_quality": {"type": "integer", "minimum": 0, "maximum": 100, "default": 80},
        "disable_safety_checker": {"type": "boolean", "default": False},
        "go_fast": {"type": "boolean", "default": True},
        "image": {"type": "string", "format": "uri"},
        "prompt_strength": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.8},
    }  # fmt: skip
    if spec.kind == "schnell":
        for key in ("guidance", "image", "prompt_strength"):
            del props[key]
    schemas = {"Input": {"type": "object", "properties": props, "required": ["prompt"]},
               "Output": {"type": "array", "items": {"type": "string", "format": "uri"}}}  # fmt: skip
    return {"openapi": "3.0.2", "info": {"title": "Cog", "version": "0.1.0"}, "paths": {},
            "components": {"schemas": schemas}}  # fmt: skip


# ---- routes


def _error(e: DaguerreError, *, get: bool = False) -> JSONResponse:
    status = HTTP_STATUS.get(e.code, 400)
    if e.code in ("invalidParameter", "unsupportedParameter", "invalidImage", "duplicateTaskUUID", "modelNotFound"):
        status = 422 if e.code != "modelNotFound" else 404
    if get and status == 503:
        status = 500  # the client retries a GET's 503 ten times
    headers = {"Retry-After": "1"} if status == 429 else None
    body = {
        "type": "about:blank",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": e.message,
        "code": e.code,
    }
    if e.parameter:
        body["parameter"] = e.parameter
    return JSONResponse(body, status_code=status, headers=headers, media_type="application/problem+json")


def _owner(request: Request, intake: Intake) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    key = token.strip() if scheme.lower() in ("bearer", "token") else None
    return intake.authenticate(key or None)


def _base(request: Request, services) -> str:
    return (services.settings.server.public_url or str(request.base_url)).rstrip("/")


def _wait(request: Request, services) -> float | None:
    """Seconds a `Prefer: wait[=N]` asks to hold the create (None: answer at once)."""
    prefer = request.headers.get("prefer")
    if not prefer:
        return None
    cap = services.settings.server.prediction_wait_s
    for part in prefer.split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        if not value:
            return cap
        if not value.strip().isdigit() or not 1 <= int(value) <= 60:
            raise RequestError(f"Prefer: wait=N takes 1-60 seconds, got {value!r}", parameter="Prefer")
        return min(cap, int(value))
    return None


async def _create(request: Request, services, lookup) -> JSONResponse:
    door: Replicate = services.replicate
    try:
        owner = _owner(request, door.intake)
        check_json_type(request.headers.get("content-type"))
        body = parse_json(await read_capped(request, services.settings.server.max_body_bytes))
        wait = _wait(request, services)
        spec = lookup(body)
        job = await in_thread(door.create, owner, body, spec, request.headers.get("idempotency-key"))
        if wait is not None:
            job = await door.intake.wait(job, wait)
    except DaguerreError as e:
        return _error(e)
    headers = {"Preference-Applied": "wait"} if wait is not None else None
    view = door.view(job, _base(request, services), blocking_timeout=wait is not None)
    return JSONResponse(view, status_code=201, headers=headers)


class _Dev:
    kind = "dev"


def _create_body(with_version: bool) -> dict:
    props = {"input": openapi_schema(_Dev)["components"]["schemas"]["Input"],
             "webhook": {"type": "string", "format": "uri"},
             "webhook_events_filter": {"type": "array", "items": {"enum": list(EVENTS)}}}  # fmt: skip
    if with_version:
        props["version"] = {"type": "string", "description": "a version id, owner/name:id, or a catalog id"}
    required = ["version", "input"] if with_version else ["input"]
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": required, "properties": props}}}},
        "parameters": [{"name": "Prefer", "in": "header", "schema": {"type": "string"},
                        "description": "wait or wait=N (1-60): hold it until the prediction ends"}]}  # fmt: skip


@router.post("/v1/models/{owner}/{name}/predictions", status_code=201, openapi_extra=_create_body(False),
             summary="Replicate: create a prediction of a model (Prefer: wait holds it)")  # fmt: skip
async def create_for_model(owner: str, name: str, request: Request, services: Services):
    return await _create(request, services, lambda body: services.replicate.model(owner, name))


@router.post("/v1/predictions", status_code=201, summary="Replicate: create a prediction of a version",
             openapi_extra=_create_body(True))  # fmt: skip
async def create_for_version(request: Request, services: Services):
    def lookup(body):
        version = body.get("version") if isinstance(body, dict) else None
        if not isinstance(version, str) or not version:
            raise RequestError("version is required: a version id or owner/name:id", parameter="version")
        try:
            return services.replicate.by_version(version)
        except ProtocolError:
            return services.intake.catalog.get(version, allow_paths=False)  # a catalog id as the version

    return await _create(request, services, lookup)


@router.get("/v1/predictions", summary="Replicate: this key's predictions, newest first")
async def list_predictions(request: Request, services: Services, cursor: str | None = None):
    door: Replicate = services.replicate
    try:
        owner = _owner(request, door.intake)
        before = int(cursor) if cursor and cursor.isdigit() else None
        jobs = await in_thread(door.intake.jobs.store.recent, owner, 100, before)
    except DaguerreError as e:
        return _error(e, get=True)
    base = _base(request, services)
    nxt = f"{base}/v1/predictions?cursor={jobs[-1].number}" if len(jobs) == 100 else None
    return {"next": nxt, "previous": None, "results": [door.view(j, base) for j in jobs]}


async def _job(prediction_id: str, request: Request, services, cancel: bool = False) -> Job:
    intake: Intake = services.intake
    return await in_thread(lambda: intake.lookup(_owner(request, intake), prediction_id, cancel=cancel))


@router.get("/v1/predictions/{prediction_id}", summary="Replicate: a prediction")
async def get_prediction(prediction_id: str, request: Request, services: Services):
    try:
        job = await _job(prediction_id, request, services)
    except DaguerreError as e:
        return _error(e, get=True)
    return services.replicate.view(job, _base(request, services))


@router.post("/v1/predictions/{prediction_id}/cancel", summary="Replicate: cancel a prediction")
async def cancel_prediction(prediction_id: str, request: Request, services: Services):
    try:
        job = await _job(prediction_id, request, services, cancel=True)
    except DaguerreError as e:
        return _error(e)
    view = services.replicate.view(job, _base(request, services))
    if job.cancel_requested and not job.done:
        view["status"] = "canceled"  # the worker stops it at its next step
    return view


@router.get("/v1/predictions/{prediction_id}/stream", summary="Replicate: a prediction's events (SSE)")
async def stream_prediction(prediction_id: str, request: Request, services: Services):
    try:
        job = await _job(prediction_id, request, services)
    except DaguerreError as e:
        return _error(e, get=True)
    return StreamingResponse(_events(services, job), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store"})  # fmt: skip


async def _events(services, job: Job):
    """output (each image link), logs (each new line), then error (on failure) and done."""
    intake: Intake = services.intake
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()
    unsubscribe = intake.jobs.subscribe(job.key, lambda _j: loop.call_soon_threadsafe(changed.set))
    sent_outputs, sent_logs, n = 0, 0, 0
    try:
        while True:
            current = await in_thread(intake.jobs.get, *job.key) or job
            for line in current.log[sent_logs:]:
                n += 1
                yield f"event: logs\nid: {n}\ndata: {line}\n\n"
            sent_logs = len(current.log)
            outputs = await in_thread(intake.outputs, current)
            for url in outputs[sent_outputs:]:
                n += 1
                yield f"event: output\nid: {n}\ndata: {url}\n\n"
            sent_outputs = len(outputs)
            if current.done:
                if current.status == ERROR:
                    n += 1
                    detail = json.dumps({"detail": (current.error or {}).get("message")})
                    yield f"event: error\nid: {n}\ndata: {detail}\n\n"
                reason = {CANCELLED: {"reason": "canceled"}, ERROR: {"reason": "error"}}.get(current.status, {})
                yield f"event: done\nid: {n + 1}\ndata: {json.dumps(reason)}\n\n"
                return
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), 15)
            except TimeoutError:
                yield ": keep-alive\n\n"
    finally:
        unsubscribe()


@router.get("/v1/models/{owner}/{name}", summary="Replicate: a model, with its latest version")
async def get_model(owner: str, name: str, request: Request, services: Services):
    try:
        _owner(request, services.intake)
        spec = services.replicate.model(owner, name)
    except DaguerreError as e:
        return _error(e, get=True)
    return services.replicate.model_view(spec, _base(request, services))


@router.get("/v1/models/{owner}/{name}/versions", summary="Replicate: a model's versions")
async def list_versions(owner: str, name: str, request: Request, services: Services):
    try:
        _owner(request, services.intake)
        spec = services.replicate.model(owner, name)
    except DaguerreError as e:
        return _error(e, get=True)
    return {"next": None, "previous": None, "results": [services.replicate.version(spec)]}


@router.get("/v1/models/{owner}/{name}/versions/{version}", summary="Replicate: one version, with its schema")
async def get_version(owner: str, name: str, version: str, request: Request, services: Services):
    try:
        _owner(request, services.intake)
        spec = services.replicate.model(owner, name)
        if version != version_id(spec):
            raise ProtocolError(f"version {version} of {owner}/{name} not found", parameter="version",
                                code="taskNotFound")  # fmt: skip
    except DaguerreError as e:
        return _error(e, get=True)
    return services.replicate.version(spec)


@router.post("/v1/files", status_code=201, summary="Replicate: upload an input file (multipart field `content`)")
async def create_file(request: Request, services: Services):
    intake: Intake = services.intake
    try:
        owner = _owner(request, intake)
        declared = request.headers.get("content-length")
        cap = services.settings.server.max_body_bytes
        if declared and declared.isdigit() and int(declared) > cap:
            raise ProtocolError(f"request body is over the {cap}-byte cap", code="payloadTooLarge")
        form = await request.form(max_files=1, max_fields=4, max_part_size=cap)
        upload = form.get("content")
        if upload is None or not hasattr(upload, "read"):
            raise RequestError("the file goes in the multipart field 'content'", parameter="content")
        data = await upload.read()
        name = upload.filename or "file"
        image_uuid, ext, expires = await in_thread(intake.store_upload, owner, data, "content")
    except DaguerreError as e:
        return _error(e)
    url = intake.signer.sign(image_uuid, ext, expires)
    return JSONResponse({"id": image_uuid, "name": name, "content_type": f"image/{ext.replace('jpg', 'jpeg')}",
                         "size": len(data), "etag": hashlib.md5(data).hexdigest(),  # noqa: S324 - an etag
                         "checksums": {"sha256": hashlib.sha256(data).hexdigest()}, "metadata": {},
                         "created_at": timestamp(expires - services.settings.server.default_ttl),
                         "expires_at": timestamp(expires), "urls": {"get": url}}, status_code=201)  # fmt: skip


@router.get("/v1/webhooks/default/secret", summary="Replicate: this key's webhook signing secret")
async def webhook_secret(request: Request, services: Services):
    try:
        owner = _owner(request, services.intake)
    except DaguerreError as e:
        return _error(e, get=True)
    return {"key": derived_webhook_secret(services.secret, owner)}
