"""The Runware task protocol, shared by REST (POST /v1) and WebSocket (/v1).

Tasks: authentication, ping, imageInference, getResponse, imageUpload, promptEnhance. Replies are
`{"data": [...]}` and `{"errors": [...]}` routed by taskUUID; a success item never carries
`error`/`code` keys. Error codes are listed in docs/api.md.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from daguerre.api.keys import ANONYMOUS, KeyStore
from daguerre.api.schema import parse_image_inference
from daguerre.config import ServerSettings, Settings
from daguerre.errors import DaguerreError, ImageInputError, RequestError, UnsupportedError
from daguerre.imaging import decode, read_source
from daguerre.jobs.characters import Characters
from daguerre.jobs.outbound import OutboundClient
from daguerre.jobs.queue import QueueFull
from daguerre.jobs.service import JobService, check_task_uuid
from daguerre.jobs.store import ERROR, Job
from daguerre.request import DeliverySpec, check_text
from daguerre.storage import CONTENT_TYPES, ResultStore, StoredObject, UrlSigner

# HTTP status for each error code on REST (everything else: 400).
HTTP_STATUS = {
    "imageNotFound": 404,
    "missingApiKey": 401,
    "invalidApiKey": 401,
    "taskNotFound": 404,
    "modelNotFound": 400,
    "payloadTooLarge": 413,
    "unsupportedMediaType": 415,
    "queueFull": 429,
    "serverShuttingDown": 503,
    "internalError": 500,
}
TASK_TYPES = ("authentication", "ping", "imageInference", "getResponse", "imageUpload", "promptEnhance")


class ProtocolError(DaguerreError):
    """An error at the protocol level (auth, task type, routing)."""


def error_item(e: DaguerreError, task: dict | None) -> dict:
    task = task if isinstance(task, dict) else {}
    return {
        "code": e.code,
        "message": e.message,
        "parameter": e.parameter,
        "taskType": task.get("taskType"),
        "taskUUID": task.get("taskUUID"),
    }


@dataclass
class Reply:
    """What one batch of tasks produced."""

    data: list[dict]
    errors: list[dict]

    def body(self) -> dict:
        out = {}
        if self.data:
            out["data"] = self.data
        if self.errors:
            out["errors"] = self.errors
        return out or {"data": []}


class Protocol:
    """Turns tasks into jobs and jobs into reply items. Holds no per-connection state."""

    def __init__(
        self,
        *,
        settings: Settings,
        jobs: JobService,
        results: ResultStore,
        signer: UrlSigner,
        keys: KeyStore,
        anonymous: bool,
        is_draining: Callable[[], bool],
        outbound: OutboundClient,
        catalog,
        characters: Characters | None = None,
    ):
        self.settings = settings
        self.server: ServerSettings = settings.server
        self.jobs = jobs
        self.results = results
        self.signer = signer
        self.keys = keys
        self.anonymous = anonymous
        self.is_draining = is_draining
        self.outbound = outbound
        self.catalog = catalog  # the model catalog: requests are checked against it at submission
        self.characters = characters

    def characters_for(self, owner: str):
        """This owner's saved-character lookup for parse_image_inference (None: no store)."""
        if self.characters is None:
            return None
        return lambda name: self.characters.get(owner, name)

    # ---- authentication
    def authenticate(self, api_key: str | None) -> str:
        """The owner id for a key; anonymous when allowed and no key is given."""
        if api_key:
            owner = self.keys.verify(api_key)
            if owner is None:
                raise ProtocolError("invalid API key", parameter="apiKey", code="invalidApiKey")
            return owner
        if self.anonymous:
            return ANONYMOUS
        raise ProtocolError(
            "an API key is required: 'Authorization: Bearer KEY' or an authentication task",
            parameter="apiKey",
            code="missingApiKey",
        )

    # ---- images
    def fetch_bytes(self, value: str, parameter: str) -> bytes:
        """The encoded bytes behind an image value from the wire: URL (guarded fetch), data URI or base64."""
        limits = self.settings.image_limits
        if value.startswith(("http://", "https://")):
            resp = self.outbound.request("GET", value, parameter=parameter, max_redirects=3, max_bytes=limits.max_bytes)
            if resp.status != 200:
                raise ImageInputError(
                    f"{parameter}: fetching the image URL answered HTTP {resp.status}", parameter=parameter
                )
            return resp.body
        return read_source(value, parameter=parameter, limits=limits, allow_paths=False)

    def resolver_for(self, owner: str, captured: dict[str, tuple[str, bytes, str]] | None = None):
        """Image resolver for parse_image_inference: an imageUUID of this owner, a URL, data URI or base64.

        With `captured`, every non-UUID image value is recorded (value -> (parameter, encoded bytes, file
        extension)), so the submission can store them once, without decoding them again, and the job refers
        to them by UUID.
        """
        limits = self.settings.image_limits

        def resolve(value: str, parameter: str, is_mask: bool):
            if _is_uuid(value):
                found = self.results.get(value.lower(), owner)
                if found is None:
                    raise ImageInputError(
                        f"{parameter}: no image with UUID {value} (unknown, expired or not yours)",
                        parameter=parameter,
                        code="imageNotFound",
                    )
                return decode(found[1], parameter=parameter, limits=limits, mask=is_mask)[0]
            data = self.fetch_bytes(value, parameter)
            image, ext = decode(data, parameter=parameter, limits=limits, mask=is_mask)
            if captured is not None:
                captured[value] = (parameter, data, ext)
            return image

        return resolve

    def upload(self, owner: str, task: dict) -> dict:
        """imageUpload: store the image for this owner; its imageUUID works wherever an image is accepted."""
        check_task_uuid(task.get("taskUUID"))
        unknown = set(task) - {"taskType", "taskUUID", "image", "deliveryMethod"}
        if unknown:
            raise RequestError(f"unknown field {sorted(unknown)[0]!r} in imageUpload", parameter=sorted(unknown)[0])
        # SDKs stamp deliveryMethod on every task; an upload completes at once either way.
        if task.get("deliveryMethod", "sync") not in ("sync", "async"):
            raise RequestError(
                f"deliveryMethod must be 'sync' or 'async', got {task['deliveryMethod']!r}", parameter="deliveryMethod"
            )
        value = task.get("image")
        if not isinstance(value, str) or not value:
            raise RequestError("image is required: a data URI or base64 string", parameter="image")
        image_uuid, ext, expires = self.store_upload(owner, self.fetch_bytes(value, "image"), "image")
        return {
            "taskType": "imageUpload",
            "taskUUID": task["taskUUID"],
            "imageUUID": image_uuid,
            "imageURL": self.signer.sign(image_uuid, ext, expires),
        }

    def store_upload(self, owner: str, data: bytes, parameter: str, ext: str | None = None) -> tuple[str, str, float]:
        """Keep an input image for this owner: (imageUUID, ext, expiry). Bytes not yet decoded (ext None) are
        validated first; `ext` says they already were."""
        if ext is None:
            ext = decode(data, parameter=parameter, limits=self.settings.image_limits)[1]
        image_uuid = str(uuid.uuid4())
        expires = time.time() + self.server.default_ttl
        self.results.put(StoredObject(uuid=image_uuid, owner=owner, ext=ext, kind="upload", expires_at=expires), data)
        return image_uuid, ext, expires

    # ---- prompt studio
    def prompt_enhance(self, task: dict) -> list[dict]:
        """promptEnhance: up to promptVersions distinct photographic expansions of a prompt (no model needed).

        Fields: prompt (required), promptMaxLength 12-400 (default 380, characters; the prompt itself is
        never cut), promptVersions 1-5 (default 1), seed (a Daguerre extension; default 0: the same
        prompt gives the same variants), includeCost (cost 0: it runs no model).
        """
        from daguerre.prompts.studio import enhance_variants, lint

        task_uuid = check_task_uuid(task.get("taskUUID"))
        known = {"taskType", "taskUUID", "prompt", "promptMaxLength", "promptVersions", "seed", "includeCost",
                 "webhookURL"}  # fmt: skip
        unknown = sorted(set(task) - known)
        if unknown:
            raise RequestError(f"unknown field {unknown[0]!r} in promptEnhance", parameter=unknown[0])
        if task.get("webhookURL") is not None:
            raise UnsupportedError("webhookURL is not supported for promptEnhance (it answers at once)",
                                   parameter="webhookURL")  # fmt: skip
        prompt = task.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise RequestError("prompt is required (text) for promptEnhance", parameter="prompt")
        check_text("prompt", prompt)
        checks = (("promptMaxLength", 380, 12, 400), ("promptVersions", 1, 1, 5), ("seed", 0, 0, 2**63 - 1))
        values = {}
        for name, default, lo, hi in checks:
            v = task.get(name, default)
            v = int(v) if isinstance(v, float) and v.is_integer() else v
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise RequestError(f"{name} must be an integer in [{lo}, {hi}], got {v!r}", parameter=name)
            values[name] = v
        variants = enhance_variants(
            prompt, values["seed"], values["promptVersions"], max_length=max(values["promptMaxLength"], len(prompt))
        )
        out = []
        for v in variants:
            item = {"taskType": "promptEnhance", "taskUUID": task_uuid, "text": v.text}
            warnings = [*v.notes, *map(str, lint(v.text))]
            if warnings:
                item["warnings"] = warnings
            if task.get("includeCost"):
                item["cost"] = 0
            out.append(item)
        return out

    # ---- inference
    def submit(self, owner: str, task: dict) -> tuple[Job, DeliverySpec]:
        """Validate and enqueue an imageInference task (or find the identical one already submitted).

        A refusal (bad input, queue full) leaves nothing behind: no job and no stored image, so the client's
        retry of the same task is a fresh submission.
        """
        if self.is_draining():
            raise ProtocolError("the server is shutting down and takes no new tasks", code="serverShuttingDown")
        task_uuid = check_task_uuid(task.get("taskUUID"))
        existing = self.jobs.get(owner, task_uuid)
        if existing is not None:  # a resend: the same job, without parsing or fetching anything again
            self.jobs.check_same(existing, task)
            return existing, delivery_of(existing)
        captured: dict[str, tuple[str, bytes, str]] = {}
        req, delivery = parse_image_inference(task, self.resolver_for(owner, captured), self.characters_for(owner))
        self.check_models(req)
        for name, url in (("webhookURL", delivery.webhook_url), ("uploadEndpoint", delivery.upload_endpoint)):
            if url is not None:
                self.outbound.check_url(url, parameter=name)  # refused now, and re-checked when sent
        # Inline and URL images are stored once; the job refers to them by UUID (small rows, one fetch).
        stored: dict[str, str] = {}
        try:
            for value, (name, data, ext) in captured.items():
                stored[value] = self.store_upload(owner, data, name, ext)[0]
            payload = _with_images(task, stored)
            if req.character is not None:  # the character's locked seed, not a random one, is what the job runs
                payload["seed"] = req.seed
            job, created = self.jobs.submit(owner, task, req.number_results, payload=payload)
        except QueueFull as e:
            self._forget(stored)
            raise ProtocolError(f"{e}; retry later", code="queueFull") from e
        except BaseException:
            self._forget(stored)
            raise
        if not created:  # an identical submission won the race: its job has its own copies
            self._forget(stored)
        return job, delivery

    def _forget(self, stored: dict[str, str]) -> None:
        for image_uuid in stored.values():
            self.results.delete(image_uuid)

    def check_models(self, req) -> None:
        """Every model a request names must be in the catalog (paths only where the operator allows them)."""
        refs = [(req.model, "model"), *((x.model, "lora.model") for x in req.loras),
                *((x.model, "controlNet.model") for x in req.controlnets),
                *((x.model, "ipAdapters.model") for x in req.ip_adapters)]  # fmt: skip
        for ref, parameter in refs:
            self.catalog.get(ref, parameter=parameter, allow_paths=self.server.allow_model_paths)

    def items(self, job: Job, delivery: DeliverySpec, *, with_status: bool, only_new: set[str] | None = None) -> list:
        """Reply items for a job: one per finished image (and, with status, one per pending image)."""
        out = []
        done = {r["imageUUID"]: r for r in job.results}
        for image_uuid in job.image_uuids:
            if only_new is not None and image_uuid not in only_new:
                continue
            r = done.get(image_uuid)
            if r is None:
                if with_status and job.status != ERROR:
                    out.append(
                        {
                            "taskType": job.task_type,
                            "taskUUID": job.task_uuid,
                            "imageUUID": image_uuid,
                            "status": "processing",
                        }
                    )
                continue
            item = self._result_item(job, r, delivery)
            if item is not None:
                if with_status:
                    item["status"] = "success"
                out.append(item)
        return out

    def _result_item(self, job: Job, r: dict, delivery: DeliverySpec) -> dict | None:
        found = self.results.get(r["imageUUID"], job.owner)
        if found is None:  # expired and swept
            return None
        obj, data = found
        item = {
            "taskType": job.task_type,
            "taskUUID": job.task_uuid,
            "imageUUID": r["imageUUID"],
            "seed": r["seed"],
            "NSFWContent": False,
        }
        for kind in delivery.output_types:
            if kind == "URL":
                item["imageURL"] = self.signer.sign(obj.uuid, obj.ext, obj.expires_at)
            elif kind == "base64Data":
                item["imageBase64Data"] = base64.b64encode(data).decode()
            else:
                item["imageDataURI"] = f"data:{CONTENT_TYPES[obj.ext]};base64,{base64.b64encode(data).decode()}"
        if delivery.include_cost:
            item["cost"] = round(r["seconds"] * self.server.price_per_second, 6)
        if r.get("warnings"):  # prompt lint (a Daguerre extension; SDKs ignore unknown fields)
            item["warnings"] = r["warnings"]
        return item

    def job_error(self, job: Job) -> dict:
        e = job.error or {}
        return {
            "code": e.get("code", "internalError"),
            "message": e.get("message", "task failed"),
            "parameter": e.get("parameter"),
            "taskType": job.task_type,
            "taskUUID": job.task_uuid,
        }

    def lookup(self, owner: str, task: dict) -> tuple[Job, DeliverySpec]:
        """getResponse: the job (this owner's only) and how its results are shaped."""
        task_uuid = check_task_uuid(task.get("taskUUID"))
        job = self.jobs.get(owner, task_uuid)
        if job is None:
            raise ProtocolError(f"no task {task_uuid} for this API key", parameter="taskUUID", code="taskNotFound")
        return job, delivery_of(job)

    async def wait(self, job: Job, timeout: float, on_change: Callable[[Job], Awaitable[None]] | None = None) -> Job:
        """Wait until the job is done (or `timeout`), calling `on_change` on the event loop for each change."""
        loop = asyncio.get_running_loop()
        changes: asyncio.Queue[Job] = asyncio.Queue()
        unsubscribe = self.jobs.subscribe(job.key, lambda j: loop.call_soon_threadsafe(changes.put_nowait, j))
        try:
            current = self.jobs.get(*job.key) or job  # it may have changed before we subscribed
            if on_change is not None:
                await on_change(current)
            deadline = loop.time() + timeout
            while not current.done:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(changes.get(), remaining)
                except TimeoutError:
                    break
                current = self.jobs.get(*job.key) or current
                if on_change is not None:
                    await on_change(current)
            return current
        finally:
            unsubscribe()


