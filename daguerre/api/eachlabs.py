"""The eachlabs predictions protocol (base /v1): create, run (blocking), get, cancel, and the model listing
with each model's request_schema, as the official clients (@eachlabs/aiflow) call them.

    POST /v1/prediction[/]          {"model", "version", "input", "webhook_url", "webhook_secret"}
                                    -> {"status": "success", "message", "predictionID"}
    POST /v1/prediction/run         the same, answered when the job ends (or after server.prediction_wait_s)
    GET  /v1/prediction/{id}        {id, input, status, output, logs, metrics, urls}
    POST /v1/prediction/{id}/cancel {"status": "cancelled", "message", "predictionID"}
    GET  /v1/models                 [{title, slug, version, output_type}, ...]
    GET  /v1/model?slug=            {title, slug, version, output_type, request_schema}

Auth: `X-API-Key: KEY` or `Authorization: Bearer KEY`. Errors: {"error", "status": "error", "details"}.
A model's slug is any catalog id, name or alias (e.g. `tencent-flux-1-srpo-text-to-image`). Statuses:
created (queued), starting (claimed, loading), processing (denoising), success, error, cancelled.
"""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from daguerre.api.deps import Services, check_json_type, in_thread, parse_json, read_capped
from daguerre.api.fields import Fields, renamed
from daguerre.api.intake import HTTP_STATUS, Inputs, Intake
from daguerre.errors import DaguerreError, RequestError
from daguerre.jobs.spec import DeliverySpec
from daguerre.jobs.store import CANCELLED, ERROR, QUEUED, RUNNING, SUCCESS, Job
from daguerre.request import AccelOptions, GenerationRequest, OutputSpec, validate

PROTOCOL = "eachlabs"
VERSION = "0.0.1"  # every catalog model has one version
IMAGE_SIZES = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
DEFAULT_SIZE = "landscape_4_3"
OUTPUT_FORMATS = {"jpeg": "JPG", "png": "PNG"}
# acceleration -> step caching: TeaCache at a light and at the reference's default distance (docs/api.md).
ACCELERATION = {"none": None, "regular": 0.25, "high": 0.5}
DEFAULTS = {"num_inference_steps": 28, "guidance_scale": 4.5, "num_images": 1, "strength": 0.95}
# The request checks' names -> this door's input names (errors name what the client sent).
NAMES = {"steps": "input.num_inference_steps", "CFGScale": "input.guidance_scale", "seed": "input.seed",
         "numberResults": "input.num_images", "width": "input.image_size", "height": "input.image_size",
         "strength": "input.strength", "positivePrompt": "input.prompt", "model": "model",
         "seedImage": "input.image_url", "enhancePrompt": "input.enhance_prompt"}  # fmt: skip
STATUS_MESSAGES = {SUCCESS: "Prediction completed successfully", ERROR: "Prediction failed",
                   CANCELLED: "Prediction cancelled"}  # fmt: skip

router = APIRouter(tags=["eachlabs"])


