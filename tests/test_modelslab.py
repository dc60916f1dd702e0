"""The ModelsLab door: the official `modelslab-py` client (0.2.3) unmodified, the two Python samples of
../shared/reference/004 with only the URL changed, and the protocol's quirks (HTTP 200 always, lenient
types, integer ids, fetch, instant_response, base64, webhooks with track_id, refused fields by name)."""

from __future__ import annotations

import base64
import io
import json
import re
import warnings
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.test_delivery import Receiver

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "004_f88cec8d219cdd2b.txt"
SAMPLE_KEY = "your_modelslab_api_key"  # the samples' own key, registered on the test server


@pytest.fixture(scope="module")
def srv(make_server):
    with make_server(api_keys=["k1", "k2", SAMPLE_KEY], aliases=["fluxgram-v1"], outbound_allow_loopback=True,
                     webhook_retry_schedule=[0.2]) as s:  # fmt: skip
        s.images = s.base + "/api/v6/images"
        yield s


def call(srv, endpoint, **body):
    r = httpx.post(f"{srv.images}/{endpoint}", json={"key": "k1", "model_id": "fluxgram-v1", **body}, timeout=120)
    assert r.status_code == 200  # every answer, errors included
    return r.json()


def picture(value: str) -> Image.Image:
    if value.startswith("http"):
        return Image.open(io.BytesIO(httpx.get(value).content))
    return Image.open(io.BytesIO(base64.b64decode(value)))


