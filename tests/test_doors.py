"""What every door shares: one job seen through every door under its own key only, the safety checker on
every door, the eachlabs JavaScript SDK unmodified under Node, and /openapi.json documenting every endpoint."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from daguerre.testing.safety import build_nudenet
from tests.conftest import inference_task

JS = Path(__file__).parent / "js"
SLUG = "tencent-flux-1-srpo-text-to-image"


def picture(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(httpx.get(url).content)).convert("RGB"))


@pytest.fixture(scope="module")
def flagged(make_server, tmp_path_factory):
    """A server whose safety checker flags everything (a tiny NudeNet-format model scoring 0.9)."""
    model = build_nudenet(tmp_path_factory.mktemp("nsfw") / "always.onnx", {"FEMALE_BREAST_EXPOSED": 0.9})
    with make_server(api_keys=["k1", "k2"], aliases=[SLUG, "black-forest-labs/flux-dev", "fluxgram-v1"],
                     safety={"checker": "nudenet", "path": str(model), "action": "black"}) as s:  # fmt: skip
        yield s


def test_the_safety_checker_on_every_door(flagged):
    base, k1 = flagged.base, {"X-API-Key": "k1", "Authorization": "Bearer k1"}
    # eachlabs: enable_safety_checker defaults to true; flagged images are censored (the server's action: black).
    run = httpx.post(f"{base}/v1/prediction/run", headers=k1, timeout=60, json={
        "model": SLUG, "version": "0.0.1", "input": {"prompt": "a beach", "image_size": "square",
                                                     "num_inference_steps": 1}}).json()  # fmt: skip
    assert run["status"] == "success" and not picture(run["output"][0]).any()
    off = httpx.post(f"{base}/v1/prediction/run", headers=k1, timeout=60, json={
        "model": SLUG, "version": "0.0.1", "input": {"prompt": "a beach", "image_size": "square",
                                                     "num_inference_steps": 1,
                                                     "enable_safety_checker": False}}).json()  # fmt: skip
    assert picture(off["output"][0]).any()
    # Replicate: disable_safety_checker false (the default) checks.
    rep = httpx.post(f"{base}/v1/models/black-forest-labs/flux-dev/predictions", timeout=60,
                     headers={**k1, "Prefer": "wait"}, json={"input": {"prompt": "a beach", "num_inference_steps": 1,
                                                                       "aspect_ratio": "1:1"}}).json()  # fmt: skip
    assert rep["status"] == "succeeded" and not picture(rep["output"][0]).any()
    # ModelsLab: nsfw_content_detected, with its own safety_checker_type.
    ml = httpx.post(f"{base}/api/v6/images/text2img", timeout=60, json={
        "key": "k1", "model_id": "fluxgram-v1", "prompt": "a beach", "width": 256, "height": 256,
        "num_inference_steps": 1, "safety_checker": "yes", "safety_checker_type": "pixelate",
        "enhance_prompt": "no"}).json()  # fmt: skip
    assert ml["status"] == "success" and ml["nsfw_content_detected"] is True
    assert picture(ml["output"][0]).any() and ml["meta"]["safety_checker_type"] == "pixelate"
    # Runware: safety.checkContent -> NSFWContent; without it, no check.
    [item] = httpx.post(f"{base}/v1", headers=k1, timeout=60, json=[inference_task(
        safety={"checkContent": True}, steps=1)]).json()["data"]  # fmt: skip
    assert item["NSFWContent"] is True and not picture(item["imageURL"]).any()
    [plain] = httpx.post(f"{base}/v1", headers=k1, timeout=60, json=[inference_task(steps=1)]).json()["data"]
    assert plain["NSFWContent"] is False and picture(plain["imageURL"]).any()
    # The recipe embedded in the file says what was done.
    from daguerre.imaging import read_embedded

    recipe = json.loads(read_embedded(httpx.get(item["imageURL"]).content))
    assert recipe["safety"]["flagged"] and recipe["safety"]["action"] == "black" and recipe["safety"]["score"] == 0.9


def test_asking_for_a_check_on_a_server_without_one_is_an_error(make_server):
    with make_server(api_keys=["k1"], aliases=[SLUG], safety={"checker": "none"}) as s:
        r = httpx.post(f"{s.base}/v1", headers={"Authorization": "Bearer k1"},
                       json=[inference_task(safety={"checkContent": True})])  # fmt: skip
        assert r.status_code == 400 and r.json()["errors"][0]["parameter"] == "safety"
        # A door whose protocol checks by default runs without a check when the server has none.
        ok = httpx.post(f"{s.base}/v1/prediction/run", headers={"X-API-Key": "k1"}, timeout=60, json={
            "model": SLUG, "version": "0.0.1", "input": {"prompt": "x y", "image_size": "square",
                                                         "num_inference_steps": 1}}).json()  # fmt: skip
        assert ok["status"] == "success"
        r = httpx.post(
            f"{s.base}/v1/prediction/",
            headers={"X-API-Key": "k1"},
            json={"model": SLUG, "version": "0.0.1", "input": {"prompt": "a b", "enable_safety_checker": True}},
        )
        assert r.status_code == 400 and r.json()["details"]["parameter"] == "input.enable_safety_checker"


def test_openapi_documents_every_door(flagged):
    spec = httpx.get(f"{flagged.base}/openapi.json").json()
    paths = spec["paths"]
    for path, method in [
        ("/v1", "post"), ("/v1/prediction", "post"), ("/v1/prediction/run", "post"),
        ("/v1/prediction/{prediction_id}", "get"), ("/v1/prediction/{prediction_id}/cancel", "post"),
        ("/v1/models", "get"), ("/v1/model", "get"), ("/v1/models/{owner}/{name}/predictions", "post"),
        ("/v1/predictions", "post"), ("/v1/predictions", "get"), ("/v1/predictions/{prediction_id}", "get"),
        ("/v1/predictions/{prediction_id}/cancel", "post"), ("/v1/predictions/{prediction_id}/stream", "get"),
        ("/v1/models/{owner}/{name}", "get"), ("/v1/models/{owner}/{name}/versions/{version}", "get"),
        ("/v1/files", "post"), ("/v1/webhooks/default/secret", "get"), ("/api/v6/images/{endpoint}", "post"),
        ("/api/v6/images/fetch/{request_id}", "post"), ("/api/v6/images/fetch", "post"),
    ]:  # fmt: skip
        assert method in paths.get(path, {}), (path, method)
        assert paths[path][method].get("summary"), (path, method)


@pytest.mark.skipif(not (JS / "node_modules" / "@eachlabs" / "aiflow").exists() or not shutil.which("node"),
                    reason="the eachlabs SDK is installed by scripts/setup when npm is there")  # fmt: skip
def test_the_eachlabs_javascript_sdk_unmodified(flagged, tmp_path):
    out = tmp_path / "out.json"
    subprocess.run(["node", str(JS / "eachlabs_client.js"), flagged.base, "k2", SLUG, str(out)], check=True,
                   timeout=120, capture_output=True)  # fmt: skip
    got = json.loads(out.read_text())
    assert got["create"]["status"] == "success" and got["create"]["predictionID"]
    assert got["get"]["status"] == "success" and len(got["get"]["output"]) == 1
    assert Image.open(io.BytesIO(httpx.get(got["get"]["output"][0]).content)).size == (192, 128)
    assert got["run"]["status"] == "success" and got["run"]["output"]
    assert got["cancel"]["status"] == "cancelled"
    assert got["bad"].startswith("Request failed") and "num_images" in got["bad"]
    # and the prediction belongs to its key only
    pid = got["create"]["predictionID"]
    assert httpx.get(f"{flagged.base}/v1/prediction/{pid}", headers={"X-API-Key": "k1"}).status_code == 404


@pytest.mark.parametrize(
    ("path", "body", "parameter"),
    [
        ("/v1/prediction/", {"model": SLUG, "version": "0.0.1", "input": {
            "prompt": "a b", "image_url": "http://127.0.0.1:9/a.png"}}, "input.image_url"),
        ("/v1/prediction/", {"model": SLUG, "version": "0.0.1", "input": {"prompt": "a b"},
                             "webhook_url": "http://10.0.0.1/hook"}, "webhook_url"),
        ("/v1/models/black-forest-labs/flux-dev/predictions", {"input": {
            "prompt": "a b", "image": "http://169.254.169.254/latest"}}, "input.image"),
        ("/v1/models/black-forest-labs/flux-dev/predictions", {"input": {"prompt": "a b"},
                                                               "webhook": "http://localhost/h"}, "webhook"),
        ("/api/v6/images/img2img", {"key": "k1", "model_id": "fluxgram-v1", "prompt": "a b",
                                    "init_image": "http://[::1]/a.png"}, "init_image"),
        ("/api/v6/images/text2img", {"key": "k1", "model_id": "fluxgram-v1", "prompt": "a b",
                                     "webhook": "http://192.168.1.1/h"}, "webhook"),
    ],
)  # fmt: skip
def test_the_outbound_rules_hold_on_every_door(flagged, path, body, parameter):
    """Image URLs and webhooks to private or loopback addresses are refused at submission, naming the field."""
    r = httpx.post(flagged.base + path, json=body, headers={"X-API-Key": "k1", "Authorization": "Bearer k1"})
    data = r.json()
    named = data.get("parameter") or (data.get("details") or {}).get("parameter")
    assert named == parameter, data
    code = data.get("code") or (data.get("details") or {}).get("code")
    assert code == "invalidURL", data


def test_an_idempotency_key_makes_a_resend_the_same_prediction(flagged):
    headers = {"Authorization": "Bearer k1", "Idempotency-Key": "order-17"}
    body = {"input": {"prompt": "a quiet street", "num_inference_steps": 1, "aspect_ratio": "1:1",
                      "megapixels": "0.25"}}  # fmt: skip
    url = f"{flagged.base}/v1/models/black-forest-labs/flux-dev/predictions"
    first = httpx.post(url, json=body, headers=headers).json()
    again = httpx.post(url, json=body, headers=headers).json()
    assert first["id"] == again["id"]
    other = httpx.post(url, json={"input": {**body["input"], "prompt": "another street"}}, headers=headers)
    assert other.status_code == 422 and other.json()["parameter"] == "Idempotency-Key"  # another body: refused
    k2 = httpx.post(url, json=body, headers={**headers, "Authorization": "Bearer k2"}).json()
    assert k2["id"] != first["id"]  # the key is per API key