class EachLabs:
    """eachlabs predictions -> jobs, and jobs -> prediction objects and webhook bodies."""

    def __init__(self, intake: Intake):
        self.intake = intake

    # ---- requests
    def create(self, owner: str, body, idempotency_key: str | None) -> Job:
        intake = self.intake
        intake.check_open()
        top = Fields(body, "")
        slug = top.text("model", required=True)
        version = top.text("version")
        if version not in (None, VERSION, "latest"):
            raise RequestError(f"version {version!r} of {slug} does not exist; versions: {VERSION}",
                               parameter="version")  # fmt: skip
        webhook_url = top.text("webhook_url")
        webhook_secret = top.text("webhook_secret")
        raw_input = top.raw("input")
        top.refuse_unknown("a prediction")
        task_uuid = intake.job_id(owner, PROTOCOL, idempotency_key)
        job = intake.existing(owner, task_uuid, body, idempotency_key)
        if job is not None:
            return job
        inputs = Inputs()
        try:
            req, sync = self.parse(slug, Fields(raw_input if raw_input is not None else {}, "input"),
                                   intake.resolver(owner, inputs))  # fmt: skip
        except DaguerreError as e:
            raise renamed(e, NAMES) from None
        delivery = DeliverySpec(protocol=PROTOCOL, method="async", output_types=("dataURI",) if sync else ("URL",),
                                webhook_url=webhook_url, webhook_events=("completed",),
                                webhook_secret=webhook_secret)  # fmt: skip
        try:
            return intake.submit(owner, task_uuid, body, req, delivery, inputs, task_type="prediction")
        except DaguerreError as e:
            raise renamed(e, NAMES | {"webhookURL": "webhook_url"}) from None

    def parse(self, slug: str, f: Fields, resolve) -> tuple[GenerationRequest, bool]:
        """The model's inputs -> a validated GenerationRequest, and whether sync_mode asked for data URIs."""
        spec = self.intake.catalog.get(slug, allow_paths=self.intake.server.allow_model_paths)
        prompt = f.text("prompt", required=True)
        width, height = self._size(f.raw("image_size", DEFAULT_SIZE))
        seed = f.raw("seed")
        if isinstance(seed, str):
            if not seed.strip().isdigit():
                raise RequestError(f"input.seed must be a whole number, got {seed!r}", parameter="input.seed")
            seed = int(seed)
        elif seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise RequestError(f"input.seed must be a whole number, got {seed!r}", parameter="input.seed")
        accel = ACCELERATION.get(f.choice("acceleration", tuple(ACCELERATION), "none"))
        fmt = f.choice("output_format", tuple(OUTPUT_FORMATS), "jpeg")
        image_url = f.text("image_url")
        seed_image = resolve(image_url, "input.image_url", False) if image_url else None
        strength = f.number("strength", DEFAULTS["strength"] if image_url else None, lo=0, hi=1)
        if strength is not None and seed_image is None:
            raise RequestError("input.strength needs input.image_url (image-to-image)", parameter="input.strength")
        req = GenerationRequest(
            model=slug,
            positive_prompt=prompt,
            width=width,
            height=height,
            steps=f.integer("num_inference_steps", DEFAULTS["num_inference_steps"]),
            guidance=f.number("guidance_scale", None if spec.kind == "schnell" else DEFAULTS["guidance_scale"]),
            seed=seed,
            number_results=f.integer("num_images", DEFAULTS["num_images"], lo=1, hi=4),
            output=OutputSpec(OUTPUT_FORMATS[fmt]),
            seed_image=seed_image,
            strength=strength,
            accelerator=AccelOptions(tea_cache=True, tea_cache_distance=accel) if accel else AccelOptions(),
            safety=self.intake.safety(
                f.flag("enable_safety_checker"), default=True, parameter="input.enable_safety_checker"
            ),  # fmt: skip
        )
        sync = bool(f.flag("sync_mode", False))
        f.refuse_unknown(f"model {slug}")
        return validate(req), sync

    @staticmethod
    def _size(value) -> tuple[int, int]:
        if isinstance(value, str):
            if value not in IMAGE_SIZES:
                raise RequestError(f"input.image_size must be one of {', '.join(IMAGE_SIZES)} or "
                                   f"{{width, height}}, got {value!r}", parameter="input.image_size")  # fmt: skip
            return IMAGE_SIZES[value]
        f = Fields(value, "input.image_size")
        w, h = f.integer("width"), f.integer("height")
        f.refuse_unknown("image_size")
        if w is None or h is None:
            raise RequestError("input.image_size needs both width and height", parameter="input.image_size")
        return w, h

    # ---- replies
    def status(self, job: Job) -> str:
        if job.status == QUEUED:
            return "created"
        if job.status == RUNNING:
            return "processing" if job.progress else "starting"
        return {SUCCESS: "success", ERROR: "error", CANCELLED: "cancelled"}[job.status]

    def output(self, job: Job) -> list[str]:
        return self.intake.outputs(job, job.spec.delivery.output_types[0])

    def view(self, job: Job, base: str) -> dict:
        """GET /v1/prediction/{id}: the prediction as it stands."""
        metrics = {"predict_time": None, "cost": None}
        if job.started_at and job.completed_at:
            metrics["predict_time"] = round(job.completed_at - job.started_at, 3)
        if job.done:
            seconds = sum(r.get("seconds", 0.0) for r in job.results)
            metrics["cost"] = round(seconds * self.intake.server.price_per_second, 6)
        url = f"{base}/v1/prediction/{job.task_uuid}"
        return {
            "id": job.task_uuid,
            "input": self._input(job),
            "status": self.status(job),
            "output": self.output(job),
            "logs": "\n".join(job.log) or None,
            "error": (job.error or {}).get("message") if job.status == ERROR else None,
            "metrics": metrics,
            "urls": {"get": url, "cancel": f"{url}/cancel"},
        }

    def _input(self, job: Job) -> dict:
        r = job.spec.request
        out = {"prompt": r.positive_prompt, "image_size": {"width": r.width, "height": r.height},
               "num_inference_steps": r.steps, "guidance_scale": r.guidance, "seed": r.seed,
               "num_images": r.number_results, "output_format": "png" if r.output.format == "PNG" else "jpeg",
               "enable_safety_checker": r.safety is not None}  # fmt: skip
        if r.strength is not None:
            out["strength"] = r.strength
        return out

    def finished(self, job: Job) -> dict:
        """The /run answer."""
        if not job.done:
            message = f"Prediction is still running; poll GET /v1/prediction/{job.task_uuid}"
            return {"status": self.status(job), "message": message, "predictionID": job.task_uuid,
                    "output": self.output(job), "error": None}  # fmt: skip
        status = {SUCCESS: "success", ERROR: "failed", CANCELLED: "cancelled"}[job.status]
        return {"status": status, "message": STATUS_MESSAGES[job.status], "predictionID": job.task_uuid,
                "output": self.output(job), "error": (job.error or {}).get("message")}  # fmt: skip

    def webhook_body(self, job: Job, event: str, result: dict | None) -> dict | None:
        """Sent once, when the prediction ends (3 attempts)."""
        if event != "completed":
            return None
        error = "" if job.status == SUCCESS else ((job.error or {}).get("message") or "Prediction cancelled")
        return {"exec_id": job.task_uuid, "flow_id": None, "status": "succeeded" if job.status == SUCCESS else "failed",
                "output": self.output(job), "error": error}  # fmt: skip

    # ---- models
    def listing(self) -> list[dict]:
        out = []
        for spec in self.intake.catalog.available():
            out.append(self._model(spec, self._slug(spec)))
        return out

    @staticmethod
    def _slug(spec) -> str:
        """The model's eachlabs slug: its first alias without ':' or '@', else its short name."""
        return next((a for a in spec.aliases if ":" not in a and "@" not in a and "/" not in a), spec.name)

    def _model(self, spec, slug: str) -> dict:
        return {"title": spec.name, "slug": slug, "version": VERSION, "output_type": "array",
                "id": spec.id, "kind": spec.kind}  # fmt: skip

    def model(self, slug: str) -> dict:
        spec = self.intake.catalog.get(slug, allow_paths=False)
        return {**self._model(spec, slug), "request_schema": request_schema(spec, image_to_image="image-to-image"
                                                                            in slug)}  # fmt: skip


