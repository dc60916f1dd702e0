"""The Replicate predictions door, driven by the official `replicate` client (1.0.7) unmodified: run,
predictions create/get/cancel/wait/list, models and versions, webhooks signed per Standard Webhooks, streams,
errors, and HTTPS (where the client hands back FileOutput objects whose bytes are the images)."""

from __future__ import annotations

import io
import json
import ssl
import time

import httpx
import pytest
from PIL import Image

replicate = pytest.importorskip("replicate")
from replicate.exceptions import ModelError, ReplicateError  # noqa: E402

from tests.test_delivery import Receiver  # noqa: E402

MODEL = "black-forest-labs/flux-dev"
SMALL = {"prompt": "portrait of a woman, window light", "aspect_ratio": "custom", "width": 192, "height": 128,
         "num_inference_steps": 2}  # fmt: skip


@pytest.fixture(scope="module")
def srv(make_server):
    with make_server(api_keys=["k1", "k2"], aliases=[MODEL], outbound_allow_loopback=True,
                     webhook_retry_schedule=[0.2]) as s:  # fmt: skip
        yield s


@pytest.fixture(scope="module")
def client(srv):
    c = replicate.Client(api_token="k1", base_url=srv.base)
    yield c
    c._client.close()  # a kept-alive connection would hold the server's shutdown


