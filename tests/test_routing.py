"""Which worker runs a job: model-aware routing (with two workers and two models, each job goes to the worker that
has its model loaded, and neither loads the other's: docs/deploy.md "Model-aware routing"), and a stalled worker
that lost its claim leaving the job to the worker that took it over."""

from __future__ import annotations

import time
import uuid


def test_two_workers_two_models_each_job_runs_where_its_model_is_loaded(settings_factory, tiny_folder, tiny_schnell,
                                                                        tmp_path):  # fmt: skip
    from daguerre.engine.plan import resolved
    from daguerre.jobs import spec as specs
    from daguerre.jobs.queue import SQLiteQueue
    from daguerre.jobs.service import JobService
    from daguerre.jobs.store import SQLiteJobStore
    from daguerre.jobs.worker import Worker
    from daguerre.request import GenerationRequest
    from daguerre.services import build_engine
    from daguerre.storage import LocalResultStore

    settings = settings_factory(max_batch=1, models={
        "a": {"id": "daguerre:a@1", "path": str(tiny_folder.model_path)},
        "b": {"id": "daguerre:b@1", "path": str(tiny_schnell.model_path)}})  # fmt: skip
    path = tmp_path / "jobs.sqlite3"

    def service() -> JobService:  # each worker its own handles on the one file, as separate processes have
        return JobService(store=SQLiteJobStore(path), queue=SQLiteQueue(path, maxsize=50))

    workers = {}
    for model in ("a", "b"):
        engine = build_engine(settings)
        with engine.models.lease(f"daguerre:{model}@1"):  # loaded (a preload)
            pass
        workers[model] = Worker(engine=engine, jobs=service(), results=LocalResultStore(tmp_path / "images"),
                                default_ttl=600, name=f"worker-{model}")  # fmt: skip
        workers[model].route_wait_s = 600  # this test: always wait for the worker with the model
    client = service()
    catalog = workers["a"].engine.models.catalog
    jobs = []
    for model in ("b", "b", "b", "a", "a", "a", "b", "a"):  # the first in the queue is b's: worker a is free too
        req = resolved(GenerationRequest(model=f"daguerre:{model}@1", positive_prompt="a harbour at dawn",
                                         width=128, height=128, steps=2), catalog)  # fmt: skip
        jobs.append((model, specs.new("anonymous", str(uuid.uuid4()), req)))
    for w in workers.values():
        w.start()
    try:
        for _, spec in jobs:
            client.submit(spec)
        deadline = time.time() + 120
        while time.time() < deadline and not all(client.get(*s.key).done for _, s in jobs):
            time.sleep(0.05)
    finally:
        for w in workers.values():
            w.stop(30)
    assert [(client.get(*s.key).status, client.get(*s.key).error) for _, s in jobs] == [("success", None)] * len(jobs)
    for model, w in workers.items():
        assert [m.spec.id for m in w.engine.models.resident()] == [f"daguerre:{model}@1"]  # nothing else loaded
        assert w.done["success"] == sum(1 for m, _ in jobs if m == model)


def test_a_worker_that_stalled_past_its_claim_stops_the_job_and_leaves_it_to_the_new_owner(make_server):
    import httpx

    from daguerre.errors import Cancelled
    from daguerre.jobs.queue import SQLiteQueue
    from tests.conftest import inference_task

    with make_server(visibility_timeout_s=1) as s:
        worker = s.services.worker
        queue = worker.jobs.queue
        real_extend, stalled = queue.extend, [True]
        queue.extend = lambda claims: [] if stalled[0] else real_extend(claims)  # a freeze: no extension lands
        stopped = []

        def long_job(req, *, cancel, **kw):  # a job that runs until told to stop
            for _ in range(400):
                if cancel.cancelled:
                    stopped.append(time.monotonic())
                    raise Cancelled("stopped")
                time.sleep(0.05)
            raise AssertionError("the job was never stopped")

        worker.engine.generate = long_job
        t = inference_task(deliveryMethod="async")
        assert httpx.post(f"{s.base}/v1", json=[t], timeout=30).status_code == 200
        other = SQLiteQueue(s.services.settings.server.data_dir / "jobs.sqlite3", visibility_s=30)
        taken = None
        for _ in range(100):  # another worker takes the message over once the claim has run out
            taken = other.claim(0.1)
            if taken is not None:
                break
        assert taken is not None and taken.deliveries == 2
        stalled[0] = False  # the stalled worker wakes up: its next extend finds the claim is not its own
        for _ in range(100):
            if stopped and not worker.busy.is_set():
                break
            time.sleep(0.05)
        assert stopped and not worker.busy.is_set()
        job = s.services.jobs.get("anonymous", t["taskUUID"])
        assert job.status == "running" and job.results == []  # it recorded no end: the new owner will
        assert other.extend([taken]) == []  # and did not acknowledge the message the new owner holds
        other.ack(taken)


