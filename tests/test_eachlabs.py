"""The eachlabs predictions door, as its clients call it: create / run / get / cancel, the model listing, the
webhook, errors, auth and the per-key limit. (The official JavaScript SDK runs against it in test_eachlabs_js.)"""

from __future__ import annotations

import base64
import io
import json
import time

import httpx
import pytest
from PIL import Image

from tests.test_delivery import Receiver

SLUG = "tencent-flux-1-srpo-text-to-image"
K1, K2 = {"X-API-Key": "k1"}, {"Authorization": "Bearer k2"}


@pytest.fixture(scope="module")
def srv(make_server):
    with make_server(api_keys=["k1", "k2"], aliases=[SLUG, "tencent-flux-1-srpo-image-to-image"],
                     outbound_allow_loopback=True, webhook_retry_schedule=[0.1, 0.1, 0.1, 0.1]) as s:  # fmt: skip
        s.api = s.base + "/v1"
        yield s


def create(srv, headers=K1, slash=True, **input_):
    body = {"model": SLUG, "version": "0.0.1",
            "input": {"prompt": "portrait of a woman, soft light", "image_size": {"width": 192, "height": 128},
                      "num_inference_steps": 2, **input_}}  # fmt: skip
    return httpx.post(f"{srv.api}/prediction{'/' if slash else ''}", json=body, headers=headers, timeout=60)


def poll(srv, pid, headers=K1, timeout=60):
    deadline = time.time() + timeout
    while True:
        got = httpx.get(f"{srv.api}/prediction/{pid}", headers=headers).json()
        if got["status"] in ("success", "error", "cancelled") or time.time() > deadline:
            return got
        time.sleep(0.1)


def image_at(url: str) -> Image.Image:
    if url.startswith("data:"):
        return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    r = httpx.get(url)
    assert r.status_code == 200
    return Image.open(io.BytesIO(r.content))


def test_create_then_poll_gives_images_of_the_requested_size(srv):
    for slash in (True, False):
        r = create(srv, slash=slash, num_images=2, seed="7")
        assert r.status_code == 200
        body = r.json()
        assert body["status"] == "success" and body["message"] and body["predictionID"]
        got = poll(srv, body["predictionID"])
        assert got["status"] == "success" and got["id"] == body["predictionID"]
        assert len(got["output"]) == 2 and all(image_at(u).size == (192, 128) for u in got["output"])
        assert image_at(got["output"][0]).format == "JPEG"
        assert got["input"]["seed"] == 7 and got["input"]["prompt"].startswith("portrait")
        assert "2/2" in got["logs"] and "Using seed: 7" in got["logs"]
        assert got["metrics"]["predict_time"] > 0 and got["metrics"]["cost"] == 0
        assert got["urls"]["get"].endswith(f"/v1/prediction/{got['id']}") and got["urls"]["cancel"].endswith("/cancel")


def test_run_answers_when_done_and_sync_mode_gives_data_uris(srv):
    body = {"model": SLUG, "version": "0.0.1", "input": {"prompt": "a red barn", "image_size": "square",
                                                         "num_inference_steps": 1, "sync_mode": True,
                                                         "output_format": "png"}}  # fmt: skip
    r = httpx.post(f"{srv.api}/prediction/run", json=body, headers=K2, timeout=60)
    got = r.json()
    assert r.status_code == 200 and got["status"] == "success" and got["predictionID"]
    [uri] = got["output"]
    assert uri.startswith("data:image/png;base64,") and image_at(uri).size == (512, 512)


def test_image_to_image_model(srv):
    src = Image.new("RGB", (256, 192), (180, 120, 90))
    buf = io.BytesIO()
    src.save(buf, "PNG")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    body = {"model": "tencent-flux-1-srpo-image-to-image", "version": "0.0.1",
            "input": {"prompt": "a brick wall", "image_url": uri, "strength": 0.6, "num_inference_steps": 2,
                      "image_size": {"width": 256, "height": 192}}}  # fmt: skip
    r = httpx.post(f"{srv.api}/prediction/run", json=body, headers=K1, timeout=60)
    got = r.json()
    assert got["status"] == "success", got
    job = srv.services.jobs.get(srv.services.keys.verify("k1"), got["predictionID"])
    assert job.spec.request.strength == 0.6 and job.spec.images  # the source went in as a stored image
    schema = httpx.get(f"{srv.api}/model", params={"slug": "tencent-flux-1-srpo-image-to-image"}).json()
    assert "image_url" in schema["request_schema"]["required"]


def test_models_list_and_one_models_request_schema(srv):
    models = httpx.get(f"{srv.api}/models").json()
    assert isinstance(models, list) and models[0]["slug"] == SLUG and models[0]["version"] == "0.0.1"
    one = httpx.get(f"{srv.api}/model", params={"slug": SLUG}).json()
    props = one["request_schema"]["properties"]
    assert one["slug"] == SLUG and one["request_schema"]["required"] == ["prompt"]
    assert props["num_inference_steps"]["default"] == 28 and props["guidance_scale"]["default"] == 4.5
    assert set(props["acceleration"]["enum"]) == {"none", "regular", "high"}
    missing = httpx.get(f"{srv.api}/model", params={"slug": "no-such-model"})
    assert missing.status_code == 400 and missing.json()["details"]["code"] == "modelNotFound"