def request_schema(spec, *, image_to_image: bool) -> dict:
    """The JSON schema of a model's input (text-to-image; image_url required for an image-to-image slug)."""
    props = {
        "prompt": {"type": "string", "description": "what to generate"},
        "image_size": {"oneOf": [{"enum": list(IMAGE_SIZES)}, {"type": "object", "properties": {
            "width": {"type": "integer", "minimum": 128, "maximum": 2048, "multipleOf": 64},
            "height": {"type": "integer", "minimum": 128, "maximum": 2048, "multipleOf": 64}}}],
            "default": DEFAULT_SIZE},
        "num_inference_steps": {"type": "integer", "minimum": 1, "maximum": 50, "default": 28},
        "seed": {"type": ["integer", "string"], "description": "random when absent"},
        "guidance_scale": {"type": "number", "minimum": 0, "maximum": 20, "default": 4.5},
        "num_images": {"type": "integer", "minimum": 1, "maximum": 4, "default": 1},
        "enable_safety_checker": {"type": "boolean", "default": True},
        "output_format": {"enum": list(OUTPUT_FORMATS), "default": "jpeg"},
        "acceleration": {"enum": list(ACCELERATION), "default": "none"},
        "sync_mode": {"type": "boolean", "default": False, "description": "output as data URIs"},
        "image_url": {"type": "string", "description": "source image (URL or data URI) for image-to-image"},
        "strength": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.95},
    }  # fmt: skip
    if spec.kind == "schnell":
        del props["guidance_scale"]
    required = ["prompt", "image_url"] if image_to_image else ["prompt"]
    return {"type": "object", "properties": props, "required": required}


