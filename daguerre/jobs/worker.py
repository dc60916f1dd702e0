"""The worker loop: claim a JobSpec, run it on the engine, store its images, report.

One job at a time, except that waiting jobs that can share its forward passes (Engine.batch_key:
plain text-to-image with the same model, size, steps and guidance) are claimed with it and run
together, up to the engine's max_batch images per pass.

While a job runs, each denoising step updates its `progress` and `log` (tqdm-like lines the doors show
as logs) and reads whether a client asked to cancel it: the engine stops at the next step boundary and
the job ends `cancelled`. The `on_event` hook (the composition root's delivery) hears `start`, `logs`
(at most every LOG_EVERY seconds), `output` (each stored image) and `completed`.

A failing job never takes the worker down: every exception becomes the job's error (user
errors keep their code; anything else is logged with the taskUUID and reported as
internalError without a traceback).
"""

from __future__ import annotations

import base64
import io
import logging
import threading
import time
from collections.abc import Callable

from daguerre.config import ImageLimits
from daguerre.engine.engine import CancelToken, Engine, GeneratedImage, ProgressEvent
from daguerre.errors import Cancelled, DaguerreError, ImageInputError
from daguerre.imaging import EXTENSION, decode
from daguerre.jobs.service import JobService
from daguerre.jobs.spec import JobSpec, from_json, hydrate
from daguerre.jobs.store import CANCELLED, ERROR, LOG_LINES, SUCCESS, Job
from daguerre.request import GenerationRequest
from daguerre.storage import ResultStore, StoredObject

log = logging.getLogger(__name__)
LOOKAHEAD = 32  # waiting jobs examined for a shared forward pass
LOG_EVERY = 0.5  # seconds between two `logs` events of a job (its log itself gains a line every step)
EVENTS = ("start", "logs", "output", "completed")
# on_event(job, event, result): result is the stored image's entry for `output`, else None.
EventHook = Callable[[Job, str, dict | None], None]


class StoreCancel(CancelToken):
    """Cancelled once a client asked to cancel every one of these jobs (read from the store at each step)."""

    def __init__(self, jobs: JobService, keys: list[tuple[str, str]]):
        super().__init__()
        self._jobs, self._keys = jobs, keys

    @property
    def cancelled(self) -> bool:
        return all(self._jobs.store.cancel_requested(*k) for k in self._keys)


def progress_line(ev: ProgressEvent, width: int = 20) -> str:
    """A tqdm-like line for one step: ` 50%|##########          | 14/28 [3.2s]`."""
    filled = round(width * ev.step / ev.total) if ev.total else width
    return f"{round(100 * ev.step / ev.total) if ev.total else 100:3d}%|{'#' * filled}{' ' * (width - filled)}| " \
           f"{ev.step}/{ev.total} [{ev.elapsed:.1f}s]"  # fmt: skip