def test_acceleration_maps_to_step_caching(srv):
    r = create(srv, acceleration="high", num_inference_steps=6)
    got = poll(srv, r.json()["predictionID"])
    job = srv.services.jobs.get(srv.services.keys.verify("k1"), got["id"])
    accel = job.spec.request.accelerator
    assert got["status"] == "success" and accel.tea_cache and accel.tea_cache_distance == 0.5


@pytest.mark.parametrize(
    ("input_", "parameter"),
    [
        ({"image_size": "huge"}, "input.image_size"),
        ({"image_size": {"width": 100, "height": 128}}, "input.image_size"),
        ({"num_inference_steps": 99}, "input.num_inference_steps"),
        ({"num_images": 9}, "input.num_images"),
        ({"output_format": "gif"}, "input.output_format"),
        ({"acceleration": "ludicrous"}, "input.acceleration"),
        ({"negative_prompt": "blur"}, "input.negative_prompt"),
        ({"seed": "seven"}, "input.seed"),
        ({"strength": 0.5}, "input.strength"),
        ({"prompt": None}, "input.prompt"),
    ],
)
def test_bad_input_names_the_field(srv, input_, parameter):
    r = create(srv, **input_)
    body = r.json()
    assert r.status_code == 400 and body["status"] == "error" and body["details"]["parameter"] == parameter, body
    assert body["error"]


def test_auth_isolation_and_not_found(srv):
    pid = create(srv).json()["predictionID"]
    assert poll(srv, pid)["status"] == "success"
    other = httpx.get(f"{srv.api}/prediction/{pid}", headers=K2)
    assert other.status_code == 404 and "error" in other.json()  # another key sees nothing
    assert httpx.get(f"{srv.api}/prediction/{pid}").status_code == 401
    assert httpx.get(f"{srv.api}/prediction/{pid}", headers={"X-API-Key": "nope"}).status_code == 401
    assert httpx.get(f"{srv.api}/prediction/not-an-id", headers=K1).status_code == 404
    body = {"model": SLUG, "version": "9.9.9", "input": {"prompt": "x"}}
    r = httpx.post(f"{srv.api}/prediction/", json=body, headers=K1)
    assert r.status_code == 400 and r.json()["details"]["parameter"] == "version"


def test_cancel_a_queued_prediction_and_a_finished_one(srv):
    slow = create(srv, num_inference_steps=40, image_size={"width": 512, "height": 512}).json()["predictionID"]
    queued = create(srv).json()["predictionID"]
    r = httpx.post(f"{srv.api}/prediction/{queued}/cancel", headers=K1)
    assert r.status_code == 200 and r.json() == {"status": "cancelled", "message": "Prediction cancelled",
                                                 "predictionID": queued}  # fmt: skip
    httpx.post(f"{srv.api}/prediction/{slow}/cancel", headers=K1)
    assert poll(srv, queued)["status"] == "cancelled" and poll(srv, slow)["status"] == "cancelled"
    done = create(srv).json()["predictionID"]
    poll(srv, done)
    assert httpx.post(f"{srv.api}/prediction/{done}/cancel", headers=K1).json()["status"] == "success"
    assert httpx.post(f"{srv.api}/prediction/{done}/cancel", headers=K2).status_code == 404


def test_webhook_on_success_and_three_attempts_on_failure(srv):
    ok = Receiver([200])
    fails = Receiver([500, 500, 500, 500, 500])
    try:
        for receiver in (ok, fails):
            body = {"model": SLUG, "version": "0.0.1", "webhook_url": receiver.url(), "webhook_secret": "s3cret",
                    "input": {"prompt": "a lighthouse", "image_size": "square", "num_inference_steps": 1}}  # fmt: skip
            pid = httpx.post(f"{srv.api}/prediction/", json=body, headers=K1).json()["predictionID"]
            assert poll(srv, pid)["status"] == "success"
        [(method, _, headers, raw)] = ok.wait(1)
        hook = json.loads(raw)
        assert method == "POST" and headers["X-Webhook-Secret"] == "s3cret"
        assert hook["status"] == "succeeded" and hook["flow_id"] is None and hook["error"] == ""
        assert hook["exec_id"] and len(hook["output"]) == 1 and image_at(hook["output"][0]).size == (512, 512)
        time.sleep(1.0)  # every retry of the schedule would be due by now
        assert len(fails.wait(3)) == 3
    finally:
        ok.close()
        fails.close()


def test_a_keys_in_flight_limit_answers_429(srv):
    server = srv.services.settings.server
    server.max_in_flight_per_key = 1
    try:
        first = create(srv, num_inference_steps=30, image_size={"width": 512, "height": 512}).json()["predictionID"]
        r = create(srv)
        assert r.status_code == 429 and r.json()["details"]["code"] == "inFlightLimit" and r.headers["Retry-After"]
        assert create(srv, headers=K2).status_code == 200  # the limit is per key
        httpx.post(f"{srv.api}/prediction/{first}/cancel", headers=K1)
    finally:
        server.max_in_flight_per_key = 64


def test_bad_bodies(srv):
    for content, ctype in ((b"{nope", "application/json"), (b'{"model": 1}', "text/plain")):
        r = httpx.post(f"{srv.api}/prediction/", content=content, headers={**K1, "Content-Type": ctype})
        assert r.status_code in (400, 415) and r.json()["status"] == "error"
    r = httpx.post(f"{srv.api}/prediction/", json={"model": SLUG, "version": "0.0.1", "input": {"prompt": "x"},
                                                   "colour": "red"}, headers=K1)  # fmt: skip
    assert r.status_code == 400 and r.json()["details"]["parameter"] == "colour"
