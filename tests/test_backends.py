"""One suite every backend passes: each JobStore, JobQueue, Outbox and ResultStore implementation is a parameter
of these tests (the embedded SQLite / local-disk ones, and Redis / S3)."""

from __future__ import annotations

import time
import uuid

import pytest

from daguerre.jobs import spec as specs
from daguerre.jobs.queue import QueueFull, SQLiteQueue
from daguerre.jobs.store import CANCELLED, ERROR, QUEUED, RUNNING, SUCCESS, Job, SQLiteJobStore
from daguerre.request import GenerationRequest
from daguerre.storage import LocalResultStore, StoredObject

JOB_STORES = {"sqlite": lambda tmp: SQLiteJobStore(tmp / "jobs.sqlite3"), "redis": None}  # redis: see job_store
QUEUES = {"sqlite": None, "redis-streams": None}  # see make_queue
OUTBOXES = {"sqlite": None, "redis": None}  # see make_outbox
RESULT_STORES = {"local-disk": lambda tmp: LocalResultStore(tmp / "images"), "s3": None}  # s3: see result_store


@pytest.fixture(params=list(JOB_STORES))
def job_store(request, tmp_path):
    if request.param == "redis":
        from daguerre.jobs.redis_store import RedisJobStore

        return RedisJobStore(request.getfixturevalue("redis_server"), prefix=f"test-{uuid.uuid4()}")
    return JOB_STORES[request.param](tmp_path)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server on 127.0.0.1 (installed by .ci/run), no persistence, stopped at the end."""
    import shutil
    import subprocess

    from tests.conftest import free_port

    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (CI installs it)")
    redis = pytest.importorskip("redis")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path_factory.mktemp("redis"))], stdout=subprocess.DEVNULL)  # fmt: skip
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.time() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.time() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)
    yield client
    proc.terminate()
    proc.wait(10)


@pytest.fixture(params=list(QUEUES))
def make_queue(request, tmp_path):
    """make(cap, visibility_s): another handle on this test's queue (another process / consumer)."""
    if request.param == "redis-streams":
        from daguerre.jobs.redis_queue import RedisStreamQueue

        client = request.getfixturevalue("redis_server")
        key = f"test:{uuid.uuid4()}"  # each test its own stream; another handle on it is another consumer
        return lambda cap=10, visibility_s=30.0: RedisStreamQueue(  # a server up long enough: no restart grace
            client, key=key, maxsize=cap, consumer=str(uuid.uuid4()), visibility_s=visibility_s, restart_grace_s=0
        )
    return lambda cap=10, visibility_s=30.0: SQLiteQueue(tmp_path / "jobs.sqlite3", maxsize=cap,
                                                         visibility_s=visibility_s)  # fmt: skip


@pytest.fixture(params=list(OUTBOXES))
def make_outbox(request, tmp_path):
    """make(): another handle on this test's outbox (another process's sender)."""
    if request.param == "redis":
        from daguerre.jobs.redis_outbox import RedisOutbox

        client, key = request.getfixturevalue("redis_server"), f"test:{uuid.uuid4()}:outbox"
        return lambda: RedisOutbox(client, key=key)
    from daguerre.jobs.outbox import SQLiteOutbox

    return lambda: SQLiteOutbox(tmp_path / "jobs.sqlite3")


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's standalone S3 server on 127.0.0.1 (a real S3-protocol endpoint over HTTP), with test credentials."""
    import os

    server_mod = pytest.importorskip("moto.server")
    pytest.importorskip("boto3")
    for k, v in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(k, v)
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def _bucket(endpoint: str) -> str:
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(params=list(RESULT_STORES))
def result_store(request, tmp_path):
    if request.param == "s3":
        from daguerre.storage import S3ResultStore

        endpoint = request.getfixturevalue("s3_endpoint")
        return S3ResultStore(_bucket(endpoint), prefix="img/", endpoint_url=endpoint)
    return RESULT_STORES[request.param](tmp_path)


def _job(owner="k_1", created=None, prompt="a red barn") -> Job:
    req = GenerationRequest(model="runware:101@1", positive_prompt=prompt, steps=4, seed=9)
    spec = specs.new(owner, str(uuid.uuid4()), req)
    job = Job(owner=owner, task_uuid=spec.task_uuid, task_type="imageInference", spec=spec, fingerprint="f",
              image_uuids=list(spec.image_uuids))  # fmt: skip
    if created is not None:
        job.created_at = created
    return job


# ---- JobStore