class Worker:
    """Runs jobs from the queue on one engine (one device), in a background thread.

    It knows JobSpecs and nothing of any wire protocol: images come from the ResultStore by imageUUID,
    results go back into it, and `on_event` (given by the composition root) delivers them.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        jobs: JobService,
        results: ResultStore,
        default_ttl: int,
        image_limits: ImageLimits | None = None,
        on_event: EventHook | None = None,
    ):
        self.engine = engine
        self.jobs = jobs
        self.results = results
        self.default_ttl = default_ttl
        self.image_limits = image_limits or ImageLimits()
        self.on_event = on_event  # delivery: (job, event, result) for start, logs, output and completed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.busy = threading.Event()  # set while a job runs (drain waits on it)
        self._started: dict[tuple[str, str], float] = {}  # job key -> when it started (for the log)
        self._logged: dict[tuple[str, str], float] = {}  # job key -> when its last `logs` event went out

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="daguerre-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Stop claiming; wait up to `timeout` for the running job. True if it finished."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            message = self.jobs.queue.claim(timeout=0.2)
            if message is None:
                continue
            spec = from_json(message)
            job = self.jobs.get(*spec.key)
            if job is None or job.done:
                continue
            self.busy.set()
            try:
                self.run(job, spec)
            finally:
                self.busy.clear()

    def run(self, job: Job, spec: JobSpec) -> None:
        """Run a claimed job to success or error, with any waiting jobs that can share its forward passes."""
        req = self._start(job, spec)
        if req is None:
            return
        group = [(job, spec, req)]
        # Jobs with input images, or whose client watches live previews, run alone.
        key = self.engine.batch_key(req) if not spec.images and not spec.delivery.progress else None
        if key is not None:
            group += self._companions(key, room=self.engine.max_batch - req.number_results)
        if len(group) == 1:
            self._run_alone(*group[0])
        else:
            self._run_group(group)

    def _start(self, job: Job, spec: JobSpec) -> GenerationRequest | None:
        """Mark the job running and load its images: the request to run, or None when that failed (or the job
        was cancelled while it waited)."""
        if not self._mark_running(job):
            return None
        try:
            return hydrate(spec, self._loader(spec.owner))
        except Exception as e:  # noqa: BLE001 - reported as the job's error
            self._finish(job, e)
            return None

    def _loader(self, owner: str):
        """load(imageUUID, is_mask) -> the decoded input image this owner stored at submission."""

        def load(image_uuid: str, is_mask: bool):
            found = self.results.get(image_uuid, owner)
            if found is None:
                raise ImageInputError(f"input image {image_uuid} expired before the job ran", code="imageNotFound")
            return decode(found[1], parameter="image", limits=self.image_limits, mask=is_mask)[0]

        return load

    def _mark_running(self, job: Job) -> bool:
        """Claim the job in the store (False: it is no longer queued, e.g. cancelled) and announce its start."""
        job.results, job.error = [], None
        if not self.jobs.store.start(job):
            return False
        self._started[job.key] = time.perf_counter()
        req = job.spec.request
        size = f"{req.width}x{req.height}"
        job.log = [f"Using seed: {req.seed}", f"{req.number_results} image(s) {size}, {req.steps} steps on {req.model}"]
        self.jobs.changed(job)
        self._emit(job, "start", None)
        return True

    def _companions(self, key: tuple, room: int) -> list[tuple[Job, JobSpec, GenerationRequest]]:
        """Waiting jobs with this batch key, up to `room` more images, claimed from the queue (oldest first)."""
        chosen: list[tuple[str, Job, JobSpec]] = []
        for message in self.jobs.queue.waiting(LOOKAHEAD):
            if room <= 0:
                break
            spec = from_json(message)
            if spec.images or spec.delivery.progress:  # input images or live previews: never share a pass
                continue
            job = self.jobs.get(*spec.key)
            if job is None or job.done:
                continue
            if self.engine.batch_key(spec.request) == key and spec.request.number_results <= room:
                chosen.append((message, job, spec))
                room -= spec.request.number_results
        taken = set(self.jobs.queue.take([message for message, _, _ in chosen]))
        return [(job, spec, spec.request) for message, job, spec in chosen if message in taken
                and self._mark_running(job)]  # fmt: skip

    def _run_alone(self, job: Job, spec: JobSpec, req: GenerationRequest) -> None:
        try:
            self.engine.generate(req, on_image=self._on_image(job, spec), on_progress=self._on_progress([job]),
                                 cancel=StoreCancel(self.jobs, [job.key]), checked=True,
                                 preview=spec.delivery.progress)  # fmt: skip
        except Exception as e:  # noqa: BLE001 - reported as the job's error
            self._finish(job, e)
            return
        self._finish(job, None)

    def _run_group(self, group: list[tuple[Job, JobSpec, GenerationRequest]]) -> None:
        """Jobs sharing forward passes. If a shared pass fails, every job without results runs again alone,
        so one job's trouble (or a batch too large for memory) never fails the others."""
        hooks = [self._on_image(job, spec) for job, spec, _ in group]
        try:
            outcomes = self.engine.generate_batch(
                [req for _, _, req in group],
                on_image=lambda k, im: hooks[k](im),
                on_progress=self._on_progress([job for job, _, _ in group]),
                cancel=StoreCancel(self.jobs, [job.key for job, _, _ in group]),  # when every one of them is
                checked=True,
            )
        except Cancelled as e:
            for job, _, _ in group:
                self._finish(job, e)
            return
        except Exception as e:  # noqa: BLE001 - retried alone below
            log.warning("a shared pass of %d tasks failed (%s); running them one by one", len(group), e)
            for job, spec, req in group:
                if job.results:  # images already delivered: do not deliver them twice
                    self._finish(job, e)
                else:
                    self._run_alone(job, spec, req)
            return
        log.info("%d tasks shared forward passes", len(group))
        for (job, _, _), outcome in zip(group, outcomes, strict=True):
            self._finish(job, outcome if isinstance(outcome, Exception) else None)

    def _on_image(self, job: Job, spec: JobSpec):
        """Store each image of a job as it comes, and announce it."""
        ttl = spec.delivery.ttl or self.default_ttl
        output = spec.request.output
        ext = EXTENSION[output.format]

        def on_image(im: GeneratedImage) -> None:
            if self.jobs.store.cancel_requested(*job.key):  # one job of a shared pass was cancelled: keep none
                return
            uuid = job.image_uuids[im.index]
            self.results.put(
                StoredObject(uuid=uuid, owner=job.owner, ext=ext, kind="result", expires_at=time.time() + ttl),
                im.encode(output),
            )
            result = {"imageUUID": uuid, "seed": im.seed, "ext": ext, "seconds": im.seconds, "index": im.index}
            if im.verdict is not None:
                result["nsfw"] = im.nsfw
            if im.faces is not None:
                result["faces"] = im.faces
            if im.warnings:
                result["warnings"] = list(im.warnings)
            job.results.append(result)
            self.jobs.changed(job)
            self._emit(job, "output", result)

        return on_image

    def _on_progress(self, jobs: list[Job]):
        """Each step: every job in the pass gains its progress and a log line (announced to its listeners)."""

        def on_progress(ev: ProgressEvent) -> None:
            now = time.monotonic()
            preview = None
            if ev.preview is not None:  # includeProgress: the latent preview, as a small PNG data URI
                buf = io.BytesIO()
                ev.preview.save(buf, "PNG")
                preview = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
            for job in jobs:
                job.progress = {"step": ev.step, "total": ev.total, "images": list(ev.images)}
                if preview is not None:
                    job.progress["preview"] = preview
                job.log = [*job.log, progress_line(ev)][-LOG_LINES:]
                self.jobs.progressed(job)
                if now - self._logged.get(job.key, 0.0) >= LOG_EVERY or ev.step == ev.total:
                    self._logged[job.key] = now
                    self._emit(job, "logs", None)

        return on_progress

    def _finish(self, job: Job, error: Exception | None) -> None:
        """Record the job's end (success, its user error, or internalError without a traceback) and report it."""
        if error is None and self.jobs.store.cancel_requested(*job.key) and len(job.results) < len(job.image_uuids):
            error = Cancelled("cancelled")  # cancelled while sharing a pass with jobs that were not
        if error is None:
            job.status = SUCCESS
        elif isinstance(error, Cancelled):
            job.status, job.error = CANCELLED, None
            job.log = [*job.log, "Cancelled"][-LOG_LINES:]
        elif isinstance(error, DaguerreError):
            job.status, job.error = ERROR, {"code": error.code, "message": error.message, "parameter": error.parameter}
        else:
            log.error("task %s failed", job.task_uuid, exc_info=error)
            message = "generation failed inside the server; see its log"
            job.status, job.error = ERROR, {"code": "internalError", "message": message, "parameter": None}
        started = self._started.pop(job.key, None)
        log.info(
            "task %s %s in %.2f s",
            job.task_uuid,
            job.status,
            time.perf_counter() - started if started is not None else 0.0,
            extra={"taskUUID": job.task_uuid},
        )
        self._logged.pop(job.key, None)
        self.jobs.changed(job)
        self._emit(job, "completed", None)

    def _emit(self, job: Job, event: str, result: dict | None) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(job, event, result)
        except Exception:  # noqa: BLE001 - a delivery problem must not fail the job
            log.exception("delivery hook failed for task %s", job.task_uuid)
