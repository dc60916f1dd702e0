"""The Runware task protocol, shared by REST (POST /v1) and WebSocket (/v1): one dispatch table.

Tasks: authentication, ping, imageInference, getResponse, imageUpload, promptEnhance. Replies are
`{"data": [...]}` and `{"errors": [...]}` routed by taskUUID; a success item never carries
`error`/`code` keys. Error codes are listed in docs/api.md. The transports (rest.py, ws.py) handle
authentication and what "sync" means to them; every task goes through `Runware.handle`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field

from daguerre.api.intake import Inputs, Intake, ProtocolError
from daguerre.api.schema import parse_image_inference
from daguerre.errors import DaguerreError, RequestError, UnsupportedError
from daguerre.imaging import CONTENT_TYPES, EXTENSION
from daguerre.jobs import spec as specs
from daguerre.jobs.service import check_task_uuid
from daguerre.jobs.spec import JobSpec
from daguerre.jobs.store import CANCELLED, ERROR, QUEUED, SUCCESS, Job
from daguerre.request import check_text

# cancelTask is a Daguerre extension (the studio's cancel button): the reference API has no cancel.
TASK_TYPES = (
    "authentication",
    "ping",
    "imageInference",
    "getResponse",
    "imageUpload",
    "promptEnhance",
    "cancelTask",
    "imageControlNetPreProcess",
)


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

    data: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)

    def body(self) -> dict:
        out = {}
        if self.data:
            out["data"] = self.data
        if self.errors:
            out["errors"] = self.errors
        return out or {"data": []}


@dataclass
class Running:
    """A sync imageInference in progress: the transport waits for it (REST) or streams it (WebSocket)."""

    job: Job


def check_task_type(task: dict) -> str:
    task_type = task.get("taskType")
    if task_type not in TASK_TYPES:
        raise ProtocolError(
            f"taskType {task_type!r} is not supported; supported: {', '.join(TASK_TYPES)}",
            parameter="taskType",
            code="unsupportedTaskType",
        )
    return task_type


class Runware:
    """Runware tasks -> jobs, and jobs -> Runware reply items and webhook bodies."""

    def __init__(self, intake: Intake):
        self.intake = intake
        self.server = intake.server
        # taskType -> handler(owner, task) -> Reply (answered now) | Running (a sync job to wait on)
        self.handlers: dict[str, Callable[[str, dict], Reply | Running]] = {
            "ping": lambda owner, task: Reply([{"taskType": "ping", "pong": True}]),
            "imageUpload": self.upload,
            "promptEnhance": self.prompt_enhance,
            "getResponse": self.get_response,
            "imageInference": self.inference,
            "cancelTask": self.cancel,
            "imageControlNetPreProcess": self.preprocess,
        }

    def handle(self, owner: str, task: dict) -> Reply | Running:
        """Run one authenticated task (blocking: transports call it from a worker thread)."""
        return self.handlers[check_task_type(task)](owner, task)

    # ---- tasks
    def upload(self, owner: str, task: dict) -> Reply:
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
        image_uuid, ext, expires = self.intake.store_upload(owner, self.intake.fetch_bytes(value, "image"), "image")
        item = {"taskType": "imageUpload", "taskUUID": task["taskUUID"], "imageUUID": image_uuid,
                "imageURL": self.intake.signer.sign(image_uuid, ext, expires)}  # fmt: skip
        return Reply([item])

    def prompt_enhance(self, owner: str, task: dict) -> Reply:
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
        return Reply(out)

    def get_response(self, owner: str, task: dict) -> Reply:
        """getResponse: the job (this owner's only), one item per image, or its error."""
        task_uuid = check_task_uuid(task.get("taskUUID"))
        job = self.intake.jobs.get(owner, task_uuid)
        if job is None:
            raise ProtocolError(f"no task {task_uuid} for this API key", parameter="taskUUID", code="taskNotFound")
        return self.reply_for(job, with_status=True)

    def preprocess(self, owner: str, task: dict) -> Reply:
        """imageControlNetPreProcess: a guide image from an input image (canny), kept for this owner so its
        guideImageUUID works as a controlNet guideImage."""
        import io

        from daguerre.imaging import canny_edges
        from daguerre.request import CANNY_THRESHOLDS

        check_task_uuid(task.get("taskUUID"))
        fields = {"taskType", "taskUUID", "inputImage", "preProcessorType", "lowThresholdCanny", "highThresholdCanny",
                  "outputType", "outputFormat", "deliveryMethod", "includeCost"}  # fmt: skip
        unknown = sorted(set(task) - fields)
        if unknown:
            raise RequestError(f"unknown field {unknown[0]!r} in imageControlNetPreProcess", parameter=unknown[0])
        kind = task.get("preProcessorType", "canny")
        if kind != "canny":
            raise UnsupportedError(f"preProcessorType {kind!r} is not supported yet (canny is)",
                                   parameter="preProcessorType")  # fmt: skip
        low, high = (task.get(k, d) for k, d in zip(("lowThresholdCanny", "highThresholdCanny"), CANNY_THRESHOLDS,
                                                      strict=True))  # fmt: skip
        for name, v in (("lowThresholdCanny", low), ("highThresholdCanny", high)):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255:
                raise RequestError(f"{name} must be an integer in [0, 255], got {v!r}", parameter=name)
        out = task.get("outputType", "URL")
        if out not in ("URL", "base64Data", "dataURI"):
            raise RequestError(f"outputType must be URL, base64Data or dataURI, got {out!r}", parameter="outputType")
        if task.get("deliveryMethod", "sync") not in ("sync", "async"):
            raise RequestError(f"deliveryMethod must be 'sync' or 'async', got {task['deliveryMethod']!r}",
                               parameter="deliveryMethod")  # fmt: skip
        value = task.get("inputImage")
        if not isinstance(value, str) or not value:
            raise RequestError("inputImage is required (imageUUID, URL, data URI or base64)", parameter="inputImage")
        inputs = Inputs()
        image = self.intake.resolver(owner, inputs)(value, "inputImage", False)
        fmt = str(task.get("outputFormat", "PNG")).upper().replace("JPEG", "JPG")
        if fmt not in ("JPG", "PNG", "WEBP"):
            raise RequestError(f"outputFormat must be JPG, PNG or WEBP, got {task.get('outputFormat')!r}",
                               parameter="outputFormat")  # fmt: skip
        buf = io.BytesIO()
        canny_edges(image, low, high).save(buf, {"JPG": "JPEG"}.get(fmt, fmt))
        data = buf.getvalue()
        guide_uuid, ext, expires = self.intake.store_upload(owner, data, "inputImage", ext=EXTENSION[fmt])
        item = {"taskType": "imageControlNetPreProcess", "taskUUID": task["taskUUID"], "guideImageUUID": guide_uuid,
                "preProcessorType": kind}  # fmt: skip
        input_uuid = inputs.stored.get(id(image))
        if input_uuid is not None:
            item["inputImageUUID"] = input_uuid
        if out == "URL":
            item["guideImageURL"] = self.intake.signer.sign(guide_uuid, ext, expires)
        elif out == "base64Data":
            item["guideImageBase64Data"] = base64.b64encode(data).decode()
        elif out == "dataURI":
            item["guideImageDataURI"] = f"data:{CONTENT_TYPES[ext]};base64,{base64.b64encode(data).decode()}"
        if task.get("includeCost"):
            item["cost"] = 0  # a CPU filter: no compute is charged
        return Reply([item])

    def cancel(self, owner: str, task: dict) -> Reply:
        """cancelTask: stop this owner's task (queued: at once; running: at its next denoising step)."""
        task_uuid = check_task_uuid(task.get("taskUUID"))
        job = self.intake.cancel(owner, task_uuid)
        if job is None:
            raise ProtocolError(f"no task {task_uuid} for this API key", parameter="taskUUID", code="taskNotFound")
        return Reply([{"taskType": "cancelTask", "taskUUID": task_uuid, "status": job.status}])

    def inference(self, owner: str, task: dict) -> Reply | Running:
        """imageInference: validated and queued once (a resend finds the same job); async answers at once."""
        intake = self.intake
        intake.check_open()
        task_uuid = check_task_uuid(task.get("taskUUID"))
        job = intake.existing(owner, task_uuid, task)
        if job is None:
            inputs = Inputs()
            req, delivery = parse_image_inference(task, intake.resolver(owner, inputs), intake.characters_for(owner))
            job = intake.submit(owner, task_uuid, task, req, delivery, inputs)
        if job.spec.delivery.method == "async":
            return Reply([{"taskType": job.task_type, "taskUUID": job.task_uuid, "status": "processing"}])
        return Running(job)

    # ---- replies
    def reply_for(self, job: Job, *, with_status: bool, only_new: set[str] | None = None) -> Reply:
        """A job's items (or its error), as getResponse, the sync reply and the WebSocket stream show it."""
        if job.status in (ERROR, CANCELLED):
            return Reply([], [self.job_error(job)])
        return Reply(self.items(job, with_status=with_status, only_new=only_new))

    def items(self, job: Job, *, with_status: bool, only_new: set[str] | None = None) -> list:
        """Reply items for a job: one per finished image (and, with status, one per pending image)."""
        out = []
        done = {r["imageUUID"]: r for r in job.results}
        for image_uuid in job.image_uuids:
            if only_new is not None and image_uuid not in only_new:
                continue
            r = done.get(image_uuid)
            if r is None:
                if with_status and job.status != ERROR:
                    pending = {"taskType": job.task_type, "taskUUID": job.task_uuid, "imageUUID": image_uuid,
                               "status": "processing"}  # fmt: skip
                    if job.spec.delivery.progress:  # includeProgress (a Daguerre extension)
                        pending.update(self.progress_fields(job, job.image_uuids.index(image_uuid)))
                    out.append(pending)
                continue
            item = self._result_item(job, r)
            if item is not None:
                if with_status:
                    item["status"] = "success"
                out.append(item)
        return out

    # ---- the gallery (a Daguerre extension the studio uses: GET/DELETE /v1/gallery)
    def gallery(self, owner: str, limit: int, before: int | None) -> dict:
        """This key's finished imageInference results, newest first, each with its embedded recipe."""
        import json

        from daguerre.imaging import read_embedded

        out, last = [], None
        for job in self.intake.jobs.store.recent(owner, limit, before):
            last = job.number
            if job.task_type != "imageInference" or job.status != SUCCESS:
                continue
            for r in sorted(job.results, key=lambda r: r.get("index", 0)):
                found = self.intake.results.get(r["imageUUID"], owner)
                if found is None:  # expired
                    continue
                obj, data = found
                recipe = read_embedded(data)
                out.append({"taskUUID": job.task_uuid, "imageUUID": r["imageUUID"], "seed": r["seed"],
                            "createdAt": job.created_at, "imageURL": self.intake.signer.sign(obj.uuid, obj.ext,
                                                                                            obj.expires_at),
                            "format": obj.ext, "recipe": json.loads(recipe) if recipe else None})  # fmt: skip
        # `limit` counts tasks (a task may hold several images); `next` is there whenever older tasks may remain.
        full = last is not None and len(self.intake.jobs.store.recent(owner, 1, last)) > 0
        return {"data": out, "next": last if full else None}

    def forget(self, owner: str, task_uuid: str) -> bool:
        """Delete a finished task of this key and its images (the gallery's delete)."""
        job = self.intake.jobs.get(owner, check_task_uuid(task_uuid))
        if job is None:
            return False
        if not job.done:
            raise ProtocolError("the task is still running; cancel it or wait", parameter="taskUUID",
                                code="taskRunning")  # fmt: skip
        for r in job.results:
            self.intake.results.delete(r["imageUUID"])
        for image_uuid in job.spec.images.values():  # its input images (uploads) go with it
            self.intake.results.delete(image_uuid)
        self.intake.jobs.store.delete(owner, job.task_uuid)
        return True

    def progress_fields(self, job: Job, index: int) -> dict:
        """A pending image's progress: queuePosition while queued (0 = next), then step/total of the pass that
        runs it and, once it is running, the latest latent preview (a small PNG data URI)."""
        if job.status == QUEUED:
            return {"queuePosition": self.intake.jobs.store.queued_before(job.created_at)}
        p = job.progress or {}
        if index not in p.get("images", []):
            return {"progress": {"step": 0, "total": p.get("total", 0)}}  # waiting for a later pass
        out = {"progress": {"step": p.get("step", 0), "total": p.get("total", 0)}}
        if p.get("preview") and index == min(p.get("images", [index])):  # the preview is of the pass's first image
            out["previewImage"] = p["preview"]
        return out

    def _result_item(self, job: Job, r: dict) -> dict | None:
        found = self.intake.results.get(r["imageUUID"], job.owner)
        if found is None:  # expired and swept
            return None
        obj, data = found
        delivery = job.spec.delivery
        item = {
            "taskType": job.task_type,
            "taskUUID": job.task_uuid,
            "imageUUID": r["imageUUID"],
            "seed": r["seed"],
            "NSFWContent": bool(r.get("nsfw", False)),
        }
        for kind in delivery.output_types:
            if kind == "URL":
                item["imageURL"] = self.intake.signer.sign(obj.uuid, obj.ext, obj.expires_at)
            elif kind == "base64Data":
                item["imageBase64Data"] = base64.b64encode(data).decode()
            else:
                item["imageDataURI"] = f"data:{CONTENT_TYPES[obj.ext]};base64,{base64.b64encode(data).decode()}"
        if delivery.include_cost:
            item["cost"] = round(r["seconds"] * self.server.price_per_second, 6)
        if "faces" in r:  # ultralytics: the faces redrawn (a Daguerre extension)
            item["facesEnhanced"] = r["faces"]
        if r.get("warnings"):  # prompt lint (a Daguerre extension; SDKs ignore unknown fields)
            item["warnings"] = r["warnings"]
        return item

    def job_error(self, job: Job) -> dict:
        e = job.error or {}
        if job.status == CANCELLED:  # cancelled by a client on a door that has cancel (predictions APIs)
            e = {"code": "taskCancelled", "message": "the task was cancelled before it finished"}
        return {
            "code": e.get("code", "internalError"),
            "message": e.get("message", "task failed"),
            "parameter": e.get("parameter"),
            "taskType": job.task_type,
            "taskUUID": job.task_uuid,
        }

    def webhook_body(self, job: Job, event: str, result: dict | None) -> dict | None:
        """A webhook body: {"data": [the new result's item]}, or {"errors": [...]} when the job failed."""
        if event == "output" and result is not None:
            return {"data": self.items(job, with_status=False, only_new={result["imageUUID"]})}
        if event == "completed" and job.status in (ERROR, CANCELLED):
            return {"errors": [self.job_error(job)]}
        return None

    # ---- jobs stored before JobSpec
    def upgrade(self, job: Job) -> JobSpec:
        """The JobSpec of a job an older Daguerre stored as its raw Runware task (images as stored imageUUIDs,
        the seed fixed): parsed once more, exactly as at submission then."""
        intake = self.intake
        inputs = Inputs()
        req, delivery = parse_image_inference(job.legacy, intake.resolver(job.owner, inputs),
                                              intake.characters_for(job.owner))  # fmt: skip
        stored = dict(inputs.stored)
        for key, (parameter, data, ext) in inputs.captured.items():
            stored[key] = intake.store_upload(job.owner, data, parameter, ext)[0]
        from daguerre.engine.plan import resolved

        req = resolved(req, intake.catalog)
        return specs.build(job.owner, job.task_uuid, req, stored, job.image_uuids, delivery, job.task_type)