def test_store_creates_once_and_finds_by_owner_only(job_store):
    job = _job()
    assert job_store.create(job) is None
    again = job_store.create(_job(owner="k_1"))
    assert again is None  # another taskUUID: another job
    twin = _job()
    twin.task_uuid = job.task_uuid
    existing = job_store.create(twin)
    assert existing is not None and existing.spec == job.spec  # the first one, not the twin
    assert job_store.get("k_1", job.task_uuid).spec.request.positive_prompt == "a red barn"
    assert job_store.get("k_2", job.task_uuid) is None


def test_store_persists_status_results_error_and_spec(job_store):
    job = _job()
    job_store.create(job)
    job.status, job.results = RUNNING, [{"imageUUID": job.image_uuids[0], "seed": 9, "ext": "jpg", "seconds": 1.0}]
    job_store.update(job)
    got = job_store.get(job.owner, job.task_uuid)
    assert got.status == RUNNING and got.results == job.results and got.spec == job.spec
    job.status, job.error = ERROR, {"code": "outOfMemory", "message": "m", "parameter": None}
    job_store.update(job)
    assert job_store.get(job.owner, job.task_uuid).error["code"] == "outOfMemory"


def test_store_lists_unfinished_jobs_oldest_first_and_counts_them(job_store):
    now = time.time()
    jobs = [_job(created=now - 30), _job(created=now - 20), _job(created=now - 10)]
    for j in jobs:
        job_store.create(j)
    jobs[1].status = SUCCESS
    job_store.update(jobs[1])
    jobs[2].status = RUNNING
    job_store.update(jobs[2])
    assert [j.task_uuid for j in job_store.unfinished()] == [jobs[0].task_uuid, jobs[2].task_uuid]
    assert job_store.counts() == {QUEUED: 1, SUCCESS: 1, RUNNING: 1}


def test_store_deletes(job_store):
    job = _job()
    job_store.create(job)
    job_store.delete(job.owner, job.task_uuid)
    assert job_store.get(job.owner, job.task_uuid) is None
    assert job_store.create(job) is None  # the taskUUID is free again


def test_store_numbers_jobs_and_finds_them_by_number_for_their_owner_only(job_store):
    a, b = _job(), _job()
    job_store.create(a)
    job_store.create(b)
    assert isinstance(a.number, int) and b.number > a.number  # integer ids for doors that need them
    assert job_store.get_number("k_1", b.number).task_uuid == b.task_uuid
    assert job_store.get(a.owner, a.task_uuid).number == a.number
    assert job_store.get_number("k_2", a.number) is None and job_store.get_number("k_1", 10**9) is None


def test_store_starts_a_queued_job_once(job_store):
    job = _job()
    job_store.create(job)
    assert job_store.start(job) and job.status == RUNNING and job.started_at
    assert not job_store.start(job)  # already running: a second worker does not take it
    got = job_store.get(job.owner, job.task_uuid)
    assert got.status == RUNNING and got.started_at == job.started_at
    assert job_store.start(got, again=True)  # a redelivery: its first worker died
    assert job_store.counts() == {RUNNING: 1}
    got.status = SUCCESS
    job_store.update(got)
    assert not job_store.start(got, again=True)  # finished: never again


def test_store_keeps_live_workers_until_their_beat_expires(job_store):
    job_store.beat({"id": "w1", "ttl": 0.5, "device": "cpu", "resident": ["m"]})
    job_store.beat({"id": "w2", "ttl": 30, "device": "cuda:0", "resident": []})
    assert [w["id"] for w in job_store.workers()] == ["w1", "w2"]
    assert job_store.workers()[0]["resident"] == ["m"]
    time.sleep(0.6)
    assert [w["id"] for w in job_store.workers()] == ["w2"]
    job_store.forget("w2")
    assert job_store.workers() == []


def test_store_cancels_queued_jobs_at_once_and_flags_running_ones(job_store):
    queued, running, done = _job(), _job(), _job()
    for j in (queued, running, done):
        job_store.create(j)
    job_store.start(running)
    done.status = SUCCESS
    job_store.update(done)
    got = job_store.request_cancel("k_1", queued.task_uuid)
    assert got.status == CANCELLED and got.completed_at and got.cancel_requested
    assert not job_store.start(queued)  # a worker that claims it afterwards skips it
    assert job_store.request_cancel("k_1", running.task_uuid).status == RUNNING  # the worker stops it
    assert job_store.cancel_requested("k_1", running.task_uuid)
    running.status = SUCCESS
    job_store.update(running)  # the worker's later updates keep the request
    assert job_store.cancel_requested("k_1", running.task_uuid)
    assert job_store.request_cancel("k_1", done.task_uuid).status == SUCCESS  # finished: left as it is
    assert job_store.request_cancel("k_2", queued.task_uuid) is None
    assert not job_store.cancel_requested("k_2", queued.task_uuid)


