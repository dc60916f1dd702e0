"""The ModelsLab image API (under /api/v6/images/), as modelslab-py and plain `requests` code call it.

    POST /api/v6/images/text2img | img2img | inpaint   {"key", "model_id", "prompt", ...}
    POST /api/v6/images/fetch/{id}                      {"key"}
    POST /api/v6/images/fetch                           {"key", "request_id"}

The key is in the JSON body; numbers may come as strings and flags as "yes"/"no" or true/false. Every
answer is HTTP 200 (the official client raises on anything else) with `status`:
  success     {id (integer), output (links, or base64 with base64: "yes"), generationTime, meta,
               nsfw_content_detected, proxy_links, webhook_status, tip}
  processing  {id, eta, fetch_result (the fetch URL), future_links (the links the images will have), meta}
  error       {message (and the legacy spelling `messege`), id when a job failed}
A generation waits up to server.prediction_wait_s for its images, then answers processing; with
instant_response "yes" it answers processing at once. Fields this server cannot honour are an error
naming the field. The mapping of every field is in docs/api.md ("ModelsLab").
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from daguerre.api.deps import Services, check_json_type, in_thread, parse_json, read_capped
from daguerre.api.fields import Fields, renamed
from daguerre.api.intake import Inputs, Intake, ProtocolError
from daguerre.errors import DaguerreError, RequestError, UnsupportedError
from daguerre.jobs.spec import DeliverySpec
from daguerre.jobs.store import CANCELLED, ERROR, SUCCESS, Job
from daguerre.request import RANGES, SCHEDULERS, SIZE_STEP, GenerationRequest, HiresFix, LoraRef, validate

PROTOCOL = "modelslab"
ENDPOINTS = ("text2img", "img2img", "inpaint")
DEFAULT_SIZE = 512
TRUE_CFG_DEFAULT = 3.5  # the true-CFG scale of a negative_prompt when guidance_scale is not given
SAFETY_TYPES = ("blur", "pixelate", "black", "sensitive_content_text")
# The API's 18 scheduler names -> ours (most are the same diffusers class names). The three that do not
# apply to flow-matching models are refused by name.
SCHEDULER_MAP = {"UniPCMultistepScheduler": "UniPC"}
NOT_FLOW = ("DDIMInverseScheduler", "KarrasVeScheduler", "ScoreSdeVeScheduler")
SCHEDULER_NAMES = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
                   "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "HeunDiscreteScheduler",
                   "KDPM2DiscreteScheduler", "DPMSolverSinglestepScheduler", "KDPM2AncestralDiscreteScheduler",
                   "UniPCMultistepScheduler", "DDIMInverseScheduler", "DEISMultistepScheduler", "IPNDMScheduler",
                   "KarrasVeScheduler", "ScoreSdeVeScheduler", "LCMScheduler")  # fmt: skip
# Fields that ask for something this server does not do: refused unless absent, null or "no"/false.
NOT_HONOURED = {"panorama": "panorama generation is not supported", "self_attention": "self-attention guidance is "
                "not supported", "multi_lingual": "prompt translation is not supported", "tomesd": "token merging "
                "does not apply to FLUX.1 transformers", "clip_skip": "CLIP skip does not apply to FLUX.1 (its CLIP "
                "gives only the pooled embedding)", "vae": "a separate VAE is not supported (the model's own is "
                "used)", "ip_adapter_id": "IP-Adapters by ModelsLab id are not supported (use the task API's "
                "ipAdapters)", "ip_adapter_image": "see ip_adapter_id", "ip_adapter_scale": "see ip_adapter_id",
                "enhance_style": "style presets are not supported", "embeddings_model": "textual-inversion "
                "embeddings do not apply to FLUX.1", "algorithm_type": "algorithm_type does not apply (pick a "
                "scheduler)", "watermark": "watermarks are not supported", "controlnet_model": "use the task API's "
                "controlNet", "controlnet_type": "use the task API's controlNet"}  # fmt: skip
PASSIVE = {"temp": "links expire after the server's TTL either way", "full_url": "output links are always full"}
NAMES = {"steps": "num_inference_steps", "CFGScale": "guidance_scale", "trueCFGScale": "guidance_scale",
         "seed": "seed", "numberResults": "samples", "width": "width", "height": "height", "strength": "strength",
         "positivePrompt": "prompt", "negativePrompt": "negative_prompt", "model": "model_id",
         "lora.model": "lora_model", "lora.weight": "lora_strength", "scheduler": "scheduler",
         "seedImage": "init_image", "maskImage": "mask_image", "webhookURL": "webhook",
         "enhancePrompt": "enhance_prompt"}  # fmt: skip
TIP = "Served by Daguerre from your own FLUX.1 weights."

router = APIRouter(tags=["modelslab"])


class ModelsLab:
    """ModelsLab requests -> jobs, and jobs -> ModelsLab answers and webhook bodies."""

    def __init__(self, intake: Intake):
        self.intake = intake

    # ---- requests
    def generate(self, endpoint: str, body, idempotency_key: str | None) -> tuple[Job, bool, list[str]]:
        """(job, instant_response, notes for `tip`)."""
        intake = self.intake
        f = Fields(body, "", lenient=True)
        owner = intake.authenticate(f.text("key") or None)
        intake.check_open()
        task_uuid = intake.job_id(owner, PROTOCOL, idempotency_key)
        task = {k: v for k, v in body.items() if k != "key"} | {"endpoint": endpoint}
        instant = bool(f.flag("instant_response", False))
        job = intake.existing(owner, task_uuid, task, idempotency_key)
        if job is not None:
            return job, instant, []
        inputs = Inputs()
        notes: list[str] = []
        try:
            req, delivery = self.parse(endpoint, f, intake.resolver(owner, inputs), notes)
            return intake.submit(owner, task_uuid, task, req, delivery, inputs, task_type=endpoint), instant, notes
        except DaguerreError as e:
            raise renamed(e, NAMES) from None

    def parse(self, endpoint: str, f: Fields, resolve, notes: list[str]) -> tuple[GenerationRequest, DeliverySpec]:
        intake = self.intake
        model_id = f.text("model_id", required=True)
        spec = intake.catalog.get(model_id, parameter="model_id", allow_paths=intake.server.allow_model_paths)
        for name, why in NOT_HONOURED.items():
            value = f.raw(name)
            if value is not None and str(value).strip().lower() not in ("no", "false", "0", "", "none"):
                raise UnsupportedError(f"{name}: {why}", parameter=name)
        for name in PASSIVE:
            f.raw(name)
        prompt = f.text("prompt", required=True)
        hires, factor = self._hires(f, endpoint)
        seed_image = mask = None
        if endpoint in ("img2img", "inpaint"):
            seed_image = resolve(f.text("init_image", required=True), "init_image", False)
        if endpoint == "inpaint":
            mask = resolve(f.text("mask_image", required=True), "mask_image", True)
        if endpoint == "text2img":
            for name in ("init_image", "mask_image", "strength"):
                if f.present(name):
                    raise RequestError(f"{name} belongs to img2img/inpaint, not text2img", parameter=name)
        default_w, default_h = (_round(seed_image.size[0]), _round(seed_image.size[1])) if seed_image else (
            DEFAULT_SIZE, DEFAULT_SIZE)  # fmt: skip
        negative = f.text("negative_prompt") or None
        guidance = f.number("guidance_scale")
        true_cfg = None
        if negative is not None:
            if spec.kind == "fill":
                notes.append("negative_prompt was not used: FLUX.1 Fill models have no true-CFG path")
                negative = None
            else:  # real classifier-free guidance against the negative prompt, at guidance_scale
                true_cfg, guidance = guidance if guidance is not None else TRUE_CFG_DEFAULT, None
        if guidance is not None and spec.kind == "schnell":
            notes.append("guidance_scale was not used: schnell-type models have no guidance input")
            guidance = None
        steps = f.integer("num_inference_steps")
        if steps is None:
            steps = f.integer("steps")
        else:
            f.raw("steps")
        safety_on = f.flag("safety_checker")
        action = f.choice("safety_checker_type", SAFETY_TYPES, "sensitive_content_text")
        req = GenerationRequest(
            model=spec.id,
            positive_prompt=prompt,
            negative_prompt=negative,
            true_cfg_scale=true_cfg,
            width=f.integer("width", default_w) * factor,
            height=f.integer("height", default_h) * factor,
            hires_fix=hires,
            steps=steps,
            guidance=guidance,
            seed=f.integer("seed"),
            number_results=f.integer("samples", 1, lo=1, hi=4),
            scheduler=self._scheduler(f),
            loras=self._loras(f),
            seed_image=seed_image,
            mask_image=mask,
            strength=f.number("strength", lo=0, hi=1) if seed_image is not None else None,
            enhance_prompt=bool(f.flag("enhance_prompt", True)),
            safety=intake.safety(safety_on, default=True, action=action, parameter="safety_checker"),
        )
        b64 = bool(f.flag("base64", False))
        webhook = f.text("webhook")
        reference = f.text("track_id")
        f.refuse_unknown(endpoint)
        delivery = DeliverySpec(protocol=PROTOCOL, method="async", output_types=("base64Data",) if b64 else ("URL",),
                                webhook_url=webhook, webhook_events=("completed",), reference=reference)  # fmt: skip
        return validate(req), delivery

    @staticmethod
    def _hires(f: Fields, endpoint: str) -> tuple[HiresFix | None, int]:
        """highres_fix: hiresFix at the requested size (the server's default upscaler); upscale "yes"/2: the
        output at twice the size, made as a hiresFix whose first pass is the requested size. (hiresFix is
        text-to-image only, like the API's own highres_fix.)"""
        highres = f.flag("highres_fix", False)
        raw = f.raw("upscale")
        factor = 1
        if raw is not None and str(raw).strip().lower() not in ("no", "false", "0", "1", ""):
            if str(raw).strip().lower() not in ("yes", "true", "2"):
                raise UnsupportedError(f'upscale {raw!r}: this server upscales 2x ("yes" or 2)', parameter="upscale")
            factor = 2
        if endpoint != "text2img" and (highres or factor > 1):
            name = "upscale" if factor > 1 else "highres_fix"
            raise UnsupportedError(f"{name} applies to text2img here", parameter=name)
        return (HiresFix() if highres or factor > 1 else None), factor

    @staticmethod
    def _scheduler(f: Fields) -> str:
        name = f.text("scheduler")
        karras = f.flag("use_karras_sigmas")
        if name is not None:
            if name in NOT_FLOW:
                raise UnsupportedError(f"scheduler {name} does not apply to flow-matching FLUX.1 models",
                                       parameter="scheduler")  # fmt: skip
            name = SCHEDULER_MAP.get(name, name)
            if name not in SCHEDULERS:
                known = ", ".join(SCHEDULER_NAMES)
                raise RequestError(f"scheduler must be one of {known} (or one of the task API's names, "
                                   f"docs/schedulers.md), got {name!r}", parameter="scheduler")  # fmt: skip
        name = name or "Default"
        if karras:
            algorithm = SCHEDULERS[name][0]
            if algorithm == "flow-euler":
                algorithm = "euler"
            found = [n for n, (a, spacing) in SCHEDULERS.items() if a == algorithm and spacing == "karras"]
            if not found:
                raise UnsupportedError(f"use_karras_sigmas: {name} has no Karras-sigma variant here",
                                       parameter="use_karras_sigmas")  # fmt: skip
            name = found[0]
        return name

    @staticmethod
    def _loras(f: Fields) -> tuple[LoraRef, ...]:
        names = f.text("lora_model")
        strengths = f.raw("lora_strength")
        if not names:
            if strengths is not None:
                raise RequestError("lora_strength needs lora_model", parameter="lora_strength")
            return ()
        models = [n.strip() for n in names.split(",") if n.strip()]
        if strengths is None:
            weights = [1.0] * len(models)
        else:
            parts = str(strengths).split(",") if isinstance(strengths, str) else [strengths]
            try:
                weights = [float(p) for p in parts]
            except (TypeError, ValueError):
                raise RequestError(f"lora_strength must be a number or a comma list of numbers, got {strengths!r}",
                                   parameter="lora_strength") from None  # fmt: skip
            if len(weights) == 1:
                weights *= len(models)
            if len(weights) != len(models):
                raise RequestError(f"lora_strength has {len(weights)} values for {len(models)} lora_model entries",
                                   parameter="lora_strength")  # fmt: skip
        return tuple(LoraRef(model=m, weight=w) for m, w in zip(models, weights, strict=True))

    # ---- answers
    def answer(self, job: Job, base: str, notes: list[str] | None = None) -> dict:
        """success, processing or error, for a generation or a fetch."""
        tip = " ".join([*(notes or []), TIP])
        if job.status == SUCCESS:
            output = self.intake.outputs(job, job.spec.delivery.output_types[0])
            seconds = (job.completed_at or time.time()) - (job.started_at or job.created_at)
            return {"status": "success", "generationTime": round(seconds, 3), "id": job.number, "output": output,
                    "proxy_links": output if job.spec.delivery.output_types[0] == "URL" else [],
                    "nsfw_content_detected": any(r.get("nsfw") for r in job.results), "webhook_status": "",
                    "meta": self.meta(job), "tip": tip}  # fmt: skip
        if job.status in (ERROR, CANCELLED):
            message = "the request was cancelled" if job.status == CANCELLED else (job.error or {}).get("message")
            return {"status": "error", "id": job.number, "message": message, "messege": message, "tip": tip}
        eta = self._eta(job)
        return {"status": "processing", "tip": tip, "eta": eta, "message": "Try to fetch request after seconds "
                "estimated", "messege": "Try to fetch request after seconds estimated", "webhook_status": "",
                "fetch_result": f"{base}/api/v6/images/fetch/{job.number}", "id": job.number, "output": [],
                "meta": self.meta(job), "future_links": self.intake.future_links(job)}  # fmt: skip

    @staticmethod
    def _eta(job: Job) -> float:
        """Seconds left, from the pace of the steps so far (a rough 1 s per step before the first one)."""
        req = job.spec.request
        p = job.progress
        per_step = 1.0
        if p and p.get("step") and job.started_at:
            per_step = max(0.01, (time.time() - job.started_at) / p["step"])
        done = p["step"] if p else 0
        return round(per_step * max(1, req.steps * req.number_results - done), 2)

    @staticmethod
    def meta(job: Job) -> dict:
        """The parameters as they ran, in the API's meta names."""
        r = job.spec.request
        return {"prompt": r.positive_prompt, "model_id": r.model, "negative_prompt": r.negative_prompt,
                "scheduler": r.scheduler, "W": r.width, "H": r.height,
                "guidance_scale": r.true_cfg_scale or r.guidance, "steps": r.steps, "n_samples": r.number_results,
                "seed": r.seed, "strength": r.strength, "safety_checker": "yes" if r.safety else "no",
                "safety_checker_type": r.safety.action if r.safety else None,
                "enhance_prompt": "yes" if r.enhance_prompt else "no",
                "lora": ",".join(x.model for x in r.loras) or None,
                "lora_strength": ",".join(f"{x.weight:g}" for x in r.loras) or None,
                "base64": "yes" if job.spec.delivery.output_types[0] == "base64Data" else "no",
                "track_id": job.spec.delivery.reference, "id": str(job.number)}  # fmt: skip

    def webhook_body(self, job: Job, event: str, result: dict | None) -> dict | None:
        """One POST when the job ends: the success answer, or {status: failed, message}; both carry track_id."""
        if event != "completed":
            return None
        track = job.spec.delivery.reference
        if job.status == SUCCESS:
            return {**self.answer(job, self.intake.signer.base_url), "track_id": track}
        message = "cancelled" if job.status == CANCELLED else (job.error or {}).get("message")
        return {"status": "failed", "id": job.number, "message": message, "track_id": track}

    def fetch(self, body, ref) -> Job:
        f = Fields(body, "", lenient=True)
        owner = self.intake.authenticate(f.text("key") or None)
        if ref is None:
            ref = f.raw("request_id")
        if ref is None or not str(ref).strip().isdigit():
            raise RequestError(f"request_id must be the integer id of a request, got {ref!r}", parameter="request_id")
        try:
            return self.intake.lookup(owner, int(str(ref).strip()), noun="request with id")
        except ProtocolError as e:
            e.parameter = "request_id"
            raise


def _round(v: int) -> int:
    lo, hi = RANGES["width"]
    return int(min(hi, max(lo, SIZE_STEP * round(v / SIZE_STEP))))


# ---- routes (the fetch routes first: /api/v6/images/{endpoint} would take "fetch" too)


def _error(e: DaguerreError) -> JSONResponse:
    """Errors are HTTP 200 too, with status "error" (the official client raises on any other HTTP status)."""
    return JSONResponse({"status": "error", "message": e.message, "messege": e.message, "parameter": e.parameter,
                         "code": e.code})  # fmt: skip


async def _body(request: Request, services):
    check_json_type(request.headers.get("content-type") or "application/json")
    return parse_json(await read_capped(request, services.settings.server.max_body_bytes))


def _base(request: Request, services) -> str:
    return (services.settings.server.public_url or str(request.base_url)).rstrip("/")


async def _fetch(request: Request, services, request_id: str | None):
    door: ModelsLab = services.modelslab
    try:
        body = await _body(request, services)
        job = await in_thread(door.fetch, body, request_id)
    except DaguerreError as e:
        return _error(e)
    return door.answer(job, _base(request, services))


@router.post("/api/v6/images/fetch/{request_id}", summary="ModelsLab: a request's result")
async def fetch_by_path(request_id: str, request: Request, services: Services):
    return await _fetch(request, services, request_id)


@router.post("/api/v6/images/fetch", summary="ModelsLab: a request's result (request_id in the body)")
async def fetch_by_body(request: Request, services: Services):
    return await _fetch(request, services, None)


_FIELDS = {"key": "string", "upscale": "string", "highres_fix": "string",
           "model_id": "string", "prompt": "string", "negative_prompt": "string",
           "width": "integer", "height": "integer", "samples": "integer", "num_inference_steps": "integer",
           "guidance_scale": "number", "seed": "integer", "enhance_prompt": "string", "safety_checker": "string",
           "safety_checker_type": "string", "scheduler": "string", "use_karras_sigmas": "string",
           "lora_model": "string", "lora_strength": "string", "init_image": "string", "mask_image": "string",
           "strength": "number", "base64": "string", "webhook": "string", "track_id": "string",
           "instant_response": "string"}  # fmt: skip
_PROPS = {k: {"type": t} for k, t in _FIELDS.items()} | {
    "safety_checker_type": {"enum": list(SAFETY_TYPES)}, "scheduler": {"enum": list(SCHEDULER_NAMES)}}  # fmt: skip
GENERATE_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["key", "model_id", "prompt"], "properties": _PROPS}}}}}  # fmt: skip


@router.post("/api/v6/images/{endpoint}", summary="ModelsLab: text2img, img2img or inpaint",
             openapi_extra=GENERATE_BODY)  # fmt: skip
async def generate(endpoint: str, request: Request, services: Services):
    door: ModelsLab = services.modelslab
    try:
        if endpoint not in ENDPOINTS:
            raise ProtocolError(f"no endpoint {endpoint}; this server has {', '.join(ENDPOINTS)}, fetch",
                                code="notFound")  # fmt: skip
        body = await _body(request, services)
        job, instant, notes = await in_thread(door.generate, endpoint, body, request.headers.get("idempotency-key"))
        if not instant:
            job = await door.intake.wait(job, services.settings.server.prediction_wait_s)
    except DaguerreError as e:
        return _error(e)
    return door.answer(job, _base(request, services), notes)
