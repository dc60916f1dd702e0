"""JobSpec, the queue message: one job as the worker runs it, serialized to and from JSON here only.

A wire adapter parses a task once, at submission, into a resolved GenerationRequest (defaults filled in,
the random seed fixed, a saved character applied) and a DeliverySpec; the images it carried are stored
(ResultStore) and the spec refers to them by imageUUID. The worker needs nothing else: it never sees a
wire payload, so a new protocol teaches it nothing, and editing a character changes no queued job.

The JSON carries a schema number; `from_json` refuses one it does not know, and jobs stored before
JobSpec existed (the raw Runware task) are upgraded by the Runware adapter at start-up.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace

from PIL import Image

from daguerre.errors import RequestError
from daguerre.request import (
    AccelOptions,
    ControlRef,
    FaceFix,
    GenerationRequest,
    HiresFix,
    IpAdapterRef,
    LayerDiffuse,
    LoraRef,
    Outpaint,
    OutputSpec,
    PuLID,
    SafetyCheck,
)

SCHEMA = 1
OUTPUT_TYPES = ("URL", "base64Data", "dataURI")
DELIVERY_METHODS = ("sync", "async")
MIN_TTL = 60


@dataclass(frozen=True)
class DeliverySpec:
    """How results reach the client (the task API's options; the CLI writes files instead)."""

    protocol: str = "runware"  # the door the task came in by: it shapes reply items and webhook bodies
    method: str = "sync"  # sync: reply when done; async: acknowledge, then the client polls
    output_types: tuple[str, ...] = ("URL",)  # one or more of URL | base64Data | dataURI
    include_cost: bool = False  # add `cost` (measured compute seconds x price) per result
    ttl: int | None = None  # seconds an image stays downloadable (>= 60); None = the server default
    webhook_url: str | None = None  # each result POSTed here as it completes (Standard Webhooks signed)
    upload_endpoint: str | None = None  # each image PUT here (raw bytes), e.g. a presigned S3 URL
    webhook_events: tuple[str, ...] | None = None  # the job events webhooked (worker.EVENTS); None = the door's own
    webhook_secret: str | None = None  # sent back verbatim in X-Webhook-Secret (eachlabs), besides the signature
    reference: str | None = None  # the client's own id for the job, echoed in replies and webhooks (track_id)
    progress: bool = False  # includeProgress: pending items carry step progress and a latent preview


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs to run one job. The request holds no pixels: `images` says where they are."""

    owner: str  # API key id the job and its images belong to ("anonymous" when keys are off)
    task_uuid: str  # the client's id for the task, unique per owner
    request: GenerationRequest  # resolved at submission; its image fields are None (see `images`)
    images: dict[str, str] = field(default_factory=dict)  # image slot (see image_slots) -> stored imageUUID
    image_uuids: tuple[str, ...] = ()  # pre-allocated imageUUIDs of the results, one per image
    delivery: DeliverySpec = field(default_factory=DeliverySpec)
    task_type: str = "imageInference"  # the task type as the client named it (for reply items)
    # Shared passes with this job in them that stopped their worker (it rode with another job's claim, and was
    # queued again on its own): counted with its own deliveries, and it shares no pass any more.
    crashes: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return self.owner, self.task_uuid


def image_slots(req: GenerationRequest) -> list[tuple[str, Image.Image]]:
    """(slot, image) for every image a request carries: seed_image, mask_image, controlnets.N.guide_image,
    ip_adapters.N.guide_images.M, pulid.images.N."""
    out = [(name, getattr(req, name)) for name in ("seed_image", "mask_image") if getattr(req, name) is not None]
    out += [(f"controlnets.{i}.guide_image", c.guide_image) for i, c in enumerate(req.controlnets)]
    out += [
        (f"ip_adapters.{i}.guide_images.{j}", g)
        for i, ip in enumerate(req.ip_adapters)
        for j, g in enumerate(ip.guide_images)
    ]
    out += [(f"pulid.images.{j}", g) for j, g in enumerate(req.pulid.images if req.pulid else ())]
    return out


def with_images(req: GenerationRequest, images: Callable[[str], Image.Image | None]) -> GenerationRequest:
    """The request with each image slot set to images(slot) (None strips it)."""
    return replace(
        req,
        seed_image=images("seed_image"),
        mask_image=images("mask_image"),
        controlnets=tuple(replace(c, guide_image=images(f"controlnets.{i}.guide_image"))
                          for i, c in enumerate(req.controlnets)),
        ip_adapters=tuple(replace(ip, guide_images=tuple(images(f"ip_adapters.{i}.guide_images.{j}")
                                                         for j in range(len(ip.guide_images))))
                          for i, ip in enumerate(req.ip_adapters)),
        pulid=replace(req.pulid, images=tuple(images(f"pulid.images.{j}") for j in range(len(req.pulid.images))))
        if req.pulid else None,
    )  # fmt: skip


def build(
    owner: str,
    task_uuid: str,
    request: GenerationRequest,
    stored: dict[int, str],
    image_uuids: list[str],
    delivery: DeliverySpec,
    task_type: str = "imageInference",
) -> JobSpec:
    """A spec from a resolved request whose images were stored: `stored` maps id(image) -> imageUUID."""
    images = {}
    for slot, im in image_slots(request):
        if id(im) not in stored:
            raise ValueError(f"the image in {slot} was not stored before the job was built")
        images[slot] = stored[id(im)]
    return JobSpec(owner, task_uuid, with_images(request, lambda _slot: None), images, tuple(image_uuids), delivery,
                   task_type)  # fmt: skip


def new(owner: str, task_uuid: str, request: GenerationRequest, delivery: DeliverySpec | None = None) -> JobSpec:
    """A spec for a resolved request without input images (a library caller's, a benchmark's), with fresh
    result imageUUIDs."""
    image_uuids = [str(uuid.uuid4()) for _ in range(request.number_results)]
    return build(owner, task_uuid, request, {}, image_uuids, delivery or DeliverySpec())


def hydrate(spec: JobSpec, load: Callable[[str, bool], Image.Image]) -> GenerationRequest:
    """The request with its images loaded: load(imageUUID, is_mask) -> decoded image (the worker's store read)."""
    loaded = {slot: load(image_uuid, slot == "mask_image") for slot, image_uuid in spec.images.items()}
    return with_images(spec.request, loaded.get)


# ---- JSON: the one place a JobSpec becomes text and back

_PARTS = {"output": OutputSpec, "outpaint": Outpaint, "accelerator": AccelOptions, "safety": SafetyCheck,
          "hires_fix": HiresFix, "face_fix": FaceFix, "layer_diffuse": LayerDiffuse,
          "pulid": PuLID}  # fmt: skip
_LISTS = {"loras": LoraRef, "controlnets": ControlRef, "ip_adapters": IpAdapterRef}
_IMAGES = {"seed_image", "mask_image", "guide_image", "guide_images"}


def _plain(obj) -> dict:
    """A dataclass as JSON-ready data, without its image fields (they travel as imageUUIDs)."""
    return {k: v for k, v in asdict(obj).items() if k not in _IMAGES}


def to_json(spec: JobSpec) -> str:
    req = spec.request
    request = _plain(req)
    for name in _LISTS:
        request[name] = [_plain(x) for x in getattr(req, name)]
    body = {
        "schema": SCHEMA,
        "owner": spec.owner,
        "task_uuid": spec.task_uuid,
        "task_type": spec.task_type,
        "request": request,
        "ip_adapter_images": [len(ip.guide_images) for ip in req.ip_adapters],
        "images": spec.images,
        "image_uuids": list(spec.image_uuids),
        "delivery": asdict(spec.delivery),
        "crashes": spec.crashes,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def is_spec(data: dict) -> bool:
    """True for a stored JobSpec body (jobs stored before JobSpec hold the raw task instead)."""
    return isinstance(data, dict) and "schema" in data and "request" in data


def from_json(text: str | dict) -> JobSpec:
    data = json.loads(text) if isinstance(text, str) else text
    if data.get("schema") != SCHEMA:
        raise RequestError(f"job spec schema {data.get('schema')!r} is not {SCHEMA} (a newer Daguerre wrote it?)")
    r = dict(data["request"])
    for name, cls in _PARTS.items():
        if r.get(name) is not None:
            r[name] = cls(**r[name])
    if r.get("pulid") is not None:
        r["pulid"] = replace(r["pulid"], images=tuple(r["pulid"].images))
    r["loras"] = tuple(LoraRef(**x) for x in r.get("loras", ()))
    r["controlnets"] = tuple(ControlRef(guide_image=None, **x) for x in r.get("controlnets", ()))
    counts = data.get("ip_adapter_images", [])
    r["ip_adapters"] = tuple(
        IpAdapterRef(guide_images=(None,) * n, **x) for x, n in zip(r.get("ip_adapters", ()), counts, strict=True)
    )
    known = {f.name for f in fields(GenerationRequest)}
    request = GenerationRequest(**{k: v for k, v in r.items() if k in known})
    d = data["delivery"]
    events = d.get("webhook_events")
    delivery = DeliverySpec(**{**d, "output_types": tuple(d.get("output_types", ("URL",))),
                               "webhook_events": tuple(events) if events is not None else None})  # fmt: skip
    return JobSpec(
        owner=data["owner"],
        task_uuid=data["task_uuid"],
        request=request,
        images=dict(data.get("images", {})),
        image_uuids=tuple(data.get("image_uuids", ())),
        delivery=delivery,
        task_type=data.get("task_type", "imageInference"),
        crashes=int(data.get("crashes", 0)),
    )