def delivery_of(job: Job) -> DeliverySpec:
    """Delivery options re-read from the stored task (already validated at submission)."""
    t = job.payload
    types = t.get("outputType", "URL")
    return DeliverySpec(
        method=t.get("deliveryMethod", "sync"),
        output_types=tuple(types) if isinstance(types, list) else (types,),
        include_cost=bool(t.get("includeCost", False)),
        ttl=t.get("ttl"),
        webhook_url=t.get("webhookURL"),
        upload_endpoint=t.get("uploadEndpoint"),
    )


def _with_images(task: dict, stored: dict[str, str]) -> dict:
    """The task with every image value found in `stored` (inline or URL -> imageUUID) replaced, wherever it
    was given: seedImage / maskImage at the top level or in inputs, and each controlNet guideImage."""

    def swap(value):
        return stored.get(value, value) if isinstance(value, str) else value

    out = dict(task)
    for name in ("seedImage", "maskImage"):
        if name in out:
            out[name] = swap(out[name])
    if isinstance(out.get("inputs"), dict):
        out["inputs"] = {k: swap(v) for k, v in out["inputs"].items()}
    if isinstance(out.get("ipAdapters"), list):
        out["ipAdapters"] = [
            {
                **a,
                **{
                    k: (swap(a[k]) if k == "guideImage" else [swap(x) for x in a[k]])
                    for k in ("guideImage", "guideImages")
                    if k in a and a[k] is not None
                },
            }
            if isinstance(a, dict)
            else a
            for a in out["ipAdapters"]
        ]
    if isinstance(out.get("controlNet"), list):
        out["controlNet"] = [
            {**c, "guideImage": swap(c.get("guideImage"))} if isinstance(c, dict) else c for c in out["controlNet"]
        ]
    return out


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower()
    except (ValueError, AttributeError):
        return False
