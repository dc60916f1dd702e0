"""The task API over raw HTTP and WebSocket: every error code, delivery modes, idempotency, isolation."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import uuid

import httpx
import pytest
from PIL import Image
from websockets.sync.client import connect

from daguerre.api.keys import digest, key_id
from tests.conftest import inference_task

KEY, OTHER = "dg_test_key_one", "dg_test_key_two"
PRICE = 0.5  # server.price_per_second: includeCost reports measured compute seconds x this


def task(**kw):
    return inference_task(**kw)


def post(srv, tasks, key=KEY, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(srv.url, json=tasks, headers=headers, timeout=120, **kw)


@pytest.fixture(scope="module")
def srv(make_server):
    with make_server(api_keys=[KEY, OTHER], max_queue=50, max_body_bytes=2 * 2**20, price_per_second=PRICE) as s:
        yield s


def test_sync_rest_returns_every_result_with_url_seed_and_cost(srv):
    t = task(numberResults=2, seed=40, includeCost=True)
    r = post(srv, [t])
    assert r.status_code == 200, r.text
    items = r.json()["data"]
    assert [i["seed"] for i in items] == [40, 41]
    for i in items:
        assert i["taskUUID"] == t["taskUUID"] and i["taskType"] == "imageInference"
        assert "error" not in i and "code" not in i and i["NSFWContent"] is False
        assert 0 < i["cost"] < 60 * PRICE  # measured compute seconds x the price: some, and under a minute's
        img = httpx.get(i["imageURL"], timeout=30)
        assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(img.content)).size == (128, 128)


@pytest.mark.parametrize(
    ("output_type", "field", "prefix"),
    [("base64Data", "imageBase64Data", "/9j/"), ("dataURI", "imageDataURI", "data:image/png;base64,")],
)
def test_output_types(srv, output_type, field, prefix):
    fmt = "PNG" if output_type == "dataURI" else "JPG"
    [item] = post(srv, [task(outputType=output_type, outputFormat=fmt)]).json()["data"]
    assert item[field].startswith(prefix) and "imageURL" not in item


def test_async_then_get_response(srv):
    t = task(deliveryMethod="async", numberResults=2, seed=3)
    ack = post(srv, [t]).json()["data"]
    assert ack == [{"taskType": "imageInference", "taskUUID": t["taskUUID"], "status": "processing"}]
    deadline = time.time() + 60
    while True:
        items = post(srv, [{"taskType": "getResponse", "taskUUID": t["taskUUID"]}]).json()["data"]
        assert len(items) == 2 and all(i["imageUUID"] for i in items)
        if all(i["status"] == "success" for i in items) or time.time() > deadline:
            break
        time.sleep(0.2)
    assert [i["status"] for i in items] == ["success", "success"] and [i["seed"] for i in items] == [3, 4]


def test_same_task_uuid_same_payload_runs_once_different_payload_is_an_error(srv):
    t = task(seed=9)
    first = post(srv, [t]).json()["data"]
    again = post(srv, [t]).json()["data"]
    assert [i["imageUUID"] for i in first] == [i["imageUUID"] for i in again]
    r = post(srv, [dict(t, seed=10)])
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == "duplicateTaskUUID"


def test_twenty_concurrent_duplicates_run_once(srv):
    t = task(seed=77, deliveryMethod="async")
    jobs = srv.services.jobs
    replies = []

    def submit():
        replies.append(post(srv, [t]).json())

    threads = [threading.Thread(target=submit) for _ in range(20)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(r == replies[0] for r in replies)
    job = jobs.get(key_id(digest(KEY)), t["taskUUID"])
    deadline = time.time() + 60
    while not job.done and time.time() < deadline:
        time.sleep(0.1)
        job = jobs.get(job.owner, job.task_uuid)
    assert job.status == "success" and len(job.results) == 1


def test_tenant_isolation(srv):
    t = task(deliveryMethod="async")
    post(srv, [t])
    r = post(srv, [{"taskType": "getResponse", "taskUUID": t["taskUUID"]}], key=OTHER)
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == "taskNotFound"
    up = post(srv, [{"taskType": "imageUpload", "taskUUID": str(uuid.uuid4()), "image": _png_b64()}]).json()["data"][0]
    r = post(srv, [task(seedImage=up["imageUUID"], strength=0.5)], key=OTHER)
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == "imageNotFound"
    ok = post(srv, [task(seedImage=up["imageUUID"], strength=0.5)])
    assert ok.status_code == 200


def _png_b64(size=(96, 80)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (30, 140, 200)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize(
    ("tasks", "key", "status", "code"),
    [
        ([task()], None, 401, "missingApiKey"),
        ([task()], "wrong-key", 401, "invalidApiKey"),
        ([task(width=100)], KEY, 400, "invalidParameter"),
        ([task(steps=51)], KEY, 400, "invalidParameter"),
        ([task(model="runware:999@1")], KEY, 400, "modelNotFound"),
        ([task(puLID={"images": [_png_b64()]}, hiresFix=True)], KEY, 400, "unsupportedParameter"),
        ([task(ipAdapters=[{"model": "x", "weight": 1}])], KEY, 400, "invalidParameter"),
        ([task(controlNet=[{"model": "x", "weight": 1}])], KEY, 400, "invalidParameter"),
        ([task(lora=[{"model": "x", "weight": 1, "transformer": "high"}])], KEY, 400, "unsupportedParameter"),
        ([task(colour="red")], KEY, 400, "invalidParameter"),
        ([task(taskUUID="not-a-uuid")], KEY, 400, "invalidParameter"),
        ([task(seedImage="data:image/png;base64,AAAA")], KEY, 400, "invalidImage"),
        ([task(scheduler="DPM++ 2M Kar")], KEY, 400, "invalidParameter"),
        ([{"taskType": "videoInference", "taskUUID": str(uuid.uuid4())}], KEY, 400, "unsupportedTaskType"),
        ([{"taskType": "getResponse", "taskUUID": str(uuid.uuid4())}], KEY, 404, "taskNotFound"),
    ],
)
def test_error_codes(srv, tasks, key, status, code):
    r = post(srv, tasks, key=key)
    assert r.status_code == status, r.text
    [err] = r.json()["errors"]
    assert err["code"] == code and err["message"]
    assert "Traceback" not in r.text


def test_errors_name_parameter_and_task(srv):
    t = task(CFGScale=25)
    [err] = post(srv, [t]).json()["errors"]
    assert err["parameter"] == "CFGScale" and err["taskUUID"] == t["taskUUID"] and "[0, 20]" in err["message"]


@pytest.mark.parametrize("field", ["puLID", "pulid"])
def test_features_without_their_files_say_which_is_missing(srv, field):
    # puLID is built: a server without its files refuses it at submission, naming the file and the docs.
    [err] = post(srv, [task(**{field: {"images": [_png_b64()]}})]).json()["errors"]
    assert err["code"] == "modelNotFound" and err["parameter"] == "puLID", err
    assert "PuLID-FLUX" in err["message"] and "docs/models.md" in err["message"]
    # layerDiffuse is built: a server without its files says which one is missing and where it goes.
    [err] = post(srv, [task(advancedFeatures={"layerDiffuse": True})]).json()["errors"]
    assert err["code"] == "modelNotFound" and err["parameter"] == "layerDiffuse.lora", err
    assert "runware:120@2" in err["message"] and "docs/models.md" in err["message"]


def test_bad_bodies(srv):
    for body in (b"{not json", b"[]", b"[1, 2]", b'"text"'):
        r = httpx.post(
            srv.url,
            content=body,
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
            timeout=30,
        )
        assert r.status_code == 400 and r.json()["errors"][0]["code"] == "invalidJSON"
    big = b"[" + b" " * (3 * 2**20) + b"]"
    r = httpx.post(
        srv.url, content=big, headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}, timeout=30
    )
    assert r.status_code == 413 and r.json()["errors"][0]["code"] == "payloadTooLarge"


def test_authentication_task_instead_of_header(srv):
    r = post(srv, [{"taskType": "authentication", "apiKey": KEY}, {"taskType": "ping", "ping": True}], key=None)
    assert r.status_code == 200 and r.json()["data"] == [{"taskType": "ping", "pong": True}]


def test_server_paths_are_never_read_from_the_wire(srv, tmp_path):
    secret = tmp_path / "secret.png"
    Image.new("RGB", (64, 64)).save(secret)
    for value in (str(secret), "./secret.png", "~/secret.png"):
        [err] = post(srv, [task(seedImage=value, strength=0.5)]).json()["errors"]
        assert err["code"] == "invalidImage"
        [err] = post(srv, [{"taskType": "imageUpload", "taskUUID": str(uuid.uuid4()), "image": value}]).json()["errors"]
        assert err["code"] == "invalidImage"


def test_image_links_are_signed_and_expire(srv):
    [item] = post(srv, [task()]).json()["data"]
    url = item["imageURL"]
    assert httpx.get(url).status_code == 200
    assert httpx.get(url.replace("sig=", "sig=0")).status_code == 404
    past = url.split("exp=")[0] + "exp=1&sig=" + url.split("sig=")[1]
    assert httpx.get(past).status_code == 404


def test_websocket_protocol(srv):
    with connect(srv.ws_url) as ws:
        ws.send(json.dumps([{"taskType": "ping", "ping": True}]))
        assert json.loads(ws.recv()) == {"data": [{"taskType": "ping", "pong": True}]}
        ws.send(json.dumps([task()]))
        assert json.loads(ws.recv())["errors"][0]["code"] == "missingApiKey"
        ws.send(json.dumps([{"taskType": "authentication", "apiKey": "nope"}]))
        err = json.loads(ws.recv())["errors"][0]
        assert err["code"] == "invalidApiKey" and err["taskType"] == "authentication"
        ws.send(json.dumps([{"taskType": "authentication", "apiKey": KEY}]))
        auth = json.loads(ws.recv())["data"][0]
        assert auth["taskType"] == "authentication" and uuid.UUID(auth["connectionSessionUUID"])
        t = task(numberResults=2, seed=1)
        ws.send(json.dumps([t]))
        got = []
        while len(got) < 2:
            got += json.loads(ws.recv())["data"]
        assert [g["seed"] for g in got] == [1, 2] and all(g["taskUUID"] == t["taskUUID"] for g in got)
        ws.send("not json")
        assert json.loads(ws.recv())["errors"][0]["code"] == "invalidJSON"


def test_websocket_reconnect_gets_undelivered_results(srv):
    t = task(steps=6, seed=5)
    with connect(srv.ws_url) as ws:
        ws.send(json.dumps([{"taskType": "authentication", "apiKey": KEY}]))
        session = json.loads(ws.recv())["data"][0]["connectionSessionUUID"]
        ws.send(json.dumps([t]))
    time.sleep(0.2)  # disconnected before the result
    with connect(srv.ws_url) as ws:
        ws.send(json.dumps([{"taskType": "authentication", "apiKey": KEY, "connectionSessionUUID": session}]))
        assert json.loads(ws.recv())["data"][0]["connectionSessionUUID"] == session
        [item] = json.loads(ws.recv(timeout=60))["data"]
        assert item["taskUUID"] == t["taskUUID"] and item["seed"] == 5


def test_health(srv):
    assert httpx.get(srv.url.replace("/v1", "/health/live")).json() == {"status": "live"}
    r = httpx.get(srv.url.replace("/v1", "/health/ready"))
    assert r.status_code == 200 and r.json()["models"][0]["id"] == "daguerre:tiny@1"
    spec = httpx.get(srv.url.replace("/v1", "/openapi.json")).json()
    assert "/v1" in spec["paths"] and "/health/ready" in spec["paths"] and "/v1/images/{name}" in spec["paths"]
    body = spec["paths"]["/v1"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    inference = body["items"]["oneOf"][0]["properties"]
    assert inference["width"] == {"type": "integer", "minimum": 128, "maximum": 2048, "multipleOf": 64}
    assert "lora" in inference and {"429", "413", "401"} <= set(spec["paths"]["/v1"]["post"]["responses"])
    assert {"controlNet", "ipAdapters", "acceleratorOptions", "enhancePrompt", "character"} <= set(inference)
    assert any(t["properties"]["taskType"] == {"const": "promptEnhance"} for t in body["items"]["oneOf"])


def test_draining_refuses_new_tasks_and_is_not_ready(srv):
    srv.services.lifecycle["draining"] = True
    try:
        r = post(srv, [task()])
        assert r.status_code == 503 and r.json()["errors"][0]["code"] == "serverShuttingDown"
        assert httpx.get(srv.url.replace("/v1", "/health/ready")).status_code == 503
    finally:
        srv.services.lifecycle["draining"] = False
    assert post(srv, [task()]).status_code == 200


def test_a_crashing_job_is_an_internal_error_and_the_worker_survives(srv, monkeypatch):
    engine = srv.services.worker.engine
    real = engine.generate

    def boom(*a, **kw):
        raise RuntimeError("simulated crash inside the pipeline")

    monkeypatch.setattr(engine, "generate", boom)
    r = post(srv, [task()])
    assert r.status_code == 500
    [err] = r.json()["errors"]
    assert err["code"] == "internalError" and "simulated" not in err["message"] and "Traceback" not in r.text
    monkeypatch.setattr(engine, "generate", real)
    assert post(srv, [task()]).status_code == 200


def test_websocket_idle_timeout(make_server):
    with make_server(api_keys=[KEY], ws_idle_timeout_s=0.5) as s, connect(s.ws_url) as ws:
        time.sleep(1.0)
        with pytest.raises(Exception):  # noqa: B017 - closed by the server: any close error will do
            ws.send(json.dumps([{"taskType": "ping", "ping": True}]))
            ws.recv(timeout=2)


def test_model_that_fails_to_load(make_server, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
    (broken / "transformer").mkdir()
    (broken / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with make_server(api_keys=[KEY], extra_models={"broken": {"id": "test:broken@1", "path": str(broken)}}) as s:
        r = post(s, [task(model="test:broken@1")])
        [err] = r.json()["errors"]
        assert r.status_code == 400 and err["code"] == "modelLoadFailed" and str(broken) in err["message"]
        assert post(s, [task()]).status_code == 200


def test_ttl_expiry_deletes_images(make_server):
    with make_server(api_keys=[KEY], sweep_interval_s=0.2) as s:
        [item] = post(s, [task(ttl=60)]).json()["data"]
        store = s.services.worker.results
        assert httpx.get(item["imageURL"]).status_code == 200
        assert store.sweep(now=time.time() + 61) == 1
        r = post(s, [{"taskType": "getResponse", "taskUUID": item["taskUUID"]}]).json()
        assert r == {"data": []}
        assert httpx.get(item["imageURL"]).status_code == 404
        [err] = post(s, [task(ttl=59)]).json()["errors"]
        assert err["parameter"] == "ttl"


def test_queue_full_is_429_with_retry_after(make_server):
    with make_server(api_keys=[KEY], max_queue=1) as s:
        worker = s.services.worker
        worker._stop.set()  # nothing is claimed: the queue fills
        time.sleep(0.5)
        assert post(s, [task(deliveryMethod="async")]).status_code == 200
        r = post(s, [task(deliveryMethod="async")])
        assert r.status_code == 429 and r.headers["retry-after"] and r.json()["errors"][0]["code"] == "queueFull"


def test_restart_with_queued_jobs_loses_none(make_server, tmp_path):
    data = tmp_path / "data"
    tasks = [task(deliveryMethod="async", seed=i) for i in range(3)]
    with make_server(data_dir=data, api_keys=[KEY]) as s:
        s.services.worker._stop.set()  # the worker stops claiming: jobs stay queued
        time.sleep(0.5)
        for t in tasks:
            assert post(s, [t]).status_code == 200
    with make_server(data_dir=data, api_keys=[KEY]) as s:
        deadline = time.time() + 60
        for t in tasks:
            while True:
                items = post(s, [{"taskType": "getResponse", "taskUUID": t["taskUUID"]}]).json()["data"]
                if items and items[0]["status"] == "success" or time.time() > deadline:
                    break
                time.sleep(0.2)
            assert items[0]["status"] == "success" and items[0]["seed"] == t["seed"]


def test_anonymous_only_on_loopback_without_keys(make_server):
    with make_server() as s:
        assert post(s, [{"taskType": "ping", "ping": True}], key=None).status_code == 200
    with make_server(api_keys=[KEY]) as s:
        assert post(s, [{"taskType": "ping", "ping": True}], key=None).status_code == 401


# ---- what a newcomer and a hostile client found (each of these answered wrongly before)


def test_a_task_refused_with_429_runs_when_resent(make_server):
    with make_server(api_keys=[KEY], max_queue=1) as s:
        worker = s.services.worker
        worker._stop.set()  # nothing is claimed: the queue fills
        time.sleep(0.5)
        first = task(deliveryMethod="async")
        assert post(s, [first]).status_code == 200
        refused = task(seedImage=_png_b64(), strength=0.5)
        r = post(s, [refused])
        assert r.status_code == 429 and r.json()["errors"][0]["code"] == "queueFull"
        images = s.services.worker.results.root
        assert not any(images.glob("*.json")), "a refused task left its stored input behind"
        queue = s.services.jobs.queue
        claimed = queue.claim(1)  # room again (the first task is taken out and never runs)
        assert claimed is not None
        queue.ack(claimed)
        worker._stop.clear()
        worker.start()
        r = post(s, [refused])  # the same task again, as a client honouring Retry-After sends it
        assert r.status_code == 200, r.text
        assert r.json()["data"][0]["taskUUID"] == refused["taskUUID"]
        again = post(s, [{"taskType": "getResponse", "taskUUID": refused["taskUUID"]}])
        assert again.status_code == 200 and again.json()["data"][0]["status"] == "success"


def test_deeply_nested_json_is_an_error_not_a_crash(srv):
    nested = b"[" * 5000 + b"]" * 5000
    r = httpx.post(srv.url, content=nested, headers={"Authorization": f"Bearer {KEY}",
                                                     "Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == "invalidJSON"
    deep_field = json.dumps(
        [task(positivePrompt=[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["a"]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]])]
    )
    r = httpx.post(srv.url, content=deep_field, headers={"Authorization": f"Bearer {KEY}",
                                                         "Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 400 and "nested" in r.json()["errors"][0]["message"]
    with connect(srv.ws_url) as ws:
        ws.send(nested.decode())
        assert json.loads(ws.recv(timeout=10))["errors"][0]["code"] == "invalidJSON"
        ws.send(nested)  # a binary frame
        assert json.loads(ws.recv(timeout=10))["errors"][0]["code"] == "invalidJSON"
        ws.send(json.dumps([{"taskType": "ping", "ping": True}]))  # the connection is still there
        assert json.loads(ws.recv(timeout=10)) == {"data": [{"taskType": "ping", "pong": True}]}


def test_malformed_image_links_are_404s_in_the_documented_shape(srv):
    [item] = post(srv, [task()]).json()["data"]
    base = item["imageURL"].split("?")[0]
    exp = item["imageURL"].split("exp=")[1].split("&")[0]
    for query in (f"exp={exp}&sig=%C3%A9%C3%A9", "exp=soon&sig=abc", f"exp={'9' * 5000}&sig=abc"):
        r = httpx.get(f"{base}?{query}")
        assert r.status_code == 404 and r.json()["errors"][0]["code"] == "notFound", r.text
    r = httpx.get(srv.url.replace("/v1", "/no/such/endpoint"))
    assert r.status_code == 404 and "errors" in r.json() and "detail" not in r.json()


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain;charset=UTF-8", None),
        ("application/x-www-form-urlencoded", None),
        ("multipart/form-data; boundary=x", None),
        (None, None),
    ],
)
def test_only_json_bodies_are_run(make_server, content_type, body):
    """What a web page can send cross-origin without a CORS preflight is refused, even on a keyless server."""
    with make_server() as s:  # loopback, no key: anonymous use is on
        t = task()
        headers = {"Content-Type": content_type} if content_type else {}
        r = httpx.post(s.url, content=json.dumps([t]).encode(), headers=headers, timeout=60)
        assert r.status_code == 415 and r.json()["errors"][0]["code"] == "unsupportedMediaType"
        assert s.services.jobs.get("anonymous", t["taskUUID"]) is None, "a refused body was run"
        assert "access-control-allow-origin" not in httpx.options(s.url, headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}).headers  # fmt: skip


def test_a_web_page_of_another_origin_cannot_open_the_websocket(make_server):
    with make_server() as s:
        with pytest.raises(Exception), connect(s.ws_url, origin="https://evil.example") as ws:  # noqa: B017
            ws.send(json.dumps([{"taskType": "ping", "ping": True}]))
            ws.recv(timeout=5)
        with connect(s.ws_url, origin=s.url.replace("/v1", "")) as ws:  # the server's own pages may
            ws.send(json.dumps([{"taskType": "ping", "ping": True}]))
            assert json.loads(ws.recv(timeout=5))["data"][0]["pong"] is True


def test_control_characters_in_prompts_are_refused_on_the_wire(srv):
    for t in (task(positivePrompt="a cat\u0000 on a mat"), task(negativePrompt="blur\u001b[0m", trueCFGScale=2)):
        [err] = post(srv, [t]).json()["errors"]
        assert err["code"] == "invalidParameter" and "control character" in err["message"]
    r = post(srv, [{"taskType": "promptEnhance", "taskUUID": str(uuid.uuid4()), "prompt": "a cat\u0000"}])
    assert r.status_code == 400 and r.json()["errors"][0]["parameter"] == "prompt"


def test_model_references_never_reach_the_servers_disk(srv, tiny_folder, tmp_path):
    answers = set()
    for ref in ("/etc/passwd", str(tmp_path / "missing"), str(tiny_folder.model_path), "./x.safetensors"):
        r = post(srv, [task(model=ref)])
        [err] = r.json()["errors"]
        answers.add((r.status_code, err["code"], err["parameter"], err["message"].replace(repr(ref), "REF")))
    assert len(answers) == 1 and next(iter(answers))[1] == "modelNotFound", answers
    [err] = post(srv, [task(lora=[{"model": "/etc/passwd", "weight": 1}])]).json()["errors"]
    assert err["code"] == "modelNotFound" and err["parameter"] == "lora.model"


def test_allow_model_paths_lets_an_operator_serve_files_by_path(make_server, tiny_folder):
    with make_server(api_keys=[KEY], allow_model_paths=True) as s:
        r = post(s, [task(model=str(tiny_folder.model_path))])
        assert r.status_code == 200, r.text


def test_the_root_page_links_the_docs(srv):
    r = httpx.get(srv.url.replace("/v1", "/"))
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert 'href="/docs"' in r.text and 'href="/health/ready"' in r.text
    docs = httpx.get(srv.url.replace("/v1", "/docs"))
    assert docs.status_code == 200 and "cdn" not in docs.text.lower()  # works offline


def test_a_refused_request_leaves_no_reference_cycle_holding_its_body(srv):
    """A 50 MB body refused in the thread pool used to stay in memory (~140 MB a time) until a full GC."""
    import gc
    import types

    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        [err] = post(srv, [task(seedImage="A" * 2_000_000, strength=0.5)]).json()["errors"]
        assert err["code"] == "invalidImage"
        time.sleep(0.2)
        gc.collect()
        ours = [o for o in gc.garbage if isinstance(o, types.FrameType) and "/daguerre/" in o.f_code.co_filename]
        assert not ours, [f.f_code.co_name for f in ours]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def test_adapter_fields_must_name_models_of_their_kind_at_submission(srv):
    for field, value, parameter in (
        ("lora", [{"model": "daguerre:tiny@1", "weight": 1}], "lora.model"),
        ("ipAdapters", [{"model": "daguerre:tiny@1", "guideImages": [_png_b64()]}], "ipAdapters.model"),
    ):
        t = task(deliveryMethod="async", **{field: value})
        r = post(srv, [t])  # refused at once (it used to be queued, then failed when it ran)
        [err] = r.json()["errors"]
        assert r.status_code == 400 and err["parameter"] == parameter and "is a dev model" in err["message"]
        assert srv.services.jobs.get(key_id(digest(KEY)), t["taskUUID"]) is None


def test_metrics_count_the_queue_jobs_images_and_workers(make_server):
    from prometheus_client.parser import text_string_to_metric_families

    with make_server(api_keys=[KEY]) as s:
        r = post(s, [task(numberResults=2)])
        assert r.status_code == 200 and len(r.json()["data"]) == 2
        page = httpx.get(f"{s.base}/metrics")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
        samples = {(m.name, tuple(sorted(m.labels.items()))): m.value
                   for f in text_string_to_metric_families(page.text) for m in f.samples}  # fmt: skip
        worker = s.services.worker.id
        assert samples[("daguerre_images_total", (("worker", worker),))] == 2
        assert samples[("daguerre_jobs", (("status", "success"),))] == 1
        assert samples[("daguerre_jobs_finished_total", (("outcome", "success"), ("worker", worker)))] == 1
        assert samples[("daguerre_workers", (("state", "ready"),))] == 1
        assert samples[("daguerre_queue_wait_seconds_count", (("model", "daguerre:tiny@1"), ("worker", worker)))] == 1
        assert samples[("daguerre_dead_letters", ())] == 0
        assert samples[("daguerre_deliveries_pending", ())] == 0
        busy = [v for (name, _), v in samples.items() if name == "daguerre_busy_seconds_total"]
        assert busy and busy[0] > 0


def test_a_queued_task_reports_how_many_wait_before_it(make_server):
    with make_server(api_keys=[KEY]) as s:
        assert s.services.worker.stop(30)  # no worker: everything stays queued
        tasks = [task(deliveryMethod="async", includeProgress=True) for _ in range(3)]
        for t in tasks:
            assert post(s, [t]).status_code == 200
        positions = []
        for t in tasks:
            [item] = post(s, [{"taskType": "getResponse", "taskUUID": t["taskUUID"]}]).json()["data"]
            positions.append((item["status"], item["queuePosition"]))
        assert positions == [("processing", 0), ("processing", 1), ("processing", 2)]
