"""The worker loop: claim a job, run it on the engine, store its images, report. One job at a time.

A failing job never takes the worker down: every exception becomes the job's error (user
errors keep their code; anything else is logged with the taskUUID and reported as
internalError without a traceback).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from daguerre.api.schema import ImageResolver, parse_image_inference
from daguerre.engine.generate import Engine, GeneratedImage
from daguerre.errors import DaguerreError
from daguerre.jobs.service import JobService
from daguerre.jobs.store import ERROR, RUNNING, SUCCESS, Job
from daguerre.storage import ResultStore, StoredObject

log = logging.getLogger(__name__)
EXT = {"JPG": "jpg", "PNG": "png", "WEBP": "webp"}


class Worker:
    """Runs jobs from the queue on one engine (one device), in a background thread."""

    def __init__(
        self,
        *,
        engine: Engine,
        jobs: JobService,
        results: ResultStore,
        resolver_for: Callable[[str], ImageResolver],
        default_ttl: int,
        characters_for: Callable[[str], object] | None = None,
        on_result: Callable[[Job, dict | None], None] | None = None,
    ):
        self.engine = engine
        self.jobs = jobs
        self.results = results
        self.resolver_for = resolver_for  # owner -> image resolver (uploads are per key)
        self.default_ttl = default_ttl
        self.characters_for = characters_for  # owner -> saved-character lookup (or None)
        self.on_result = on_result  # (job, result) after each stored image; (job, None) when the job ends
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.busy = threading.Event()  # set while a job runs (drain waits on it)

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
            key = self.jobs.queue.claim(timeout=0.2)
            if key is None:
                continue
            job = self.jobs.get(*key)
            if job is None or job.done:
                continue
            self.busy.set()
            try:
                self.run(job)
            finally:
                self.busy.clear()

    def run(self, job: Job) -> None:
        """Run one job to success or error, announcing each stored image."""
        job.status, job.results, job.error = RUNNING, [], None
        self.jobs.changed(job)
        t0 = time.perf_counter()
        try:
            characters = self.characters_for(job.owner) if self.characters_for is not None else None
            req, delivery = parse_image_inference(job.payload, self.resolver_for(job.owner), characters)
            ttl = delivery.ttl or self.default_ttl
            ext = EXT[req.output.format]

            def on_image(im: GeneratedImage) -> None:
                uuid = job.image_uuids[im.index]
                self.results.put(
                    StoredObject(uuid=uuid, owner=job.owner, ext=ext, kind="result", expires_at=time.time() + ttl),
                    im.encode(req.output),
                )
                result = {"imageUUID": uuid, "seed": im.seed, "ext": ext, "seconds": im.seconds, "index": im.index}
                if im.warnings:
                    result["warnings"] = list(im.warnings)
                job.results.append(result)
                self.jobs.changed(job)
                self._announce(job, result)

            self.engine.generate(req, on_image=on_image)
            job.status = SUCCESS
        except DaguerreError as e:
            job.status, job.error = ERROR, {"code": e.code, "message": e.message, "parameter": e.parameter}
        except Exception:  # noqa: BLE001 - the worker must survive anything a job does
            log.exception("task %s failed", job.task_uuid)
            job.status, job.error = (
                ERROR,
                {
                    "code": "internalError",
                    "message": "generation failed inside the server; see its log",
                    "parameter": None,
                },
            )
        log.info(
            "task %s %s in %.2f s",
            job.task_uuid,
            job.status,
            time.perf_counter() - t0,
            extra={"taskUUID": job.task_uuid},
        )
        self.jobs.changed(job)
        self._announce(job, None)

    def _announce(self, job: Job, result: dict | None) -> None:
        if self.on_result is None:
            return
        try:
            self.on_result(job, result)
        except Exception:  # noqa: BLE001 - a delivery problem must not fail the job
            log.exception("delivery hook failed for task %s", job.task_uuid)
