"""Face enhancement (ultralytics): the geometry on a picture with known face boxes, one face's inpaint against
diffusers' pipeline, zero faces leaving the image byte-identical, the detectors (Haar, NudeNet, a YOLO model
built from its YAML), and the field through the task API and the CLI."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from daguerre.engine.features import faces
from daguerre.engine.features.faces import Face
from daguerre.errors import RequestError
from daguerre.request import FaceFix, GenerationRequest, validate
from tests.conftest import inference_task

BOXES = [Face((40, 30, 100, 90), 0.95), Face((150, 100, 200, 150), 0.93), Face((10, 140, 40, 170), 0.4)]


class Known:
    """A detector that finds the faces we drew."""

    name = "known"

    def __init__(self, found):
        self.found = found

    def detect(self, image):
        return list(self.found)


@pytest.fixture()
def with_detector(engine):
    saved = engine._detector

    def use(found):
        engine._detector = Known(found)

    yield use
    engine._detector = saved


def _req(tiny_folder, **kw):
    return GenerationRequest(model=str(tiny_folder.model_path), positive_prompt="portrait of two friends, daylight",
                             width=256, height=192, steps=2, seed=8, **kw)  # fmt: skip


def test_only_the_padded_boxes_of_faces_over_the_confidence_change(engine, tiny_folder, with_detector):
    plain = engine.generate(_req(tiny_folder)).images[0]
    with_detector(BOXES)
    fix = FaceFix(inpaint_size=256, steps=4, strength=0.5, mask_padding=6, mask_blur=0)
    [im] = engine.generate(_req(tiny_folder, face_fix=fix)).images
    assert im.faces == 2 and im.recipe.face_fix["faces"] == 2  # the 0.4 one is under the 0.9 threshold
    assert [b["box"] for b in im.recipe.face_fix["boxes"]] == [[34, 24, 106, 96], [144, 94, 206, 156]]  # biggest first
    changed = np.abs(np.asarray(im.image, int) - np.asarray(plain.image, int)).sum(-1) > 0
    inside = np.zeros_like(changed)
    for x0, y0, x1, y1 in ((34, 24, 106, 96), (144, 94, 206, 156)):
        inside[y0:y1, x0:x1] = True
    assert changed[inside].mean() > 0.5 and not changed[~inside].any()  # nothing outside the boxes moved


def test_mask_blur_feathers_inward_from_the_box_edge():
    original = np.zeros((50, 50, 3), np.float32)
    redrawn = np.ones((50, 50, 3), np.float32)
    out = faces.paste(original, redrawn, (10, 10, 40, 40), blur=5)
    assert out[:10].max() == 0 and out[40:].max() == 0  # outside: untouched
    row = out[25, 10:25, 0]
    assert row[0] < row[2] < row[4] < row[5] == pytest.approx(1.0) and row[0] > 0  # a ramp over 5 px
    hard = faces.paste(original, redrawn, (10, 10, 40, 40), blur=0)
    assert hard[10:40, 10:40].min() == 1.0


def test_one_face_equals_diffusers_inpaint_with_a_mask_crop(engine, tiny_folder, with_detector, reference_pipes):
    with_detector(BOXES[:1])
    fix = FaceFix(inpaint_size=192, steps=5, strength=0.6, mask_padding=4, mask_blur=3, cfg_scale=4.0)
    plain = engine.generate(_req(tiny_folder)).images[0]
    [im] = engine.generate(_req(tiny_folder, face_fix=fix)).images
    box = faces.padded(BOXES[0], 4, (256, 192))
    inputs = faces.inpaint_inputs(plain.image, box, 192)
    ref = reference_pipes["inpaint"](prompt="portrait of two friends, daylight", strength=0.6, num_inference_steps=5,
                                     guidance_scale=4.0, output_type="pil",
                                     generator=torch.Generator("cpu").manual_seed(8), **inputs).images[0]  # fmt: skip
    expected = faces.paste(plain.pixels, np.asarray(ref, dtype=np.float32) / 255.0, box, 3)
    assert np.abs(im.pixels - expected).max() < 2 / 255


def test_no_face_leaves_the_image_byte_identical(engine, tiny_folder, with_detector):
    plain = engine.generate(_req(tiny_folder)).images[0]
    with_detector([Face((40, 30, 100, 90), 0.5)])  # under the threshold
    [im] = engine.generate(_req(tiny_folder, face_fix=FaceFix())).images
    assert im.faces == 0 and im.encode() == plain.encode()


def test_the_bundled_detectors_run_offline(tmp_path):
    noise = Image.fromarray((np.random.default_rng(0).random((200, 200, 3)) * 255).astype(np.uint8))
    assert faces.Haar().detect(noise) == [] or all(0 <= f.score <= 1 for f in faces.Haar().detect(noise))
    pytest.importorskip("nudenet")
    assert faces.NudeNetFaces().detect(Image.new("RGB", (200, 200), "white")) == []


def test_a_yolo_model_built_from_its_yaml(engine, tiny_folder, tmp_path, monkeypatch):
    try:
        import ultralytics  # noqa: F401 - the optional `faces` extra
    except Exception:  # noqa: BLE001 - absent, or present without a working torchvision
        pytest.skip("ultralytics (the `faces` extra) is not installed here")
    from daguerre.testing.tiny import build_face_yolo

    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    path = build_face_yolo(tmp_path / "face_yolov8n.pt", config_dir=tmp_path / "cfg")
    detector = faces.load_detector(str(path), engine.models.catalog, tmp_path)
    assert detector.name == "yolo:face_yolov8n.pt" and detector.classes == [0]
    found = detector.detect(Image.new("RGB", (256, 192), (120, 100, 90)))
    assert found and all(0 <= f.score <= 1 and f.box[2] > f.box[0] for f in found)  # random weights: low scores
    assert not home.exists()  # nothing written to the home folder (no settings file, no downloads)
    saved = engine._detector
    engine._detector = detector
    try:
        [im] = engine.generate(_req(tiny_folder, face_fix=FaceFix(confidence=0.0, inpaint_size=128, steps=2,
                                                                   strength=0.5))).images  # fmt: skip
    finally:
        engine._detector = saved
    assert im.faces >= 1 and im.recipe.face_fix["detector"] == "yolo:face_yolov8n.pt"


def test_ranges_and_names():
    base = GenerationRequest(model="m", positive_prompt="a face", width=256, height=256)
    for fix, parameter in ((FaceFix(mask_padding=50), "ultralytics.maskPadding"),
                           (FaceFix(inpaint_size=64), "ultralytics.inpaintSize"),
                           (FaceFix(confidence=1.5), "ultralytics.confidence"),
                           (FaceFix(steps=0), "ultralytics.steps"),
                           (FaceFix(strength=0), "ultralytics.strength")):  # fmt: skip
        with pytest.raises(RequestError) as e:
            validate(replace(base, face_fix=fix))
        assert e.value.parameter == parameter


def test_the_task_api_reports_the_faces_and_the_cli_flag(make_server, engine, tiny_folder, tmp_path, monkeypatch):
    import httpx

    with make_server(api_keys=["k1"]) as s:
        s.services.engine._detector = Known(BOXES[:1])
        h = {"Authorization": "Bearer k1"}
        [item] = httpx.post(
            s.url,
            headers=h,
            timeout=120,
            json=[
                inference_task(width=256, height=192, ultralytics={"inpaintSize": 128, "steps": 2, "maskPadding": 3})
            ],
        ).json()["data"]
        assert item["facesEnhanced"] == 1
        bad = httpx.post(s.url, headers=h, json=[inference_task(ultralytics={"maskBlur": 500})]).json()["errors"][0]
        assert bad["parameter"] == "ultralytics.maskBlur"
        unknown = httpx.post(s.url, headers=h, json=[inference_task(ultralytics={"eyes": 1})]).json()["errors"][0]
        assert unknown["parameter"] == "ultralytics.eyes"
    from typer.testing import CliRunner

    from daguerre.cli import app

    monkeypatch.setenv("DAGUERRE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DAGUERRE_DISCOVER", "false")
    cfg = tmp_path / "daguerre.toml"
    cfg.write_text('[faces]\ndetector = "haar"\n')
    out = CliRunner().invoke(app, ["generate", "a portrait", "--model", str(tiny_folder.model_path), "-W", "128",
                                   "-H", "128", "--steps", "1", "--face-fix", "--face-steps", "2", "--config",
                                   str(cfg), "-o", str(tmp_path / "o"), "-q"])  # fmt: skip
    assert out.exit_code == 0, out.output
    lone = CliRunner().invoke(app, ["generate", "a portrait", "--model", str(tiny_folder.model_path),
                                    "--face-steps", "2"])  # fmt: skip
    assert lone.exit_code == 2 and "--face-fix" in lone.stderr