def test_store_keeps_progress_and_the_last_log_lines(job_store):
    from daguerre.jobs.store import LOG_LINES

    job = _job()
    job_store.create(job)
    job.progress = {"step": 3, "total": 4, "images": [0]}
    job.log = [f"line {i}" for i in range(LOG_LINES + 5)]
    job_store.save_progress(job)
    got = job_store.get(job.owner, job.task_uuid)
    assert got.progress == job.progress and got.log == job.log[-LOG_LINES:]


def test_store_counts_an_owners_unfinished_jobs(job_store):
    jobs = [_job(), _job(), _job(), _job(owner="k_2")]
    for j in jobs:
        job_store.create(j)
    jobs[0].status = SUCCESS
    job_store.update(jobs[0])
    job_store.start(jobs[1])
    assert job_store.count_unfinished("k_1") == 2 and job_store.count_unfinished("k_2") == 1
    assert job_store.count_unfinished("k_3") == 0
    job_store.request_cancel("k_2", jobs[3].task_uuid)
    job_store.delete("k_1", jobs[2].task_uuid)
    assert job_store.count_unfinished("k_1") == 1 and job_store.count_unfinished("k_2") == 0


def test_store_counts_the_jobs_queued_before_one(job_store):
    jobs = [_job(created=100.0 + i, owner=f"k_{i % 2}") for i in range(5)]
    for j in jobs:
        job_store.create(j)
    assert [job_store.queued_before(j.created_at) for j in jobs] == [0, 1, 2, 3, 4]  # every owner's count
    job_store.start(jobs[1])
    job_store.request_cancel(jobs[2].owner, jobs[2].task_uuid)
    assert job_store.queued_before(jobs[4].created_at) == 2
    jobs[1].status = QUEUED  # a rider whose claim ended without running it goes back to the queue
    job_store.update(jobs[1])
    assert job_store.queued_before(jobs[4].created_at) == 3


def test_a_redis_store_from_before_the_owner_index_builds_it_once(redis_server):
    from daguerre.jobs.redis_store import RedisJobStore

    prefix = f"test-{uuid.uuid4()}"
    store = RedisJobStore(redis_server, prefix=prefix)
    jobs = [_job(created=100.0 + i) for i in range(3)]
    for j in jobs:
        store.create(j)
    store.start(jobs[0])
    for key in redis_server.keys(f"{prefix}:unfinished:*"):  # as an older Daguerre left it
        redis_server.delete(key)
    again = RedisJobStore(redis_server, prefix=prefix)
    assert again.count_unfinished("k_1") == 3 and again.queued_before(200.0) == 2


def test_store_lists_an_owners_recent_jobs_newest_first_in_pages(job_store):
    jobs = [_job() for _ in range(5)] + [_job(owner="k_2")]
    for j in jobs:
        job_store.create(j)
    first = job_store.recent("k_1", 3)
    assert [j.task_uuid for j in first] == [j.task_uuid for j in jobs[4:1:-1]]
    rest = job_store.recent("k_1", 3, before=first[-1].number)
    assert [j.task_uuid for j in rest] == [jobs[1].task_uuid, jobs[0].task_uuid]
    assert [j.owner for j in job_store.recent("k_2", 10)] == ["k_2"]


def test_store_sets_completed_at_when_a_job_ends(job_store):
    job = _job()
    job_store.create(job)
    job.status = ERROR
    job_store.update(job)
    got = job_store.get(job.owner, job.task_uuid)
    assert got.completed_at and got.completed_at >= got.created_at


# ---- JobQueue


def _messages(claims):
    return [c.message if c is not None else None for c in claims]


def test_queue_is_fifo_and_claim_times_out(make_queue):
    q = make_queue()
    for m in ("a", "b", "c"):
        q.push(m)
    assert len(q) == 3 and _messages([q.claim(0.1) for _ in range(3)]) == ["a", "b", "c"]
    assert len(q) == 0  # claimed: not waiting
    t0 = time.perf_counter()
    assert q.claim(0.2) is None and time.perf_counter() - t0 >= 0.15


