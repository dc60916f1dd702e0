"""The API extensions the studio uses, as any client sees them: includeProgress (queue position, step
progress and a latent preview in getResponse), cancelTask, and the per-key gallery (list with recipes, delete)."""

from __future__ import annotations

import time
import uuid

import httpx

from tests.conftest import inference_task

KEY = "gallery-key-one"
OTHER = "gallery-key-two"


def _post(s, tasks, key=KEY):
    return httpx.post(s.url, json=tasks, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def _wait(s, task_uuid, key=KEY, seen=None):
    deadline = time.time() + 60
    while time.time() < deadline:
        r = _post(s, [{"taskType": "getResponse", "taskUUID": task_uuid}], key)
        body = r.json()
        if body.get("errors"):
            return body
        items = body["data"]
        if seen is not None:
            seen.extend(items)
        if items and all(i["status"] == "success" for i in items):
            return body
        time.sleep(0.05)
    raise AssertionError("the task did not finish")


def test_progress_previews_cancel_and_the_gallery(make_server):
    with make_server(api_keys=[KEY, OTHER]) as s:
        base = s.url.rsplit("/v1", 1)[0]
        slow = inference_task(width=512, height=512, steps=40, deliveryMethod="async", includeProgress=True)
        assert _post(s, [slow]).status_code == 200
        seen = []
        _wait(s, slow["taskUUID"], seen=seen)
        running = [i for i in seen if "progress" in i]
        assert running and all(i["progress"]["total"] in (0, 40) for i in running)  # 0: before its first step
        assert any(0 < i["progress"]["step"] <= 40 for i in running)
        assert any(i.get("previewImage", "").startswith("data:image/png;base64,") for i in running)
        # Cancel: a long task stops and says so; an unknown one is taskNotFound.
        long = inference_task(width=1024, height=1024, steps=50, deliveryMethod="async", includeProgress=True)
        _post(s, [long])
        time.sleep(0.5)
        r = _post(s, [{"taskType": "cancelTask", "taskUUID": long["taskUUID"]}])
        assert r.status_code == 200 and r.json()["data"][0]["taskType"] == "cancelTask"
        assert _wait(s, long["taskUUID"])["errors"][0]["code"] == "taskCancelled"
        r = _post(s, [{"taskType": "cancelTask", "taskUUID": str(uuid.uuid4())}])
        assert r.json()["errors"][0]["code"] == "taskNotFound"
        # The gallery: this key's finished images with their recipes; not the other key's; delete removes them.
        g = httpx.get(f"{base}/v1/gallery", headers={"Authorization": f"Bearer {KEY}"}).json()
        [item] = g["data"]
        assert item["taskUUID"] == slow["taskUUID"] and item["recipe"]["steps"] == 40
        assert httpx.get(item["imageURL"]).status_code == 200
        assert httpx.get(f"{base}/v1/gallery", headers={"Authorization": f"Bearer {OTHER}"}).json()["data"] == []
        assert httpx.get(f"{base}/v1/gallery").status_code == 401
        gone = httpx.delete(f"{base}/v1/gallery/{slow['taskUUID']}", headers={"Authorization": f"Bearer {OTHER}"})
        assert gone.status_code == 404
        r = httpx.delete(f"{base}/v1/gallery/{slow['taskUUID']}", headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 204
        assert httpx.get(f"{base}/v1/gallery", headers={"Authorization": f"Bearer {KEY}"}).json()["data"] == []
        assert httpx.get(item["imageURL"]).status_code == 404
        bad = _post(s, [inference_task(includeProgress="yes")])
        assert bad.status_code == 400 and bad.json()["errors"][0]["parameter"] == "includeProgress"
        page = httpx.get(base + "/")
        assert page.status_code == 200 and "/studio/studio.js" in page.text
        cfg = httpx.get(base + "/studio/config.json").json()
        assert cfg["presets"]["lighting"] and "Default" in cfg["schedulers"]


def test_characters_over_http_are_per_key(make_server):
    with make_server(api_keys=[KEY, OTHER]) as s:
        base = s.url.rsplit("/v1", 1)[0]
        auth = {"Authorization": f"Bearer {KEY}"}
        ada = {"name": "ada", "anchor": "a woman in her 40s, red hair", "seed": 9}
        r = httpx.post(f"{base}/v1/characters", json=ada, headers=auth)
        assert r.status_code == 200 and r.json()["data"][0]["seed"] == 9
        assert [c["name"] for c in httpx.get(f"{base}/v1/characters", headers=auth).json()["data"]] == ["ada"]
        other = httpx.get(f"{base}/v1/characters", headers={"Authorization": f"Bearer {OTHER}"}).json()["data"]
        assert other == []
        bad = httpx.post(f"{base}/v1/characters", json={"name": "x y", "anchor": "ab", "seed": 1}, headers=auth)
        assert bad.status_code == 400 and bad.json()["errors"][0]["parameter"] == "character"
        task = inference_task(character="ada", outputType="base64Data")
        r = _post(s, [task])
        assert r.status_code == 200 and r.json()["data"][0]["seed"] == 9
        assert httpx.delete(f"{base}/v1/characters/ada", headers=auth).status_code == 204
        assert httpx.delete(f"{base}/v1/characters/ada", headers=auth).status_code == 404


def test_controlnet_preprocess_gives_a_guide_this_key_can_use(make_server, tmp_path):
    import base64
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    img = np.zeros((64, 96, 3), np.uint8)
    img[16:48, 24:72] = 255  # a white box: its outline is the edge map
    Image.fromarray(img).save(buf, "PNG")
    photo = base64.b64encode(buf.getvalue()).decode()
    with make_server(api_keys=[KEY, OTHER]) as s:
        task = {"taskType": "imageControlNetPreProcess", "taskUUID": str(uuid.uuid4()), "inputImage": photo,
                "preProcessorType": "canny", "lowThresholdCanny": 50, "highThresholdCanny": 150}  # fmt: skip
        r = _post(s, [task])
        assert r.status_code == 200, r.text
        item = r.json()["data"][0]
        edges = np.asarray(Image.open(io.BytesIO(httpx.get(item["guideImageURL"]).content)).convert("L"))
        assert (
            edges.shape == (64, 96)
            and edges[14:18, 30].max() == 255
            and edges[32, 48] == 0
            and set(np.unique(edges)) <= {0, 255}
        )
        # The guide is this key's upload: usable by UUID here, unknown to another key.
        again = _post(s, [{**task, "taskUUID": str(uuid.uuid4()), "inputImage": item["guideImageUUID"]}])
        assert again.status_code == 200
        other = _post(s, [{**task, "taskUUID": str(uuid.uuid4()), "inputImage": item["guideImageUUID"]}], OTHER)
        assert other.json()["errors"][0]["code"] == "imageNotFound"
        bad = _post(s, [{**task, "taskUUID": str(uuid.uuid4()), "preProcessorType": "openpose"}])
        assert bad.status_code == 400 and bad.json()["errors"][0]["parameter"] == "preProcessorType"
