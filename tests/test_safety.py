"""The safety checker: each classifier architecture with scores forced over and under the threshold, what a
flagged image becomes, the engine's check (result, pixels, recipe), and NudeNet's real weights."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from daguerre.engine.features.safety import SafetyChecker, censor
from daguerre.errors import UnsupportedError
from daguerre.request import GenerationRequest, SafetyCheck
from daguerre.testing.safety import build_clip, build_nudenet, build_vit

PICTURE = Image.fromarray((np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8))


def _checker(kind, path, threshold=0.5, action="blur"):
    return SafetyChecker(checker=kind, path=path, threshold=threshold, action=action)


@pytest.mark.parametrize("kind", ["nudenet", "vit", "clip"])
def test_each_classifier_flags_over_its_threshold_only(kind, tmp_path):
    def build(score, name):
        if kind == "nudenet":
            return build_nudenet(tmp_path / f"{name}.onnx", {"FEMALE_GENITALIA_EXPOSED": score})
        if kind == "vit":
            return build_vit(tmp_path / name, score)
        return build_clip(tmp_path / name, score - 0.5)  # the checker's own margin: score 0.5 is its line

    over, under = build(0.8, "over"), build(0.3, "under")
    [v] = _checker(kind, over).check([PICTURE], action=None, threshold=None)
    assert v.flagged and v.score == pytest.approx(0.8, abs=1e-4) and v.action == "blur"
    [v] = _checker(kind, under).check([PICTURE], action=None, threshold=None)
    assert not v.flagged and v.score == pytest.approx(0.3, abs=1e-4)
    # The request's threshold wins over the server's.
    [v] = _checker(kind, under).check([PICTURE], action="black", threshold=0.25)
    assert v.flagged and v.action == "black" and v.threshold == 0.25


def test_nudenet_ignores_covered_and_harmless_classes(tmp_path):
    path = build_nudenet(tmp_path / "faces.onnx", {"FACE_FEMALE": 0.95, "BELLY_COVERED": 0.9})
    [v] = _checker("nudenet", path).check([PICTURE], action=None, threshold=None)
    assert not v.flagged and v.score == 0.0


def test_the_clip_checker_agrees_with_diffusers_own_decision(tmp_path):
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    for margin in (0.1, -0.1):
        folder = build_clip(tmp_path / f"m{margin}", margin)
        ours = _checker("clip", folder).check([PICTURE], action=None, threshold=None)[0].flagged
        checker = StableDiffusionSafetyChecker.from_pretrained(folder)
        pixels = CLIPImageProcessor.from_pretrained(folder)(images=[PICTURE], return_tensors="pt").pixel_values
        _, theirs = checker(images=np.zeros((1, 8, 8, 3)), clip_input=pixels)
        assert ours == theirs[0] == (margin > 0)


def test_flagged_images_are_censored_as_asked():
    a = np.asarray(PICTURE, dtype=np.float32)
    blurred = np.asarray(censor(PICTURE, "blur"), dtype=np.float32)
    assert blurred.std() < a.std() / 3  # the detail is gone
    assert not np.asarray(censor(PICTURE, "black")).any()
    cells = np.asarray(censor(PICTURE, "pixelate"))
    assert len(np.unique(cells.reshape(-1, 3), axis=0)) <= 16 * 12  # blocks, not pixels
    notice = np.asarray(censor(PICTURE, "sensitive_content_text"))
    assert notice.std() > 0 and (notice == notice[..., :1]).all()  # a grey card with the notice on it
    assert censor(PICTURE, "flag") is PICTURE
    assert all(censor(PICTURE, a).size == PICTURE.size for a in ("blur", "black", "pixelate", "sensitive_content_text"))


def test_a_missing_or_broken_checker_is_a_clear_error(tmp_path):
    with pytest.raises(UnsupportedError, match="no safety checker"):
        _checker("none", None).classifier()
    assert not _checker("none", None).available
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(Exception, match="cannot load the NudeNet model"):
        _checker("nudenet", bad).classifier()
    with pytest.raises(Exception, match="needs safety.path"):
        _checker("vit", None).classifier()


def test_the_engine_checks_censors_and_records(engine, tiny_folder, tmp_path):
    """One request: the forced-explicit checker flags both images, which come back black, flagged, with the
    check in their recipe (embedded in the file too); the unchecked run of the same seed is untouched."""
    from daguerre import recipe as recipes

    plain_req = GenerationRequest(model=str(tiny_folder.model_path), positive_prompt="a red barn in fog",
                                  width=128, height=128, steps=2, seed=5, number_results=2)  # fmt: skip
    plain = engine.generate(plain_req)
    saved = engine.safety
    engine.safety = _checker("nudenet", build_nudenet(tmp_path / "x.onnx", {"BUTTOCKS_EXPOSED": 0.9}))
    try:
        from dataclasses import replace

        checked = engine.generate(replace(plain_req, safety=SafetyCheck(action="black")))
        passed = engine.generate(replace(plain_req, safety=SafetyCheck(threshold=0.95)))
    finally:
        engine.safety = saved
    for im in checked.images:
        assert im.nsfw and not np.asarray(im.image).any()
        assert im.recipe.safety == {"checker": "nudenet:x.onnx", "score": 0.9, "threshold": 0.5, "flagged": True,
                                    "action": "black"}  # fmt: skip
    path = tmp_path / "flagged.png"
    path.write_bytes(checked.images[0].encode())
    assert recipes.read(path).safety["flagged"]
    for im, ref in zip(passed.images, plain.images, strict=True):  # under the request's threshold: untouched
        assert not im.nsfw and im.recipe.safety["flagged"] is False
        assert np.array_equal(np.asarray(im.image), np.asarray(ref.image))
    assert all(im.verdict is None and im.recipe.safety is None for im in plain.images)


def test_real_nudenet_passes_generated_pictures(engine, tiny_folder):
    """NudeNet's own weights (from its wheel) on the tiny model's pictures and plain test cards: nothing
    explicit, nothing flagged, pixels unchanged."""
    pytest.importorskip("nudenet")
    checker = _checker("nudenet", None)
    req = GenerationRequest(model=str(tiny_folder.model_path), positive_prompt="portrait of a woman",
                            width=256, height=256, steps=2, seed=3, number_results=2)  # fmt: skip
    images = [im.image for im in engine.generate(req).images]
    cards = [Image.new("RGB", (320, 240), (200, 180, 160)), PICTURE]
    verdicts = checker.check(images + cards, action=None, threshold=None)
    assert [v.flagged for v in verdicts] == [False] * 4 and all(v.checker == "nudenet" for v in verdicts)
    assert all(0.0 <= v.score < 0.5 for v in verdicts)