def test_queue_refuses_past_its_cap_unless_forced(make_queue):
    q = make_queue(2)
    q.push("a")
    q.push("b")
    with pytest.raises(QueueFull):
        q.push("c")
    q.push("c", force=True)  # start-up recovery re-queues everything
    assert len(q) == 3


def test_two_consumers_of_one_queue_never_get_the_same_job(make_queue):
    q, other = make_queue(), make_queue()
    for m in ("a", "b", "c", "d"):
        q.push(m)
    got = _messages([q.claim(0.1), other.claim(0.1), q.claim(0.1), other.claim(0.1)])
    assert sorted(got) == ["a", "b", "c", "d"] and len(q) == len(other) == 0


def test_queue_look_ahead_and_take(make_queue):
    q = make_queue()
    for m in ("a", "b", "c", "d"):
        q.push(m)
    first = q.claim(0.1)
    assert first.message == "a" and first.deliveries == 1
    assert q.waiting(2) == ["b", "c"] and len(q) == 3  # looking takes nothing
    assert _messages(q.take(["c", "zz"], first)) == ["c"]  # only what is still waiting
    assert _messages([q.claim(0.1), q.claim(0.1), q.claim(0.1)]) == ["b", "d", None]


def test_an_acknowledged_job_is_gone_and_an_unacknowledged_one_comes_back_to_another_worker(make_queue):
    dead, live = make_queue(visibility_s=1), make_queue(visibility_s=1)
    dead.push("a")
    dead.push("b")
    _held, b = dead.claim(0.1), dead.claim(0.1)
    dead.ack(b)  # b finished; then this worker dies holding a
    assert live.claim(0.3) is None  # not before the visibility timeout
    time.sleep(1.1)
    again = live.claim(0.5)
    assert again.message == "a" and again.deliveries == 2
    live.ack(again)
    time.sleep(1.1)
    assert live.claim(0.2) is None and len(live) == 0  # b and a are done: neither comes back


def test_a_live_worker_keeps_its_job_by_extending_the_claim(make_queue):
    mine, other = make_queue(visibility_s=1), make_queue(visibility_s=1)
    mine.push("a")
    claim = mine.claim(0.1)
    for _ in range(3):
        time.sleep(0.5)
        mine.extend([claim])
    assert other.claim(0.1) is None  # 1.5 s later, still held
    mine.ack(claim)


def test_riders_are_acknowledged_with_their_claim_and_come_back_with_it(make_queue):
    dead, live = make_queue(visibility_s=1), make_queue(visibility_s=1)
    for m in ("a", "b", "c"):
        dead.push(m)
    first = dead.claim(0.1)
    assert _messages(dead.take(["c"], first)) == ["c"]
    time.sleep(1.1)  # the worker died running a + c together
    again = live.claim(0.5)
    assert again.message == "a" and again.riders == ("c",)
    b = live.claim(0.1)
    assert b.message == "b"  # c is not handed out on its own
    live.ack(again)
    live.ack(b)
    time.sleep(1.1)
    assert live.claim(0.2) is None


def test_a_buried_job_is_in_the_dead_letters_and_not_delivered_again(make_queue):
    q = make_queue(visibility_s=1)
    q.push("poison")
    q.push("b")
    claim = q.claim(0.1)
    rider = q.take(["b"], claim)
    assert _messages(rider) == ["b"]
    q.bury(claim, "delivered 4 times")
    dead = q.dead()
    assert [(d["message"], d["reason"]) for d in dead] == [("poison", "delivered 4 times")]
    assert q.dead_count() == 1
    time.sleep(1.1)
    assert q.claim(0.2) is None  # poison never comes back; its rider went with it (the worker re-queues it)


def test_a_deferred_job_comes_back_after_its_pause_without_counting_a_delivery(make_queue):
    q, other = make_queue(visibility_s=30), make_queue(visibility_s=30)
    q.push("a")
    claim = q.claim(0.1)
    q.defer(claim, 0.5)  # left for a worker that has its model loaded
    assert other.claim(0.1) is None
    time.sleep(0.6)
    again = other.claim(0.5)
    assert again.message == "a" and again.deliveries == 1


def test_release_hands_every_claim_out_again_at_once(make_queue):
    q = make_queue(visibility_s=30)
    q.push("a")
    q.claim(0.1)
    q.release(idle_s=0)  # no worker is live (a restart): the claim is a dead one's
    again = make_queue(visibility_s=30).claim(0.5)
    assert again is not None and again.message == "a" and again.deliveries == 2
    again_q = make_queue(visibility_s=30)
    again_q.extend([again])
    again_q.release(idle_s=5)  # extended a moment ago: a live worker's (one starting beside us), kept
    assert make_queue(visibility_s=30).claim(0.2) is None


