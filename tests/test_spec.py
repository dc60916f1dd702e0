"""JobSpec, the queue message: serialized in one place, images by reference, jobs of older versions upgraded."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid

import httpx
import pytest
from PIL import Image

from daguerre.errors import RequestError
from daguerre.jobs import spec as specs
from daguerre.jobs.spec import DeliverySpec
from daguerre.request import AccelOptions, ControlRef, GenerationRequest, IpAdapterRef, LoraRef, Outpaint, OutputSpec
from tests.conftest import inference_task


def _full_request() -> GenerationRequest:
    src, mask = Image.new("RGB", (64, 64), (1, 2, 3)), Image.new("L", (64, 64), 255)
    return GenerationRequest(
        model="runware:101@1", positive_prompt="a lighthouse", width=256, height=192, steps=12, guidance=3.0,
        seed=5, number_results=2, scheduler="Heun", seed_image=src, mask_image=mask, strength=0.7,
        output=OutputSpec("PNG", 90), loras=(LoraRef("style", 0.5),), mask_margin=48, prompt_weighting="compel",
        controlnets=(ControlRef("cn", Image.new("RGB", (8, 8)), weight=0.8, start_percent=10, mode="prompt"),),
        ip_adapters=(IpAdapterRef("ip", (Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8))), 0.6),),
        accelerator=AccelOptions(tea_cache=True, tea_cache_distance=0.3), enhance_prompt=True, character="anna",
    )  # fmt: skip


def test_a_spec_survives_json_with_its_images_by_reference():
    req = _full_request()
    slots = specs.image_slots(req)
    stored = {id(im): f"00000000-0000-4000-8000-{i:012d}" for i, (_, im) in enumerate(slots)}
    delivery = DeliverySpec(method="async", output_types=("URL", "dataURI"), ttl=600, webhook_url="https://h.example")
    spec = specs.build("k_1", str(uuid.uuid4()), req, stored, ["a", "b"], delivery)
    text = specs.to_json(spec)
    assert "base64" not in text and json.loads(text)["schema"] == specs.SCHEMA
    back = specs.from_json(text)
    assert back == spec and back.images == {slot: stored[id(im)] for slot, im in slots}
    assert set(back.images) == {"seed_image", "mask_image", "controlnets.0.guide_image",
                                "ip_adapters.0.guide_images.0", "ip_adapters.0.guide_images.1"}  # fmt: skip
    loaded = []

    def load(image_uuid, is_mask):
        loaded.append((image_uuid, is_mask))
        return Image.new("L" if is_mask else "RGB", (64, 64))

    hydrated = specs.hydrate(back, load)
    assert hydrated.mask_image.mode == "L" and hydrated.controlnets[0].guide_image is not None
    assert len(hydrated.ip_adapters[0].guide_images) == 2 and len(loaded) == 5
    assert (hydrated.outpaint, hydrated.loras, hydrated.accelerator) == (req.outpaint, req.loras, req.accelerator)
    src = Image.new("RGB", (64, 64))
    outpainted = GenerationRequest(model="m", positive_prompt="x y", seed_image=src, outpaint=Outpaint(top=64, blur=3))
    again = specs.from_json(specs.to_json(specs.build("o", "t", outpainted, {id(src): "u"}, ["r"], DeliverySpec())))
    assert again.request.outpaint == Outpaint(top=64, blur=3) and again.images == {"seed_image": "u"}


def test_an_unknown_schema_is_refused_and_unstored_images_are_a_bug():
    with pytest.raises(RequestError, match="schema"):
        specs.from_json(json.dumps({"schema": 99, "request": {}}))
    with pytest.raises(ValueError, match="not stored"):
        specs.build("k", "t", _full_request(), {}, [], DeliverySpec())


def test_a_queued_job_keeps_the_character_it_was_submitted_with(make_server, tmp_path):
    from daguerre.jobs.characters import Character

    with make_server(api_keys=["k1"]) as s:
        s.services.worker._stop.set()  # nothing runs: the job stays queued
        time.sleep(0.5)
        owner = s.services.keys.verify("k1")
        s.services.characters.put(owner, Character("anna", "30-year-old woman, dark wavy hair", 42))
        t = inference_task(character="anna", deliveryMethod="async")
        r = httpx.post(s.url, json=[t], headers={"Authorization": "Bearer k1"})
        assert r.status_code == 200, r.text
        s.services.characters.put(owner, Character("anna", "an old man with a grey beard", 7))  # edited after
        job = s.services.jobs.get(owner, t["taskUUID"])
        assert job.spec.request.positive_prompt.startswith("30-year-old woman") and job.spec.request.seed == 42
        queued = specs.from_json(s.services.jobs.queue.waiting(1)[0])
        assert queued.request.seed == 42 and queued.request.steps == 2 and queued.request.guidance == 3.5


def test_jobs_stored_before_jobspec_still_run_after_an_upgrade(make_server, tmp_path):
    """A job row of the old form (the raw Runware task, images as stored imageUUIDs, the seed fixed) is upgraded
    to a JobSpec at start-up and runs, making the images it was promised."""
    data = tmp_path / "data"
    data.mkdir()
    owner = "k_" + __import__("hashlib").sha256(b"k1").hexdigest()[:16]
    task = inference_task(seed=11, numberResults=2)
    promised = [str(uuid.uuid4()), str(uuid.uuid4())]
    with sqlite3.connect(data / "jobs.sqlite3") as db:  # the table as the first release made it (11 columns)
        db.execute("""CREATE TABLE jobs (owner TEXT NOT NULL, task_uuid TEXT NOT NULL, task_type TEXT NOT NULL,
                      payload TEXT NOT NULL, fingerprint TEXT NOT NULL, image_uuids TEXT NOT NULL, status TEXT NOT NULL,
                      results TEXT NOT NULL, error TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL,
                      PRIMARY KEY (owner, task_uuid))""")
        db.execute("INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                   (owner, task["taskUUID"], "imageInference", json.dumps(task), "legacy-fingerprint",
                    json.dumps(promised), "running", "[]", None, time.time(), time.time()))  # fmt: skip
    with make_server(data_dir=data, api_keys=["k1"]) as s:
        deadline = time.time() + 60
        job = s.services.jobs.get(owner, task["taskUUID"])
        while not job.done and time.time() < deadline:
            time.sleep(0.2)
            job = s.services.jobs.get(owner, task["taskUUID"])
        assert job.status == "success", job.error
        assert [r["imageUUID"] for r in job.results] == promised and [r["seed"] for r in job.results] == [11, 12]
        assert job.spec is not None and job.legacy is None
        with sqlite3.connect(data / "jobs.sqlite3") as db:
            (payload,) = db.execute("SELECT payload FROM jobs WHERE task_uuid=?", (task["taskUUID"],)).fetchone()
        assert specs.is_spec(json.loads(payload))  # stored in the new form from now on
