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
import contextlib
import dataclasses
import io
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable

from daguerre.config import ImageLimits
from daguerre.engine.engine import CancelToken, Engine, GeneratedImage, ProgressEvent
from daguerre.errors import Cancelled, DaguerreError, ImageInputError
from daguerre.imaging import EXTENSION, decode
from daguerre.jobs.queue import Claim
from daguerre.jobs.service import JobService
from daguerre.jobs.spec import JobSpec, from_json, hydrate, to_json
from daguerre.jobs.store import CANCELLED, ERROR, LOG_LINES, QUEUED, SUCCESS, Job, backend_errors
from daguerre.request import GenerationRequest
from daguerre.storage import ResultStore, StoredObject

log = logging.getLogger(__name__)
LOOKAHEAD = 32  # waiting jobs examined for a shared forward pass
LOG_EVERY = 0.5  # seconds between two `logs` events of a job (its log itself gains a line every step)
EVENTS = ("start", "logs", "output", "completed")
ROUTE_WAIT_S = 15.0  # default of server.route_wait_s: how long a job may be left for a worker with its model loaded
DEFER_S = 0.5  # a job left for another worker is claimable again after this (to twice this)
OUTAGE_S = 300.0  # how long a worker holding a job waits for a lost store/queue before letting the claim lapse
# on_event(job, event, result): result is the stored image's entry for `output`, else None.
EventHook = Callable[[Job, str, dict | None], None]


class StoreCancel(CancelToken):
    """Cancelled once a client asked to cancel every one of these jobs (read from the store at each step)."""

    def __init__(self, jobs: JobService, keys: list[tuple[str, str]], lost: threading.Event | None = None):
        super().__init__()
        self._jobs, self._keys, self._lost = jobs, keys, lost

    @property
    def cancelled(self) -> bool:
        if self._lost is not None and self._lost.is_set():  # another worker runs these jobs now: stop
            return True
        return all(self._jobs.store.cancel_requested(*k) for k in self._keys)


def progress_line(ev: ProgressEvent, width: int = 20) -> str:
    """A tqdm-like line for one step: ` 50%|##########          | 14/28 [3.2s]`."""
    filled = round(width * ev.step / ev.total) if ev.total else width
    return f"{round(100 * ev.step / ev.total) if ev.total else 100:3d}%|{'#' * filled}{' ' * (width - filled)}| " \
           f"{ev.step}/{ev.total} [{ev.elapsed:.1f}s]"  # fmt: skip