def test_extend_tells_a_stalled_worker_it_lost_its_claim_and_does_not_take_it_back(make_queue):
    stalled, other = make_queue(visibility_s=1), make_queue(visibility_s=1)
    stalled.push("a")
    mine = stalled.claim(0.1)
    assert stalled.extend([mine]) == []  # still held
    time.sleep(1.1)  # stalled past its visibility timeout
    theirs = other.claim(0.5)
    assert theirs.message == "a" and theirs.deliveries == 2
    assert stalled.extend([mine]) == [mine]  # lost: another worker holds it now
    assert not stalled.ack(mine) and not stalled.bury(mine, "late")  # nor can it settle the job it lost
    time.sleep(1.1)
    assert other.extend([theirs]) == []  # the stalled worker's extend did not take it back
    assert stalled.dead_count() == 0
    assert other.ack(theirs)
    assert stalled.extend([mine]) == [mine]  # acknowledged: gone


def test_a_claim_handed_back_unrun_is_taken_back_by_the_worker_still_running_it(make_queue):
    paused, other = make_queue(visibility_s=1), make_queue(visibility_s=1)
    paused.push("a")
    mine = paused.claim(0.1)
    time.sleep(1.1)  # the worker paused past its timeout, but lives (it still lists the job as running)
    theirs = other.claim(0.5)
    assert theirs.deliveries == 2
    other.defer(theirs, 0.5)  # so the other worker gives it back unrun, uncounted
    assert paused.extend([mine]) == []  # and the paused worker's next extend takes it back
    time.sleep(0.7)
    assert other.claim(0.2) is None  # held again: not handed out after the pause
    assert paused.ack(mine) and len(paused) == 0


def test_a_redis_queue_takes_no_claim_over_just_after_the_server_started(redis_server):
    from daguerre.jobs.redis_queue import RedisStreamQueue

    key = f"test:{uuid.uuid4()}"
    dead = RedisStreamQueue(redis_server, key=key, consumer="dead", visibility_s=1)
    for m in ("a", "b"):
        dead.push(m)
    dead.claim(0.1)
    left = dead.claim(0.1)
    time.sleep(1.1)  # idle past the timeout, but as after a restart: the pending list counts the downtime
    live = RedisStreamQueue(redis_server, key=key, consumer="live", visibility_s=1)
    up = int(redis_server.info("server")["uptime_in_seconds"])
    live.restart_grace_s = up + 1.5  # as if the server had started a moment ago
    live.release(idle_s=0)  # no worker is live, it seems (their beats expired with the downtime): kept anyway
    assert live.claim(0.1) is None  # its holder may be a live worker that has not reconnected yet
    dead.defer(left, 0)  # given back unrun: handed out at once, grace or not
    assert live.claim(0.2).message == "b"
    while int(redis_server.info("server")["uptime_in_seconds"]) < up + 2:  # past the grace
        time.sleep(0.1)
    live._up_read = 0.0  # (read the uptime again now)
    again = live.claim(0.5)
    assert again is not None and again.message == "a" and again.deliveries == 2


# ---- Outbox


def test_outbox_a_send_written_with_a_lease_is_not_due_for_anyone_else(make_outbox):
    box, other = make_outbox(), make_outbox()
    lease = box.add("msg_1", {"url": "http://x/"}, lease_s=30)
    assert lease is not None and lease.attempt == 1 and lease.item == {"url": "http://x/"}
    assert other.due(10, lease_s=30) == [] and len(other) == 1
    assert box.done(lease) and len(box) == 0 and other.due(10, lease_s=30) == []


def test_outbox_keeps_one_send_per_id_even_after_it_was_sent(make_outbox):
    box = make_outbox()
    lease = box.add("msg_1", {"n": 1}, lease_s=30)
    assert box.add("msg_1", {"n": 2}, lease_s=30) is None  # a job run again announces the same image again
    box.done(lease)
    assert box.add("msg_1", {"n": 3}, lease_s=30) is None and len(box) == 0  # settled: still not owed again