def _one_worker(settings_factory, tiny_folder, tmp_path, **worker):
    """A worker (not started) on a SQLite queue with a 1 s visibility timeout, and new_spec(prompt) -> a JobSpec."""
    from daguerre.engine.plan import resolved
    from daguerre.jobs import spec as specs
    from daguerre.jobs.queue import SQLiteQueue
    from daguerre.jobs.service import JobService
    from daguerre.jobs.store import SQLiteJobStore
    from daguerre.jobs.worker import Worker
    from daguerre.request import GenerationRequest
    from daguerre.services import build_engine
    from daguerre.storage import LocalResultStore

    path = tmp_path / "jobs.sqlite3"
    settings = settings_factory(max_batch=2, models={"tiny": {"id": "daguerre:tiny@1",
                                                              "path": str(tiny_folder.model_path)}})  # fmt: skip
    engine = build_engine(settings)
    jobs = JobService(store=SQLiteJobStore(path), queue=SQLiteQueue(path, visibility_s=1))
    w = Worker(engine=engine, jobs=jobs, results=LocalResultStore(tmp_path / "images"), default_ttl=600,
               name="this", **worker)  # fmt: skip

    def new_spec(prompt: str):
        req = resolved(GenerationRequest(model="daguerre:tiny@1", positive_prompt=prompt, width=128, height=128,
                                         steps=2), engine.models.catalog)  # fmt: skip
        return specs.new("anonymous", str(uuid.uuid4()), req)

    return w, jobs, path, new_spec


def test_a_job_delivered_again_while_its_worker_lives_goes_back_to_it_and_a_copy_is_dropped(
    settings_factory, tiny_folder, tmp_path
):
    from daguerre.jobs.queue import SQLiteQueue

    worker, jobs, path, new_spec = _one_worker(settings_factory, tiny_folder, tmp_path)
    spec = new_spec("a quay")
    jobs.submit(spec)
    paused = SQLiteQueue(path, visibility_s=1)  # the worker that runs it, and paused past its claim
    theirs = paused.claim(0.5)
    time.sleep(1.1)
    again = jobs.queue.claim(0.5)
    assert again.deliveries == 2
    key = f"{spec.owner}/{spec.task_uuid}"
    jobs.store.beat({"id": "paused", "ttl": 30, "running": [key], "claims": [theirs.id], "ready": True})
    worker.handle(again)  # it lives and runs this very claim: handed back, not run here, not counted
    assert worker.done == {"success": 0, "error": 0, "cancelled": 0}
    assert paused.extend([theirs]) == [] and jobs.queue.claim(0.2) is None  # its next extend took it back

    jobs.queue.push(again.message)  # a second message of the same job (a rider queued again beside its claim)
    copy = SQLiteQueue(path, visibility_s=1).claim(0.5)
    time.sleep(1.1)
    paused.extend([theirs])
    copy_again = jobs.queue.claim(0.5)
    assert copy_again.id == copy.id and copy_again.deliveries == 2
    worker.handle(copy_again)  # runs elsewhere under another claim: this copy is dropped
    assert jobs.queue.dead_count() == 0 and len(jobs.queue) == 0
    assert paused.extend([theirs]) == [] and jobs.queue.claim(0.2) is None  # the copy is gone for good
    assert paused.ack(theirs)


def test_a_job_in_a_shared_pass_that_crashed_runs_alone_and_that_try_counts(settings_factory, tiny_folder, tmp_path):
    """A poison job that rides with other jobs' claims must still end in the dead letters after max_deliveries."""
    import dataclasses

    from daguerre.jobs.queue import SQLiteQueue
    from daguerre.jobs.spec import from_json, to_json

    worker, jobs, path, new_spec = _one_worker(settings_factory, tiny_folder, tmp_path, max_deliveries=2)
    host, rider = new_spec("a quay"), new_spec("a quay at dusk")
    jobs.submit(host)
    jobs.submit(rider)
    crashed = SQLiteQueue(path, visibility_s=1)  # a worker that took both into one pass, and died in it
    held = crashed.claim(0.5)
    assert [c.message for c in crashed.take(crashed.waiting(5), held)] != []
    time.sleep(1.1)
    again = jobs.queue.claim(0.5)
    assert again.deliveries == 2 and len(again.riders) == 1
    worker.handle(again)  # the host runs alone; the rider is queued again on its own, its crashed try counted
    assert jobs.get(*host.key).status == "success"
    [queued] = jobs.queue.waiting(5)
    assert from_json(queued).key == rider.key and from_json(queued).crashes == 1
    other = new_spec("a quay at noon")
    jobs.submit(other)
    claim = jobs.queue.claim(0.5)
    assert from_json(claim.message).key == rider.key
    worker.handle(claim)  # it shares no pass any more: the job behind it waits for its own turn
    assert jobs.get(*rider.key).status == "success" and jobs.get(*other.key).status == "queued"

    assert jobs.queue.ack(jobs.queue.claim(0.5))  # (done with it)

    # A rider queued again after its crashed pass that then crashes on its own: its tries add up, set aside.
    poison = new_spec("a quay, poison")
    jobs.submit(poison)
    dropped = crashed.claim(0.5)
    assert crashed.ack(dropped)  # stands for the rider's old message, gone with its claim
    jobs.queue.push(to_json(dataclasses.replace(poison, crashes=1)))  # as `_requeue` after the crashed pass
    crashed.claim(0.5)  # tried on its own, and it stops that worker too
    time.sleep(1.1)
    last = jobs.queue.claim(0.5)
    assert last.deliveries == 2
    worker.handle(last)  # one crashed pass + two deliveries = 3 tries > max_deliveries 2
    job = jobs.get(*poison.key)
    assert job.status == "error" and job.error["code"] == "taskCrashedWorker"
    assert [d["reason"].split(";")[0] for d in jobs.queue.dead()] == ["delivered 3 times"]