def size_of(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


def test_run_returns_the_images(srv, client):
    out = client.run(MODEL, input={**SMALL, "num_outputs": 2, "output_format": "png"})
    assert isinstance(out, list) and len(out) == 2
    # Over plain http the client hands back the URLs as text (FileOutput is for https: and data: URLs).
    assert all(size_of(httpx.get(str(u)).content) == (192, 128) for u in out)


class Recording(httpx.HTTPTransport):
    """The client's transport, keeping every answer's JSON."""

    def __init__(self):
        super().__init__()
        self.answers: list[tuple[str, str, dict]] = []

    def handle_request(self, request):
        response = super().handle_request(request)
        response.read()
        if response.headers.get("content-type", "").startswith("application/json"):
            self.answers.append((request.method, request.url.path, response.json()))
        return response


def test_run_keeps_polling_past_a_blocking_timeout(srv):
    """Prefer: wait=1 on a job that takes longer: the server answers `starting`, and the client polls to the end."""
    engine = srv.services.engine
    original = engine.generate

    def slow(*a, **k):
        time.sleep(1.5)  # a model slower than the wait
        return original(*a, **k)

    engine.generate = slow
    transport = Recording()
    try:
        c = replicate.Client(api_token="k1", base_url=srv.base, transport=transport)
        out = c.run(MODEL, input={**SMALL, "go_fast": False}, wait=1)
    finally:
        del engine.generate
    assert len(out) == 1 and size_of(httpx.get(str(out[0])).content) == (192, 128)
    (method, path, first), *polls = transport.answers
    assert method == "POST" and first["status"] == "starting" and first["output"] is None
    assert polls and polls[-1][2]["status"] == "succeeded"


def test_create_get_wait_and_the_prediction_object(srv, client):
    p = client.predictions.create(model=MODEL, input={"prompt": "a harbour at dusk", "seed": 5, "aspect_ratio": "3:2",
                                                      "megapixels": "0.25", "num_inference_steps": 2})  # fmt: skip
    assert p.status in ("starting", "processing") and p.urls["get"].endswith(p.id) and p.urls["stream"]
    got = client.predictions.get(p.id)
    assert got.id == p.id and got.model == MODEL and len(got.version) == 64
    p.wait()
    assert p.status == "succeeded" and p.error is None and len(p.output) == 1
    assert size_of(httpx.get(p.output[0]).content) == (640, 448)  # 3:2 at 1 MP (1216x832), halved, to 64s
    assert p.metrics["predict_time"] > 0 and p.created_at.endswith("Z") and p.completed_at >= p.started_at
    assert "Using seed: 5" in p.logs and "2/2" in p.logs
    assert p.input["seed"] == 5 and p.input["width"] == 640


def test_version_run_models_and_versions(srv, client):
    model = client.models.get(MODEL)
    assert model.owner == "black-forest-labs" and model.name == "flux-dev" and model.latest_version.id
    version = model.versions.get(model.latest_version.id)
    assert version.openapi_schema["components"]["schemas"]["Output"]["type"] == "array"
    out = client.run(f"{MODEL}:{version.id}", input=SMALL)
    assert len(out) == 1
    p = client.predictions.create(version=version.id, input=SMALL)
    p.wait()
    assert p.status == "succeeded"
    listed = client.predictions.list()
    assert p.id in [x.id for x in listed.results]


def test_cancel_stops_a_running_prediction_within_two_steps(srv, client):
    p = client.predictions.create(model=MODEL, input={**SMALL, "width": 512, "height": 512, "go_fast": False,
                                                      "num_inference_steps": 50})  # fmt: skip
    owner = srv.services.keys.verify("k1")
    deadline = time.time() + 60
    while True:
        job = srv.services.jobs.get(owner, p.id)
        if (job.progress or {}).get("step", 0) >= 2 or time.time() > deadline:
            break
        time.sleep(0.02)
    at_cancel = job.progress["step"]
    canceled = client.predictions.cancel(p.id)
    assert canceled.status == "canceled"
    p.wait()
    job = srv.services.jobs.get(owner, p.id)
    assert p.status == "canceled" and job.status == "cancelled" and not job.results
    assert job.progress["step"] - at_cancel <= 2, (at_cancel, job.progress)


def test_bad_input_is_a_422_problem_and_a_failed_job_raises_model_error(srv, client):
    with pytest.raises(ReplicateError) as e:
        client.predictions.create(model=MODEL, input={**SMALL, "num_outputs": 9})
    assert e.value.status == 422 and "num_outputs" in e.value.detail
    with pytest.raises(ReplicateError) as e:
        client.predictions.create(model=MODEL, input={"prompt": "x", "colour": "red"})
    assert e.value.status == 422 and "colour" in e.value.detail
    with pytest.raises(ReplicateError) as e:
        client.predictions.create(model="nobody/nothing", input=SMALL)
    assert e.value.status == 404
    with pytest.raises(ReplicateError) as e:
        replicate.Client(api_token="wrong", base_url=srv.base).predictions.get("x")
    assert e.value.status == 401
    # A job that fails in the worker comes back as failed, with its error: run raises ModelError.
    from daguerre.errors import OutOfMemory

    def out_of_memory(*a, **k):
        raise OutOfMemory("out of device memory for 192x128 x1")

    engine = srv.services.engine
    engine.generate = out_of_memory
    try:
        with pytest.raises(ModelError, match="out of device memory"):
            client.run(MODEL, input={**SMALL, "go_fast": False})
    finally:
        del engine.generate


def test_another_key_sees_nothing(srv, client):
    p = client.predictions.create(model=MODEL, input=SMALL)
    other = replicate.Client(api_token="k2", base_url=srv.base)
    with pytest.raises(ReplicateError) as e:
        other.predictions.get(p.id)
    assert e.value.status == 404
    assert p.id not in [x.id for x in other.predictions.list().results]
    p.wait()


def test_webhooks_are_sent_for_the_chosen_events_and_verify_with_the_clients_helper(srv, client):
    from replicate.webhook import Webhooks

    receiver = Receiver([])
    try:
        p = client.predictions.create(model=MODEL, input=SMALL, webhook=receiver.url(),
                                      webhook_events_filter=["start", "completed"])  # fmt: skip
        p.wait()
        secret = client.webhooks.default.secret()
        assert secret.key.startswith("whsec_")
        hooks = receiver.wait(2)
        time.sleep(0.3)
        assert len(receiver.requests) == 2
        bodies = []
        for _, _, headers, raw in receiver.requests:
            Webhooks.validate(headers={k.lower(): v for k, v in headers.items()}, body=raw.decode(), secret=secret)
            bodies.append(json.loads(raw))
        assert [b["status"] for b in bodies] == ["processing", "succeeded"] and bodies[1]["id"] == p.id
        assert bodies[1]["output"] == p.output
        assert hooks  # received
    finally:
        receiver.close()


def test_an_uploaded_file_is_an_img2img_source(srv, client):
    src = io.BytesIO()
    Image.new("RGB", (320, 256), (30, 90, 160)).save(src, "PNG")
    src.name = "source.png"
    out = client.run(MODEL, input={"prompt": "a blue wall", "image": src, "prompt_strength": 0.5,
                                   "num_inference_steps": 2, "go_fast": False})  # fmt: skip
    assert size_of(httpx.get(str(out[0])).content) == (320, 256)  # the output follows the source's size


def test_stream_sends_logs_output_and_done(srv, client):
    events = list(client.stream(MODEL, input=SMALL))
    kinds = [getattr(e.event, "value", e.event) for e in events]
    assert "logs" in kinds and kinds[-1] == "done"
    outputs = [e.data for e, kind in zip(events, kinds, strict=True) if kind == "output"]
    assert len(outputs) == 1 and size_of(httpx.get(outputs[0]).content) == (192, 128)


def test_over_https_outputs_are_file_objects_with_the_image_bytes(make_server, tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(cert_path)
    cert.private_key_pem.write_to_path(key_path)
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    with make_server(api_keys=["k1"], aliases=[MODEL], tls_certfile=cert_path, tls_keyfile=key_path) as s:
        assert s.base.startswith("https://")
        c = replicate.Client(api_token="k1", base_url=s.base, transport=httpx.HTTPTransport(verify=ctx))
        [out] = c.run(MODEL, input=SMALL)
        assert isinstance(out, replicate.helpers.FileOutput) and out.url.startswith("https://127.0.0.1")
        assert size_of(out.read()) == (192, 128)
        c._client.close()  # a kept-alive connection would hold the server's shutdown