# ---- routes


def _error(e: DaguerreError) -> JSONResponse:
    status = HTTP_STATUS.get(e.code, 400)
    headers = {"Retry-After": "5"} if status == 429 else None
    return JSONResponse({"error": e.message, "status": "error", "details": {"code": e.code, "parameter": e.parameter}},
                        status_code=status, headers=headers)  # fmt: skip


def _owner(request: Request, intake: Intake) -> str:
    key = request.headers.get("x-api-key")
    header = request.headers.get("authorization", "")
    if not key and header.lower().startswith("bearer "):
        key = header[7:].strip()
    return intake.authenticate(key or None)


def _base(request: Request, services) -> str:
    return (services.settings.server.public_url or str(request.base_url)).rstrip("/")


async def _body(request: Request, services):
    check_json_type(request.headers.get("content-type"))
    return parse_json(await read_capped(request, services.settings.server.max_body_bytes))


class _Any:
    kind = "dev"


CREATE_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["model", "version", "input"], "properties": {
        "model": {"type": "string", "description": "a catalog id, name or alias (slug)"},
        "version": {"type": "string", "enum": [VERSION, "latest"]},
        "input": request_schema(_Any, image_to_image=False),
        "webhook_url": {"type": "string", "format": "uri"}, "webhook_secret": {"type": "string"}}}}}}}  # fmt: skip


@router.post("/v1/prediction", summary="eachlabs: create a prediction (answers at once with its id)",
             openapi_extra=CREATE_BODY)  # fmt: skip
@router.post("/v1/prediction/", include_in_schema=False)
async def create(request: Request, services: Services):
    door: EachLabs = services.eachlabs
    try:
        owner = _owner(request, door.intake)
        body = await _body(request, services)
        job = await in_thread(door.create, owner, body, request.headers.get("idempotency-key"))
    except DaguerreError as e:
        return _error(e)
    return {"status": "success", "message": "Prediction created successfully", "predictionID": job.task_uuid}


@router.post("/v1/prediction/run", summary="eachlabs: create a prediction and wait for its result",
             openapi_extra=CREATE_BODY)  # fmt: skip
async def run(request: Request, services: Services):
    door: EachLabs = services.eachlabs
    try:
        owner = _owner(request, door.intake)
        body = await _body(request, services)
        job = await in_thread(door.create, owner, body, request.headers.get("idempotency-key"))
        job = await door.intake.wait(job, services.settings.server.prediction_wait_s)
    except DaguerreError as e:
        return _error(e)
    return door.finished(job)


async def _job(prediction_id: str, request: Request, services, *, cancel: bool = False) -> Job:
    intake: Intake = services.intake
    return await in_thread(lambda: intake.lookup(_owner(request, intake), prediction_id, cancel=cancel))


@router.get("/v1/prediction/{prediction_id}", summary="eachlabs: a prediction's status, output and logs")
async def get(prediction_id: str, request: Request, services: Services):
    try:
        job = await _job(prediction_id, request, services)
    except DaguerreError as e:
        return _error(e)
    return services.eachlabs.view(job, _base(request, services))


@router.post("/v1/prediction/{prediction_id}/cancel", summary="eachlabs: cancel a prediction")
async def cancel(prediction_id: str, request: Request, services: Services):
    door: EachLabs = services.eachlabs
    try:
        job = await _job(prediction_id, request, services, cancel=True)
    except DaguerreError as e:
        return _error(e)
    if job.done and job.status != CANCELLED:
        return {"status": door.status(job), "message": "Prediction already finished", "predictionID": job.task_uuid}
    return {"status": "cancelled", "message": "Prediction cancelled", "predictionID": job.task_uuid}


@router.get("/v1/models", summary="eachlabs: the models this server serves")
async def models(services: Services):
    return services.eachlabs.listing()


@router.get("/v1/model", summary="eachlabs: one model, with its request_schema")
async def model(services: Services, slug: str | None = Query(None, description="a model id, name or alias")):
    try:
        if not slug:
            raise RequestError("slug is required: GET /v1/model?slug=MODEL", parameter="slug")
        return services.eachlabs.model(slug)
    except DaguerreError as e:
        return _error(e)