def png_b64(size=(256, 192), colour=(200, 150, 100)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _api(srv, key="k1"):
    from modelslab_py.core.apis.community import Community
    from modelslab_py.core.client import Client

    client = Client(api_key=key, fetch_retry=20, fetch_timeout=0.05)
    client.base_url = srv.base + "/api/"  # before the API object copies it
    return Community(client=client)


def test_the_official_client_text2img_img2img_inpaint_and_fetch(srv):
    from modelslab_py.schemas.community import Image2Image, Inpainting, Text2Image

    api = _api(srv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the client calls pydantic's .dict()
        t2i = api.text_to_image(Text2Image(prompt="portrait of a man, studio light", model_id="fluxgram-v1",
                                           width=256, height=192, samples=2, num_inference_steps=2, seed=12,
                                           safety_checker="no", enhance_prompt="no"))  # fmt: skip
        assert t2i["status"] == "success" and isinstance(t2i["id"], int), t2i
        assert [picture(u).size for u in t2i["output"]] == [(256, 192)] * 2
        assert t2i["meta"]["seed"] == 12 and t2i["meta"]["W"] == 256 and t2i["nsfw_content_detected"] is False
        i2i = api.image_to_image(Image2Image(prompt="a clay wall", model_id="fluxgram-v1", init_image=png_b64(),
                                             num_inference_steps=2, strength=0.5, safety_checker="no",
                                             enhance_prompt="no"))  # fmt: skip
        assert i2i["status"] == "success" and picture(i2i["output"][0]).size == (256, 192)  # the source's size
        mask = png_b64(colour=(255, 255, 255))
        inp = api.inpainting(Inpainting(prompt="a window", model_id="fluxgram-v1", init_image=png_b64(),
                                        mask_image=mask, num_inference_steps=2, safety_checker="no"))  # fmt: skip
        assert inp["status"] == "success", inp
        fetched = api.fetch(str(t2i["id"]))
    assert fetched["status"] == "success" and fetched["id"] == t2i["id"] and len(fetched["output"]) == 2


def test_fetch_polls_a_queued_request_to_success(srv):
    queued = call(srv, "text2img", prompt="a harbour", width=256, height=256, num_inference_steps="3",
                  instant_response="yes", enhance_prompt=False, safety_checker="no")  # fmt: skip
    assert queued["status"] == "processing" and queued["eta"] > 0 and queued["output"] == []
    assert queued["fetch_result"].endswith(f"/api/v6/images/fetch/{queued['id']}")
    assert len(queued["future_links"]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        done = _api(srv).fetch(str(queued["id"]))
    assert done["status"] == "success" and picture(done["output"][0]).size == (256, 256)
    assert picture(queued["future_links"][0]).size == (256, 256)  # the promised link now answers
    by_body = httpx.post(f"{srv.images}/fetch", json={"key": "k1", "request_id": str(queued["id"])}).json()
    assert by_body["status"] == "success" and by_body["output"] == done["output"]
    other = httpx.post(f"{srv.images}/fetch/{queued['id']}", json={"key": "k2"})
    assert other.status_code == 200 and other.json()["status"] == "error"  # another key sees nothing


# The two functions of the reference document's Python samples. The document's text lost its indentation, so
# they are written out here indented; test_the_samples_here_are_the_documents_own checks that, whitespace
# aside, they are the document's code exactly, and the test below changes only the URL.
SAMPLES = """
def generate_portrait(setting, lighting, seed=42):
    prompt = f"{CHARACTER_ANCHOR}, {setting}, {lighting}, photorealistic, 4K, skin pores, RAW photo"
    payload = {
        "key": API_KEY,
        "model_id": "fluxgram-v1",
        "prompt": prompt,
        "negative_prompt": "cartoon, anime, painting, blur, plastic skin, oversmoothed",
        "width": 512,
        "height": 768,
        "samples": 1,
        "seed": seed,
        "enhance_prompt": "yes",
        "safety_checker": "yes"
    }
    response = requests.post(
        "https://modelslab.com/api/v6/images/text2img",
        headers={"Content-Type": "application/json"},
        data=json.dumps(payload)
    )
    return response.json()

def generate_async(prompt, seed=None):
    payload = {
        "key": API_KEY,
        "model_id": "fluxgram-v1",
        "prompt": prompt,
        "negative_prompt": "cartoon, anime, blur, plastic skin, watermark",
        "width": 512,
        "height": 768,
        "samples": 1,
        "enhance_prompt": "yes",
        "safety_checker": "yes",
    }
    if seed:
        payload["seed"] = seed
    r = requests.post(
        "https://modelslab.com/api/v6/images/text2img",
        headers={"Content-Type": "application/json"},
        data=json.dumps(payload)
    )
    result = r.json()
    # If queued, poll the fetch URL
    if result.get("status") == "processing" and result.get("fetch_result"):
        fetch_url = result["fetch_result"]
        for attempt in range(20):
            time.sleep(5)
            fetch_r = requests.post(
                fetch_url,
                headers={"Content-Type": "application/json"},
                data=json.dumps({"key": API_KEY})
            )
            fetch_result = fetch_r.json()
            if fetch_result.get("status") == "success":
                return fetch_result.get("output", [])
        return []
    return result.get("output", [])
"""


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def test_the_samples_here_are_the_documents_own():
    text = REFERENCE.read_text()
    for name, end in (("generate_portrait", "# Same character"), ("generate_async", "# Generate a batch")):
        doc = text[text.index(f"def {name}(") :]
        doc = doc[: doc.index(end)]
        ours = SAMPLES[SAMPLES.index(f"def {name}(") :]
        ours = ours[: ours.index("\ndef ", 1)] if name == "generate_portrait" else ours
        assert _squash(ours) == _squash(doc), name


def _sample(srv) -> dict:
    """The samples' functions with only the endpoint URL changed, in a scope with their imports and constants."""
    code = SAMPLES.replace("https://modelslab.com/api/v6/images/text2img", f"{srv.images}/text2img")
    scope = {"API_KEY": SAMPLE_KEY, "CHARACTER_ANCHOR": (
        "30-year-old woman, dark brown wavy hair past shoulders, warm olive skin tone, small nose, defined jaw, "
        "brown eyes")}  # fmt: skip
    exec(compile("import requests\nimport json\nimport time\n" + code, str(REFERENCE), "exec"), scope)
    return scope


def test_the_reference_samples_with_only_the_url_changed(srv):
    samples = _sample(srv)
    portrait = samples["generate_portrait"]
    result = portrait(setting="neutral grey studio backdrop, medium shot", lighting="soft studio lighting", seed=42)
    assert result["status"] == "success", result
    assert picture(result["output"][0]).size == (512, 768) and result["meta"]["seed"] == 42
    assert result["meta"]["enhance_prompt"] == "yes" and result["meta"]["safety_checker"] == "yes"
    images = samples["generate_async"]("30-year-old woman, dark brown wavy hair, headshot, 4K", seed=42)
    assert len(images) == 1 and picture(images[0]).size == (512, 768)


@pytest.mark.parametrize(
    ("fields", "parameter"),
    [
        ({"upscale": "3"}, "upscale"),
        ({"highres_fix": "maybe"}, "highres_fix"),
        ({"clip_skip": "2"}, "clip_skip"),
        ({"scheduler": "KarrasVeScheduler"}, "scheduler"),
        ({"scheduler": "Bogus"}, "scheduler"),
        ({"samples": "9"}, "samples"),
        ({"num_inference_steps": "many"}, "num_inference_steps"),
        ({"width": 100}, "width"),
        ({"safety_checker_type": "smudge"}, "safety_checker_type"),
        ({"lora_model": "nope"}, "lora_model"),
        ({"lora_model": "a,b", "lora_strength": "0.5,0.6,0.7"}, "lora_strength"),
        ({"model_id": "nothing-here"}, "model_id"),
        ({"prompt": None}, "prompt"),
        ({"colour": "red"}, "colour"),
        ({"init_image": "aGVsbG8="}, "init_image"),
    ],
)
def test_fields_it_cannot_honour_are_errors_naming_them(srv, fields, parameter):
    body = call(srv, "text2img", **{"prompt": "a lake", "width": 256, "height": 256, "num_inference_steps": 1,
                                    **fields})  # fmt: skip
    assert body["status"] == "error" and body["parameter"] == parameter, body
    assert body["message"] == body["messege"]


def test_auth_errors_are_http_200_too(srv):
    for key in ("wrong", None):
        r = httpx.post(f"{srv.images}/text2img", json={"key": key, "model_id": "fluxgram-v1", "prompt": "x"})
        assert r.status_code == 200 and r.json()["status"] == "error" and "key" in r.json()["message"].lower()


def test_lenient_types_base64_output_negative_prompt_and_karras(srv):
    body = call(srv, "text2img", prompt="a lighthouse", width="256", height="192", samples="1",
                num_inference_steps="2", guidance_scale="4.0", seed="77", base64="yes", enhance_prompt="no",
                safety_checker=False, negative_prompt="blurry, cartoon", scheduler="EulerDiscreteScheduler",
                use_karras_sigmas="yes")  # fmt: skip
    assert body["status"] == "success", body
    assert picture(body["output"][0]).size == (256, 192)  # bare base64
    meta = body["meta"]
    assert meta["seed"] == 77 and meta["base64"] == "yes" and meta["scheduler"] == "Euler Karras"
    job = _job(srv, body["id"])
    assert job.spec.request.true_cfg_scale == 4.0 and job.spec.request.negative_prompt == "blurry, cartoon"


def _job(srv, number):
    return srv.services.jobs.store.get_number(srv.services.keys.verify("k1"), number)


def test_webhook_with_track_id_on_success_and_failure(srv):
    receiver = Receiver([])
    try:
        ok = call(srv, "text2img", prompt="a dune", width=256, height=256, num_inference_steps=1,
                  webhook=receiver.url(), track_id="t-1", enhance_prompt="no")  # fmt: skip
        assert ok["status"] == "success"
        engine = srv.services.engine

        def broken(*a, **k):
            from daguerre.errors import OutOfMemory

            raise OutOfMemory("out of device memory")

        engine.generate = broken
        try:
            bad = call(srv, "text2img", prompt="a dune", width=256, height=256, num_inference_steps=1,
                       webhook=receiver.url(), track_id="t-2", enhance_prompt="no")  # fmt: skip
        finally:
            del engine.generate
        assert bad["status"] == "error" and bad["id"]
        hooks = sorted((json.loads(raw) for *_, raw in receiver.wait(2)), key=lambda h: h["track_id"])
        assert hooks[0]["status"] == "success" and hooks[0]["id"] == ok["id"] and hooks[0]["output"] == ok["output"]
        assert hooks[1] == {"status": "failed", "id": bad["id"], "message": "out of device memory", "track_id": "t-2"}
    finally:
        receiver.close()


def test_cross_door_the_same_key_sees_the_same_job(srv):
    body = call(srv, "text2img", prompt="a red barn", width=256, height=256, num_inference_steps=1,
                enhance_prompt="no")  # fmt: skip
    job = _job(srv, body["id"])
    eachlabs = httpx.get(f"{srv.base}/v1/prediction/{job.task_uuid}", headers={"X-API-Key": "k1"}).json()
    assert eachlabs["status"] == "success" and eachlabs["output"] == body["output"]
    rep = httpx.get(f"{srv.base}/v1/predictions/{job.task_uuid}", headers={"Authorization": "Bearer k1"}).json()
    assert rep["status"] == "succeeded" and rep["output"] == body["output"]
    runware = httpx.post(f"{srv.base}/v1", json=[{"taskType": "getResponse", "taskUUID": job.task_uuid}],
                         headers={"Authorization": "Bearer k1"}).json()  # fmt: skip
    assert runware["data"][0]["imageURL"] == body["output"][0]
    for path in (f"/v1/prediction/{job.task_uuid}", f"/v1/predictions/{job.task_uuid}"):
        assert httpx.get(srv.base + path, headers={"X-API-Key": "k2", "Authorization": "Bearer k2"}).status_code == 404


def test_upscale_and_highres_fix_run_as_hires_fix(srv):
    body = call(srv, "text2img", prompt="a lighthouse", width=128, height=192, num_inference_steps=2, upscale="yes",
                enhance_prompt="no", safety_checker="no")  # fmt: skip
    assert body["status"] == "success" and picture(body["output"][0]).size == (256, 384)  # twice the size
    job = _job(srv, body["id"])
    assert job.spec.request.hires_fix is not None and (job.spec.request.width, job.spec.request.height) == (256, 384)
    fixed = call(srv, "text2img", prompt="a lighthouse", width=256, height=256, num_inference_steps=2,
                 highres_fix="yes", enhance_prompt="no", safety_checker="no")  # fmt: skip
    assert fixed["status"] == "success" and picture(fixed["output"][0]).size == (256, 256)
    assert _job(srv, fixed["id"]).spec.request.hires_fix is not None
    img = call(srv, "img2img", prompt="a wall", init_image=png_b64(), upscale="yes", num_inference_steps=1)
    assert img["status"] == "error" and img["parameter"] == "upscale"