def test_outbox_retry_is_due_at_its_time_for_one_sender_only(make_outbox):
    box, a, b = make_outbox(), make_outbox(), make_outbox()
    lease = box.add("msg_1", {"n": 1}, lease_s=30)
    assert box.retry(lease, time.time() + 0.3)
    assert a.due(10, lease_s=30) == [] and 0 < box.next_due() - time.time() <= 0.3
    time.sleep(0.35)
    got, also = a.due(10, lease_s=30), b.due(10, lease_s=30)
    assert [g.id for g in got] == ["msg_1"] and got[0].attempt == 2 and also == []
    assert a.done(got[0]) and box.next_due() is None


def test_outbox_a_stopped_senders_lease_runs_out_and_its_late_answer_is_ignored(make_outbox):
    dead, live = make_outbox(), make_outbox()
    stale = dead.add("msg_1", {"n": 1}, lease_s=0.3)  # its sender died before sending
    live.add("msg_2", {"n": 2}, lease_s=None)  # written unleased: due now
    assert [g.id for g in live.due(10, lease_s=30)] == ["msg_2"]
    time.sleep(0.35)
    [taken] = live.due(10, lease_s=30)
    assert taken.id == "msg_1" and taken.attempt == 2
    assert not dead.done(stale) and not dead.retry(stale, 0)  # too late: the live sender holds it
    assert live.done(taken) and len(live) == 1  # msg_2 is still held by its lease


# ---- ResultStore


def _obj(owner="k_1", ttl=60.0, ext="png") -> StoredObject:
    return StoredObject(uuid=str(uuid.uuid4()), owner=owner, ext=ext, kind="result", expires_at=time.time() + ttl)


def test_results_round_trip_for_their_owner_only(result_store):
    obj = _obj()
    result_store.put(obj, b"\x89PNG...")
    assert result_store.get(obj.uuid, "k_1") == (obj, b"\x89PNG...")
    assert result_store.get(obj.uuid, None)[1] == b"\x89PNG..."  # the server's own link check: any owner
    assert result_store.get(obj.uuid, "k_2") is None
    assert result_store.get("../../etc/passwd", None) is None and result_store.get(str(uuid.uuid4()), None) is None


def test_results_expire_and_are_swept(result_store):
    gone, kept = _obj(ttl=-1), _obj(ttl=600)
    result_store.put(gone, b"old")
    result_store.put(kept, b"new")
    assert result_store.get(gone.uuid, "k_1") is None  # past its expiry: absent at once
    assert result_store.sweep() == 1
    assert result_store.get(kept.uuid, "k_1")[1] == b"new"
    assert result_store.sweep(now=time.time() + 601) == 1


def test_results_delete(result_store):
    obj = _obj()
    result_store.put(obj, b"x")
    result_store.delete(obj.uuid)
    result_store.delete(obj.uuid)  # deleting twice is fine
    assert result_store.get(obj.uuid, "k_1") is None


def test_two_redis_store_handles_share_jobs_and_one_start_wins(redis_server):
    """What several API nodes and workers rely on: one Redis, many handles, one winner per job."""
    from daguerre.jobs.redis_store import RedisJobStore

    prefix = f"test-{uuid.uuid4()}"
    api, worker_a, worker_b = (RedisJobStore(redis_server, prefix=prefix) for _ in range(3))
    job = _job()
    assert api.create(job) is None
    a, b = worker_a.get(*job.key), worker_b.get(*job.key)
    assert [worker_a.start(a), worker_b.start(b)] == [True, False]
    assert api.get(*job.key).status == RUNNING and api.counts() == {RUNNING: 1}
    assert api.get_number(job.owner, job.number).task_uuid == job.task_uuid


def test_s3_links_are_presigned_for_the_images_ttl_and_download_the_image(s3_endpoint, make_server):
    """A server with results on S3: imageURL is the bucket's presigned URL, expiring with the task's ttl."""
    from urllib.parse import parse_qs, urlparse

    import httpx

    from tests.conftest import inference_task

    bucket = _bucket(s3_endpoint)
    with make_server(results="s3", s3_bucket=bucket, s3_prefix="p/", s3_endpoint_url=s3_endpoint) as s:
        r = httpx.post(s.url, json=[inference_task(ttl=120, outputType="URL", outputFormat="PNG")], timeout=60)
        assert r.status_code == 200, r.text
        url = r.json()["data"][0]["imageURL"]
        assert url.startswith(f"{s3_endpoint}/{bucket}/p/")
        query = parse_qs(urlparse(url).query)
        assert 115 <= int(query["X-Amz-Expires"][0]) <= 120
        got = httpx.get(url, timeout=10)
        assert got.status_code == 200 and got.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert got.headers["content-type"] == "image/png"
