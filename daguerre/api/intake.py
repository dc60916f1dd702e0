"""What every front door shares: authentication, input images from the wire, turning a parsed request into
a queued JobSpec (with the per-key in-flight limit), finding, cancelling and waiting on a job, and the
job's outputs as links. A protocol adapter (runware.py, eachlabs.py, replicate.py, modelslab.py) parses its
own wire format and shapes its own replies; everything between is here, once.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Awaitable, Callable

from daguerre.api.keys import ANONYMOUS, KeyStore
from daguerre.config import Settings
from daguerre.engine.models.catalog import Catalog
from daguerre.engine.plan import resolved
from daguerre.errors import DaguerreError, ImageInputError, UnsupportedError
from daguerre.imaging import CONTENT_TYPES, EXTENSION, decode, read_source
from daguerre.jobs import spec as specs
from daguerre.jobs.characters import Characters
from daguerre.jobs.outbound import OutboundClient
from daguerre.jobs.queue import QueueFull
from daguerre.jobs.service import JobService, fingerprint
from daguerre.jobs.spec import DeliverySpec
from daguerre.jobs.store import Job
from daguerre.request import HIRES_LATENT, GenerationRequest, SafetyCheck
from daguerre.storage import ResultStore, StoredObject, UrlSigner

# HTTP status for each error code, on every door that answers errors with HTTP statuses (everything else: 400).
HTTP_STATUS = {
    "imageNotFound": 404,
    "missingApiKey": 401,
    "invalidApiKey": 401,
    "taskNotFound": 404,
    "characterNotFound": 404,
    "taskRunning": 409,
    "modelNotFound": 400,
    "payloadTooLarge": 413,
    "unsupportedMediaType": 415,
    "queueFull": 429,
    "inFlightLimit": 429,
    "serverShuttingDown": 503,
    "internalError": 500,
    "taskCrashedWorker": 500,
    "serviceUnavailable": 503,
}
# Namespace of the job ids made from an Idempotency-Key header (doors without client-chosen ids).
_IDEMPOTENCY = uuid.UUID("6b1f9a52-3c1e-4d7a-9a0e-1c2b3d4e5f60")


class ProtocolError(DaguerreError):
    """An error at the protocol level (auth, task type, routing, capacity)."""


class Inputs:
    """The images one submission brought: each decoded once, its bytes kept to be stored once."""

    def __init__(self) -> None:
        self.captured: dict[int, tuple[str, bytes, str]] = {}  # id(image) -> (parameter, bytes, ext): to store
        self.stored: dict[int, str] = {}  # id(image) -> imageUUID, for images the client gave by imageUUID


class Intake:
    """Authentication, image inputs and submission, for every door. Holds no per-connection state."""

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
        catalog: Catalog,
        characters: Characters | None = None,
        safety_available: bool = False,
    ):
        self.settings = settings
        self.server = settings.server
        self.jobs = jobs
        self.results = results
        self.signer = signer
        self.keys = keys
        self.anonymous = anonymous
        self.is_draining = is_draining
        self.outbound = outbound
        self.catalog = catalog  # requests are checked and resolved against it at submission
        self.characters = characters
        self.safety_available = safety_available  # the engine has a working safety checker

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

    def characters_for(self, owner: str):
        """This owner's saved-character lookup for a parser (None: no store)."""
        if self.characters is None:
            return None
        return lambda name: self.characters.get(owner, name)

    # ---- images from the wire
    def fetch_bytes(self, value: str, parameter: str) -> bytes:
        """The encoded bytes behind an image value: URL (guarded fetch), data URI or base64, never a path."""
        limits = self.settings.image_limits
        if value.startswith(("http://", "https://")):
            resp = self.outbound.request("GET", value, parameter=parameter, max_redirects=3, max_bytes=limits.max_bytes)
            if resp.status != 200:
                raise ImageInputError(
                    f"{parameter}: fetching the image URL answered HTTP {resp.status}", parameter=parameter
                )
            return resp.body
        return read_source(value, parameter=parameter, limits=limits, allow_paths=False)

    def resolver(self, owner: str, inputs: Inputs):
        """resolve(value, parameter, is_mask) -> image, for a parser: an imageUUID of this owner, a URL, data URI
        or base64. Every image is decoded once; `inputs` records what the submission must store."""
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
                image = decode(found[1], parameter=parameter, limits=limits, mask=is_mask)[0]
                inputs.stored[id(image)] = value.lower()
                return image
            data = self.fetch_bytes(value, parameter)
            image, ext = decode(data, parameter=parameter, limits=limits, mask=is_mask)
            inputs.captured[id(image)] = (parameter, data, ext)
            return image

        return resolve

    def store_upload(self, owner: str, data: bytes, parameter: str, ext: str | None = None) -> tuple[str, str, float]:
        """Keep an input image for this owner: (imageUUID, ext, expiry). Bytes not yet decoded (ext None) are
        validated first; `ext` says they already were."""
        if ext is None:
            ext = decode(data, parameter=parameter, limits=self.settings.image_limits)[1]
        image_uuid = str(uuid.uuid4())
        expires = time.time() + self.server.default_ttl
        self.results.put(StoredObject(uuid=image_uuid, owner=owner, ext=ext, kind="upload", expires_at=expires), data)
        return image_uuid, ext, expires

    # ---- request pieces every door maps the same way
    def safety(self, asked: bool | None, *, default: bool, action: str | None = None, parameter: str = "safety"):
        """The SafetyCheck for a door's flag: asked True -> checked (an error when the server has no checker);
        False -> not; None (not sent) -> the door's `default`, when the server has a checker."""
        if asked is None:
            asked = default and self.safety_available
        elif asked and not self.safety_available:
            raise UnsupportedError(
                f"{parameter}: this server has no safety checker (settings safety.checker; docs/models.md)",
                parameter=parameter,
            )
        return SafetyCheck(action=action) if asked else None

    # ---- submission
    def job_id(self, owner: str, door: str, idempotency_key: str | None) -> str:
        """A new job id for a door whose clients do not choose one: random, or derived from the client's
        Idempotency-Key header, so a resend of the same body finds the same job (a different body is an error)."""
        if idempotency_key is None:
            return str(uuid.uuid4())
        if not idempotency_key.strip() or len(idempotency_key) > 255:
            raise ProtocolError("Idempotency-Key must be 1-255 characters", parameter="Idempotency-Key",
                                code="invalidParameter")  # fmt: skip
        return str(uuid.uuid5(_IDEMPOTENCY, f"{owner}\n{door}\n{idempotency_key}"))

    def check_capacity(self, owner: str) -> None:
        """A key with server.max_in_flight_per_key queued and running jobs gets no new one (429)."""
        limit = self.server.max_in_flight_per_key
        if limit and self.jobs.store.count_unfinished(owner) >= limit:
            raise ProtocolError(
                f"this API key has {limit} jobs queued or running (server.max_in_flight_per_key); "
                "wait for some to finish",
                code="inFlightLimit",
            )

    def check_open(self) -> None:
        """A draining server takes no new tasks."""
        if self.is_draining():
            raise ProtocolError("the server is shutting down and takes no new tasks", code="serverShuttingDown")

    def existing(self, owner: str, task_uuid: str, task: dict, idempotency_key: str | None = None) -> Job | None:
        """The job a resend of `task` refers to (checked to be the same task), or None for a new one."""
        job = self.jobs.get(owner, task_uuid)
        if job is not None:
            try:
                self.jobs.check_same(job, fingerprint(task))
            except DaguerreError as e:
                if idempotency_key is None:
                    raise
                raise ProtocolError(f"Idempotency-Key {idempotency_key!r} was already used with a different body; "
                                    "use a new key per request", parameter="Idempotency-Key",
                                    code=e.code) from None  # fmt: skip
        return job

    def check_models(self, req: GenerationRequest) -> None:
        """Every model a request names must be in the catalog (paths only where the operator allows them)."""
        refs = [(req.model, "model"), *((x.model, "lora.model") for x in req.loras),
                *((x.model, "controlNet.model") for x in req.controlnets),
                *((x.model, "ipAdapters.model") for x in req.ip_adapters)]  # fmt: skip
        if req.hires_fix is not None and req.hires_fix.model not in (None, HIRES_LATENT):
            refs.append((req.hires_fix.model, "hiresFix.model"))
        for ref, parameter in refs:
            self.catalog.get(ref, parameter=parameter, allow_paths=self.server.allow_model_paths)

    def submit(
        self, owner: str, task_uuid: str, task: dict, req: GenerationRequest, delivery: DeliverySpec, inputs: Inputs,
        task_type: str = "imageInference",
    ) -> Job:  # fmt: skip
        """Queue a parsed request as a JobSpec: models checked, defaults resolved, images stored once.

        A refusal (bad input, queue full) leaves nothing behind: no job and no stored image, so the client's
        retry of the same task is a fresh submission.
        """
        self.check_open()
        self.check_capacity(owner)
        self.check_models(req)
        req = resolved(req, self.catalog)  # what will run, with this model's defaults and a fixed seed
        for name, url in (("webhookURL", delivery.webhook_url), ("uploadEndpoint", delivery.upload_endpoint)):
            if url is not None:
                self.outbound.check_url(url, parameter=name)  # refused now, and re-checked when sent
        new: list[str] = []
        try:
            stored = dict(inputs.stored)
            for key, (parameter, data, ext) in inputs.captured.items():
                stored[key] = self.store_upload(owner, data, parameter, ext)[0]
                new.append(stored[key])
            image_uuids = [str(uuid.uuid4()) for _ in range(req.number_results)]
            spec = specs.build(owner, task_uuid, req, stored, image_uuids, delivery, task_type)
            job, created = self.jobs.submit(spec, fingerprint(task))
        except QueueFull as e:
            self._forget(new)
            raise ProtocolError(f"{e}; retry later", code="queueFull") from e
        except BaseException:
            self._forget(new)
            raise
        if not created:  # an identical submission won the race: its job has its own copies
            self._forget(new)
        return job

    def _forget(self, image_uuids: list[str]) -> None:
        for image_uuid in image_uuids:
            self.results.delete(image_uuid)

    # ---- jobs after submission
    def find(self, owner: str, ref: str | int) -> Job | None:
        """This owner's job by id (a UUID) or by the store's number (the integer ids of ModelsLab)."""
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit() and len(ref) < 19):
            return self.jobs.store.get_number(owner, int(ref))
        if not isinstance(ref, str) or not _is_uuid(ref):
            return None
        return self.jobs.get(owner, ref.lower())

    def cancel(self, owner: str, ref: str | int) -> Job | None:
        """Ask for this owner's job to stop (queued: at once; running: at its next step). None: no such job."""
        job = self.find(owner, ref)
        return self.jobs.cancel(owner, job.task_uuid) if job is not None else None

    def lookup(self, owner: str, ref: str | int, *, cancel: bool = False, noun: str = "prediction") -> Job:
        """find (or, with cancel, cancel) this owner's job; taskNotFound naming the `noun` when there is none."""
        job = self.cancel(owner, ref) if cancel else self.find(owner, ref)
        if job is None:
            raise ProtocolError(f"no {noun} {ref} for this API key", parameter="id", code="taskNotFound")
        return job

    def outputs(self, job: Job, kind: str = "URL") -> list[str]:
        """The job's finished images in order: signed links (URL), data URIs (dataURI) or bare base64
        (base64Data). Images already expired are left out."""
        out = []
        for r in sorted(job.results, key=lambda r: r.get("index", 0)):
            found = self.results.get(r["imageUUID"], job.owner)
            if found is None:
                continue
            obj, data = found
            if kind == "URL":
                out.append(self.signer.sign(obj.uuid, obj.ext, obj.expires_at))
            else:
                b64 = base64.b64encode(data).decode()
                out.append(f"data:{CONTENT_TYPES[obj.ext]};base64,{b64}" if kind == "dataURI" else b64)
        return out

    def future_links(self, job: Job) -> list[str]:
        """The links the job's images will have once made (they answer 404 until then)."""
        ext = EXTENSION[job.spec.request.output.format]
        expires = job.created_at + (job.spec.delivery.ttl or self.server.default_ttl)
        return [self.signer.sign(u, ext, expires) for u in job.image_uuids]

    # ---- waiting
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


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower()
    except (ValueError, AttributeError):
        return False