class Worker:
    """Runs jobs from the queue on one engine (one device): in a background thread beside the API (`start`), or
    as a whole process (`serve_forever`, `daguerre worker`).

    It knows JobSpecs and nothing of any wire protocol: images come from the ResultStore by imageUUID,
    results go back into it, and `on_event` (given by the composition root) delivers them. A message is
    acknowledged only after its job's end is stored; while the job runs, a heartbeat thread extends the claim
    and records this worker as live in the store (its device and resident models: /health/ready, /metrics).
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
        max_deliveries: int = 3,
        route_wait_s: float = ROUTE_WAIT_S,
        name: str | None = None,
    ):
        self.engine = engine
        self.jobs = jobs
        self.results = results
        self.default_ttl = default_ttl
        self.image_limits = image_limits or ImageLimits()
        self.on_event = on_event  # delivery: (job, event, result) for start, logs, output and completed
        self.max_deliveries = max_deliveries
        self.route_wait_s = route_wait_s
        self.parent: int | None = None  # serve's pid, when serve started this worker: drain if it goes
        self.id = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.busy = threading.Event()  # set while a job runs (drain waits on it)
        self.ready = True  # False while `serve_forever` preloads
        self.preload_errors: list[dict] = []
        self.done = {"success": 0, "error": 0, "cancelled": 0}  # jobs this worker ended, by outcome
        self.images = 0
        self.busy_seconds = 0.0
        self.waits: dict[str, list[float]] = {}  # model -> [seconds jobs waited in the queue, jobs] (metrics)
        self._beating = True
        self._left: dict[str, float] = {}  # messages left for a worker with their model loaded -> first time
        self._claims: list[Claim] = []  # what the running job holds (the heartbeat extends them)
        self._lost = threading.Event()  # the running job's claim ran out and another worker took it over
        self._claims_lock = threading.Lock()  # the heartbeat marks these claims lost, not the next job's
        self._running: list[str] = []  # "owner/taskUUID" of the jobs running now (told in each beat)
        self._taken: list[str] = []  # companions it took (owed again if it must run again)
        self._started: dict[tuple[str, str], float] = {}  # job key -> when it started (for the log)
        self._logged: dict[tuple[str, str], float] = {}  # job key -> when its last `logs` event went out

    def start(self) -> None:
        """Work in a background thread of this process (the API's own worker, tests, the bench)."""
        self._begin()
        self._thread = threading.Thread(target=self._loop, name="daguerre-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Stop claiming; wait up to `timeout` for the running job. True if it finished."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            finished = not self._thread.is_alive()
        else:
            finished = True
        if finished:
            self._end()
        return finished

    def serve_forever(self, preload: list[str] = ()) -> None:
        """Work on this thread until `drain()` (SIGTERM): the running job finishes, no new one is taken."""
        self.ready = False
        self._begin()
        for ref in preload:
            t0 = time.perf_counter()
            try:
                with self.engine.models.lease(ref):
                    pass
                log.info("preloaded %s in %.1f s", ref, time.perf_counter() - t0)
            except DaguerreError as e:
                self.preload_errors.append({"model": ref, "code": e.code, "message": e.message})
                log.error("preload of %s failed: %s", ref, e.message)
            if self._stop.is_set():
                break
        self.ready = True
        try:
            self._loop()
        finally:
            self._end()

    def drain(self) -> None:
        """Take no new job; the running one finishes (safe to call from a signal handler)."""
        self._stop.set()

    def _begin(self) -> None:
        if not self.jobs.store.workers():  # no worker is live: every claim not extended lately is a dead one's
            self.jobs.queue.release(idle_s=3 * self._every())
        self._beat()
        self._beater = threading.Thread(target=self._heartbeat, name="daguerre-heartbeat", daemon=True)
        self._beater.start()

    def _end(self) -> None:
        self._beating = False
        try:
            self.jobs.store.forget(self.id)
        except Exception:  # noqa: BLE001 - the store may be gone at shutdown; the beat expires by itself
            log.debug("could not unregister worker %s", self.id)

    def _heartbeat(self) -> None:
        """Extend the running job's claims and say this worker is live, a few times per visibility timeout."""
        every = self._every()
        while self._beating:
            time.sleep(every)
            if not self._beating:
                return
            if self.parent is not None and os.getppid() != self.parent and not self._stop.is_set():
                log.warning("the serve process that started this worker is gone: draining")
                self.drain()
            try:
                self._holding()
            except Exception as e:  # noqa: BLE001 - a lost queue: keep trying (the claim may lapse)
                log.warning("worker could not extend its claim: %s", e)
            try:
                self._beat(ttl=every * 3)
            except Exception as e:  # noqa: BLE001 - a lost store: keep trying
                log.warning("worker heartbeat failed: %s", e)

    def _set_lost(self, claims: list[Claim]) -> None:
        """These claims ran out and another worker took them over: if they are still the running job's, it stops
        at its next step and stores nothing more."""
        with self._claims_lock:
            if claims is not self._claims or self._lost.is_set():
                return
            self._lost.set()
        log.warning("this worker's claim on its job ran out (it stalled) and another worker has it now: stopping "
                    "the job here, storing nothing more")  # fmt: skip

    def _holding(self) -> bool:
        """Whether this worker still holds the running job's claims, asked of the queue now: before an image or a
        job's end is stored, so a worker that stalled past its timeout never stores over the one that took its
        job over (the heartbeat alone would tell it up to a beat late)."""
        claims = self._claims
        if self._lost.is_set():
            return False
        if claims and self.jobs.queue.extend(claims):
            self._set_lost(claims)
            return False
        return True

    def _every(self) -> float:
        """Seconds between heartbeats: a few per visibility timeout, at most 2 s (a beat lives 3 of these)."""
        return max(0.1, min(2.0, self.jobs.queue.visibility_s / 3))

    def _beat(self, ttl: float | None = None) -> None:
        self.jobs.store.beat(self.info(ttl or self._every() * 3))

    def info(self, ttl: float) -> dict:
        """What this worker tells the store each beat."""
        models = self.engine.models
        return {"id": self.id, "ttl": ttl, "pid": os.getpid(), "host": socket.gethostname(),
                "device": str(models.device), "budget": models.budget, "ready": self.ready, "busy": self.busy.is_set(),
                "draining": self._stop.is_set(), "resident": [m.spec.id for m in models.resident()],
                "running": list(self._running), "claims": [c.id for c in self._claims],
                "done": dict(self.done), "images": self.images, "busy_seconds": round(self.busy_seconds, 3),
                "waits": {m: [round(t, 3), n] for m, (t, n) in self.waits.items()},
                "preload_errors": list(self.preload_errors), "at": time.time()}  # fmt: skip

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                claim = self.jobs.queue.claim(timeout=0.2)
            except Exception as e:  # noqa: BLE001 - the queue is away (Redis restarting): wait and try again
                log.warning("cannot claim from the queue (%s); trying again", e)
                self._stop.wait(1.0)
                continue
            if claim is None:
                continue
            self.busy.set()
            t0 = time.perf_counter()
            with contextlib.suppress(Exception):  # the heartbeat thread reports store trouble
                self._beat()  # busy now: /health/ready and /metrics see it without waiting for the next beat
            try:
                self._handle_through_outages(claim)
            finally:
                with self._claims_lock:
                    self._claims, self._running = [], []
                    self._lost.clear()
                self._started.clear()
                self._logged.clear()
                self.busy_seconds += time.perf_counter() - t0
                self.busy.clear()

    def _handle_through_outages(self, claim: Claim) -> None:
        """Handle a claim; if the store or queue goes away meanwhile (a Redis restart), run it again here once
        they are back, holding the claim (no new delivery is counted: the job did nothing wrong)."""
        again = False
        give_up = time.monotonic() + OUTAGE_S
        while True:
            try:
                self.handle(claim, again=again)
                return
            except Exception as e:  # noqa: BLE001 - a failed job is recorded in handle; this is the store/queue
                if not isinstance(e, backend_errors()) or time.monotonic() > give_up:
                    log.exception("could not handle a queue message; it will be delivered again")
                    return
                log.warning("the job store or queue went away (%s); running the job again when it is back", e)
                again = True
                riders = tuple(dict.fromkeys((*claim.riders, *self._taken)))  # owed with it, each once
                claim, self._taken = dataclasses.replace(claim, riders=riders), []
                time.sleep(1.0)

    def handle(self, claim: Claim, *, again: bool = False) -> None:
        """Run one claimed message (and any riders) to its end, then acknowledge it. `again`: this worker
        started it already (and lost the store meanwhile)."""
        try:
            spec = from_json(claim.message)
        except Exception as e:  # noqa: BLE001 - unreadable (another version's?): never retried forever
            log.error("a queue message could not be read (%s); set aside in the dead-letter list", e)
            self.jobs.queue.bury(claim, f"unreadable message: {e}")
            return
        job = self.jobs.get(*spec.key)
        if job is None or job.done:  # forgotten, cancelled while waiting, or finished before a crash
            self._requeue(claim.riders)  # its riders may not have finished: they go back to the queue
            self.jobs.queue.ack(claim)
            return
        if again and not self._holding():  # the store was away so long that another worker took the job over
            return
        if claim.deliveries > 1 and not again:
            elsewhere = self._held_elsewhere(job, claim)
            if elsewhere == "claim":  # its worker lives (a pause, a queue outage): handed back to it, uncounted
                log.info("task %s still runs on the worker whose claim ran out; given back to it", job.task_uuid,
                         extra={"taskUUID": job.task_uuid})  # fmt: skip
                self.jobs.queue.defer(claim, DEFER_S)
                return
            if elsewhere == "copy":  # a second message of a job that runs elsewhere: dropped
                log.info("task %s runs on another worker; this copy of its message is dropped", job.task_uuid,
                         extra={"taskUUID": job.task_uuid})  # fmt: skip
                self._requeue(claim.riders)
                self.jobs.queue.ack(claim)
                return
        if claim.deliveries + spec.crashes > self.max_deliveries:
            self._bury(claim, job, claim.deliveries + spec.crashes)
            return
        if not again and not claim.riders and self._leave_for_another(spec, claim):
            # A random pause: a fixed one is a whole number of this worker's polls, so it would win its own
            # deferred job back every time (two workers each deferring the other's job never got out of it).
            self.jobs.queue.defer(claim, DEFER_S * random.uniform(1.0, 2.0))
            return
        if claim.deliveries > 1 and not again:
            log.warning("task %s delivered again (try %d of %d): its worker stopped", job.task_uuid,
                        claim.deliveries, self.max_deliveries, extra={"taskUUID": job.task_uuid})  # fmt: skip
        # Extended by the heartbeat from here (not before: a claim given back above must stay given back).
        with self._claims_lock:
            self._claims, self._taken = [claim], []
        self.run(job, spec, claim, again=again)
        if self._lost.is_set() or not self.jobs.queue.ack(claim):  # the worker that took it over acknowledges it
            log.warning(
                "task %s left to the worker that took it over", job.task_uuid, extra={"taskUUID": job.task_uuid}
            )

    def _leave_for_another(self, spec: JobSpec, claim: Claim) -> bool:
        """Model-aware routing. Leave the job to another live worker when that one can hold the model and this
        one cannot (always), or when that one has the model loaded and this one does not (for up to
        route_wait_s after this worker first saw the job: then it loads the model and runs it rather than let
        the job wait on a busy worker)."""
        model = spec.request.model
        manager = self.engine.models
        if any(m.spec.id == model for m in manager.resident()):
            return False
        try:
            size = manager.catalog.get(model).size_bytes or 0
        except DaguerreError:
            return False  # the run reports it
        others = [w for w in self.jobs.store.workers()
                  if w["id"] != self.id and w.get("ready") and not w.get("draining")]  # fmt: skip
        if size > manager.budget and any(w.get("budget", 0) >= size for w in others):
            return True
        if not any(model in w.get("resident", []) for w in others):
            return False
        now = time.monotonic()
        first = self._left.setdefault(claim.message, now)
        if len(self._left) > 1000:  # forget the oldest
            for key in list(self._left)[:500]:
                del self._left[key]
        return now - first < self.route_wait_s

    def _requeue(self, messages: tuple[str, ...], *, crashed: bool = False) -> None:
        """Riders whose claim ends without running them: queued again (their stored images stay). `crashed`: they
        were in a pass that stopped its worker, which counts as one of their tries (a poison job riding with
        others' claims would otherwise be queued afresh each time and never set aside)."""
        for message in messages:
            spec = from_json(message)
            job = self.jobs.get(*spec.key)
            if job is not None and not job.done:
                job.status = QUEUED
                self.jobs.changed(job)
                if crashed:
                    message = to_json(dataclasses.replace(spec, crashes=spec.crashes + 1))
                self.jobs.queue.push(message, force=True)

    def _bury(self, claim: Claim, job: Job, tries: int) -> None:
        """A job that stopped its worker too many times (`tries`: its deliveries and the shared passes with it that
        crashed): dead letter, and its task fails saying why."""
        reason = (f"delivered {tries} times; each worker that took it stopped before finishing "
                  f"(a crash, or the machine ran out of memory)")  # fmt: skip
        # Its riders were in its last pass: that try counts (queued before the claim goes: never lost).
        self._requeue(claim.riders, crashed=True)
        if not self.jobs.queue.bury(claim, reason):  # another worker took it over meanwhile: its call
            return
        log.error("task %s set aside in the dead-letter list: %s", job.task_uuid, reason,
                  extra={"taskUUID": job.task_uuid})  # fmt: skip
        job.status = ERROR
        message = (f"this task stopped its worker {tries - 1} times (a crash, or out of memory) and was "
                   "set aside, not retried; try a smaller size or fewer images")  # fmt: skip
        job.error = {"code": "taskCrashedWorker", "parameter": None, "message": message}
        self.jobs.changed(job)
        self.done["error"] += 1
        self._emit(job, "completed", None)

    def run(self, job: Job, spec: JobSpec, claim: Claim | None = None, *, again: bool = False) -> None:
        """Run a claimed job to success or error, with any waiting jobs that can share its forward passes (or,
        on a redelivery, the ones that shared them before)."""
        crashed = claim is not None and claim.deliveries > 1 and not again  # (not a store outage)
        again = again or (claim is not None and claim.deliveries > 1)
        req = self._start(job, spec, again=again)
        if req is None:
            return
        group = [(job, spec, req)]
        if claim is not None and claim.riders:
            # A redelivery: its pass killed a worker, and any of its jobs may be why. Each goes back to the
            # queue to be tried on its own, so a poison job cannot take the others down with it.
            self._requeue(claim.riders, crashed=crashed)
        else:
            # Jobs with input images, whose client watches live previews, or that were in a crashed pass run alone.
            alone = spec.images or spec.delivery.progress or spec.crashes
            key = self.engine.batch_key(req) if not alone else None
            if key is not None:
                group += self._companions(key, room=self.engine.max_batch - req.number_results, claim=claim)
        if len(group) == 1:
            self._run_alone(*group[0])
        else:
            self._run_group(group)

    def _start(self, job: Job, spec: JobSpec, *, again: bool = False) -> GenerationRequest | None:
        """Mark the job running and load its images: the request to run, or None when that failed (or the job
        was cancelled while it waited)."""
        if not self._mark_running(job, again=again):
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

    def _mark_running(self, job: Job, *, again: bool = False) -> bool:
        """Claim the job in the store (False: it is no longer queued, e.g. cancelled) and announce its start.
        `again`: its worker died; the images it stored stay (not stored twice; announced under the same send ids,
        so the delivery outbox sends each announcement once)."""
        crash = os.environ.get("DAGUERRE_FAULT_CRASH_PROMPT")  # fault injection for crash drills (docs/deploy.md)
        if crash and crash in job.spec.request.positive_prompt:  # a job of a shared pass too
            log.error("DAGUERRE_FAULT_CRASH_PROMPT: stopping this worker on task %s", job.task_uuid)
            os._exit(86)
        job.error = None  # results stay: images stored before a crash are not made twice
        if not self.jobs.store.start(job, again=again):
            return False
        self._running.append(f"{job.owner}/{job.task_uuid}")
        with contextlib.suppress(Exception):  # the heartbeat thread reports store trouble
            self._beat()  # a redelivered copy of this job's message sees it running here
        self._started[job.key] = time.perf_counter()
        req = job.spec.request
        if not again:
            wait = self.waits.setdefault(req.model, [0.0, 0])
            wait[0] += max(0.0, (job.started_at or time.time()) - job.created_at)
            wait[1] += 1
        size = f"{req.width}x{req.height}"
        job.log = [f"Using seed: {req.seed}", f"{req.number_results} image(s) {size}, {req.steps} steps on {req.model}"]
        self.jobs.changed(job)
        self._emit(job, "start", None)
        return True

    def _held_elsewhere(self, job: Job, claim: Claim) -> str | None:
        """Whether a job delivered again still runs on another live worker (the `running` and `claims` of its
        beats): "claim" under this very claim (its claim ran out while it lived: it paused, or the queue was
        away), "copy" under another message of the same job (a rider queued again beside its old claim); None
        when it runs nowhere (its worker died)."""
        key = f"{job.owner}/{job.task_uuid}"
        for w in self.jobs.store.workers():
            if w["id"] != self.id and key in w.get("running", []):
                return "claim" if claim.id and claim.id in w.get("claims", []) else "copy"
        return None

    def _companions(self, key: tuple, room: int, claim: Claim | None) -> list[tuple[Job, JobSpec, GenerationRequest]]:
        """Waiting jobs with this batch key, up to `room` more images, claimed from the queue (oldest first)."""
        chosen: list[tuple[str, Job, JobSpec]] = []
        for message in self.jobs.queue.waiting(LOOKAHEAD):
            if room <= 0:
                break
            spec = from_json(message)
            if spec.images or spec.delivery.progress or spec.crashes:  # input images, previews, a crash: alone
                continue
            job = self.jobs.get(*spec.key)
            if job is None or job.done:
                continue
            if self.engine.batch_key(spec.request) == key and spec.request.number_results <= room:
                chosen.append((message, job, spec))
                room -= spec.request.number_results
        if claim is None or not chosen:
            return []
        taken = {c.message for c in self.jobs.queue.take([message for message, _, _ in chosen], claim)}
        self._taken = list(taken)
        return [(job, spec, spec.request) for message, job, spec in chosen if message in taken
                and self._mark_running(job)]  # fmt: skip

    def _run_alone(self, job: Job, spec: JobSpec, req: GenerationRequest) -> None:
        try:
            self.engine.generate(req, on_image=self._on_image(job, spec), on_progress=self._on_progress([job]),
                                 cancel=StoreCancel(self.jobs, [job.key], self._lost), checked=True,
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
                # cancelled when every one of them is (or when another worker took them over)
                cancel=StoreCancel(self.jobs, [job.key for job, _, _ in group], self._lost),
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
            if not self._holding() or self.jobs.store.cancel_requested(*job.key):  # taken over, or one job of a
                return  # shared pass was cancelled: keep none
            image_uuid = job.image_uuids[im.index]
            stored = next((r for r in job.results if r["imageUUID"] == image_uuid), None)
            if stored is not None:  # stored before its first worker died: announced again (the outbox drops the
                self._emit(job, "output", stored)  # repeat, and sends it if that worker died before announcing it)
                return
            self.results.put(
                StoredObject(uuid=image_uuid, owner=job.owner, ext=ext, kind="result", expires_at=time.time() + ttl),
                im.encode(output),
            )
            result = {"imageUUID": image_uuid, "seed": im.seed, "ext": ext, "seconds": im.seconds, "index": im.index}
            if im.verdict is not None:
                result["nsfw"] = im.nsfw
            if im.faces is not None:
                result["faces"] = im.faces
            if im.warnings:
                result["warnings"] = list(im.warnings)
            job.results.append(result)
            self.images += 1
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
        """Record the job's end (success, its user error, or internalError without a traceback) and report it.
        A store or queue that went away is not the job's fault: raised, so the claim lapses and the job runs
        again once they are back."""
        if error is not None and isinstance(error, backend_errors()):
            raise error
        if not self._holding():  # another worker took the job over: it records the end
            return
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
        self.done[job.status] = self.done.get(job.status, 0) + 1
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
