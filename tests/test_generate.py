"""The engine's images equal diffusers' pipelines called directly on the same tiny weights."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from daguerre.engine.engine import CancelToken, ProgressEvent
from daguerre.errors import Cancelled, RequestError
from daguerre.request import GenerationRequest

TOL = 1e-4  # max abs pixel difference in fp32, pixels in [0, 1]
PROMPT = "portrait of a woman in her 30s, soft studio lighting, 85mm f/1.4"


def _ref(pipe, seed, **kw):
    kw.setdefault("num_inference_steps", 4)
    return pipe(generator=torch.Generator("cpu").manual_seed(seed), output_type="np", **kw).images[0]


@pytest.fixture(scope="module")
def source_image():
    rng = np.random.RandomState(0)
    return Image.fromarray((rng.rand(192, 128, 3) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def mask_image():
    m = Image.new("L", (128, 192), 0)
    m.paste(255, (32, 48, 96, 144))
    return m


def test_txt2img_equals_diffusers_flux_pipeline(engine, tiny_folder, reference_pipes):
    req = GenerationRequest(
        model=str(tiny_folder.model_path), positive_prompt=PROMPT, width=128, height=192, steps=4, seed=1234
    )
    out = engine.generate(req).images[0]
    ref = _ref(reference_pipes["txt2img"], 1234, prompt=PROMPT, width=128, height=192)
    assert out.pixels.shape == (192, 128, 3)
    assert np.abs(out.pixels - ref).max() <= TOL


def test_img2img_equals_diffusers(engine, tiny_folder, reference_pipes, source_image):
    req = GenerationRequest(
        model=str(tiny_folder.model_path),
        positive_prompt="a cat on a table",
        width=128,
        height=192,
        steps=5,
        seed=3,
        seed_image=source_image,
        strength=0.6,
    )
    out = engine.generate(req).images[0]
    ref = _ref(
        reference_pipes["img2img"],
        3,
        prompt="a cat on a table",
        image=source_image,
        strength=0.6,
        width=128,
        height=192,
        num_inference_steps=5,
        guidance_scale=3.5,
    )
    assert np.abs(out.pixels - ref).max() <= TOL


def test_inpaint_equals_diffusers(engine, tiny_folder, reference_pipes, source_image, mask_image):
    req = GenerationRequest(
        model=str(tiny_folder.model_path),
        positive_prompt="a red car",
        width=128,
        height=192,
        steps=4,
        seed=9,
        seed_image=source_image,
        mask_image=mask_image,
        strength=0.9,
    )
    out = engine.generate(req).images[0]
    ref = _ref(
        reference_pipes["inpaint"],
        9,
        prompt="a red car",
        image=source_image,
        mask_image=mask_image,
        strength=0.9,
        width=128,
        height=192,
        guidance_scale=3.5,
    )
    assert np.abs(out.pixels - ref).max() <= TOL


def test_true_cfg_with_negative_prompt_equals_diffusers(engine, tiny_folder, reference_pipes):
    req = GenerationRequest(
        model=str(tiny_folder.model_path),
        positive_prompt="a dog running on the beach",
        negative_prompt="blurry, low quality",
        true_cfg_scale=4.0,
        width=128,
        height=128,
        steps=3,
        seed=5,
    )
    out = engine.generate(req).images[0]
    ref = _ref(
        reference_pipes["txt2img"],
        5,
        prompt="a dog running on the beach",
        negative_prompt="blurry, low quality",
        true_cfg_scale=4.0,
        width=128,
        height=128,
        num_inference_steps=3,
    )
    assert np.abs(out.pixels - ref).max() <= TOL
    plain = engine.generate(
        GenerationRequest(
            model=str(tiny_folder.model_path),
            width=128,
            height=128,
            steps=3,
            seed=5,
            positive_prompt="a dog running on the beach",
        )
    ).images[0]
    assert np.abs(out.pixels - plain.pixels).max() > 1e-3, "true CFG must change the image"


def test_negative_prompt_without_true_cfg_has_no_effect(engine, tiny_folder):
    """Reference API semantics: the negative prompt is ignored when guidance is off."""
    base = dict(model=str(tiny_folder.model_path), positive_prompt="a red car", width=128, height=128, steps=2, seed=11)
    a = engine.generate(GenerationRequest(**base)).images[0]
    b = engine.generate(GenerationRequest(**base, negative_prompt="cartoon, painting")).images[0]
    assert np.array_equal(a.pixels, b.pixels)
    assert b.recipe.negative_prompt == "cartoon, painting" and b.recipe.true_cfg_scale is None


def test_guidance_changes_the_image(engine, tiny_folder):
    base = dict(model=str(tiny_folder.model_path), positive_prompt="a red car", width=128, height=128, steps=2, seed=11)
    a = engine.generate(GenerationRequest(**base, guidance=1.0)).images[0]
    b = engine.generate(GenerationRequest(**base, guidance=8.0)).images[0]
    assert np.abs(a.pixels - b.pixels).max() > 1e-3
    assert (a.recipe.guidance, b.recipe.guidance) == (1.0, 8.0)


def test_single_file_and_folder_give_identical_images(engine, tiny_folder, tiny_single):
    kw = dict(positive_prompt=PROMPT, width=128, height=128, steps=3, seed=77)
    a = engine.generate(GenerationRequest(model=str(tiny_folder.model_path), **kw)).images[0]
    b = engine.generate(GenerationRequest(model=str(tiny_single.model_path), **kw)).images[0]
    assert np.array_equal(a.pixels, b.pixels)


def test_batch_image_i_equals_single_run_with_seed_plus_i(engine, tiny_folder, reference_pipes):
    req = GenerationRequest(
        model=str(tiny_folder.model_path),
        positive_prompt=PROMPT,
        width=128,
        height=128,
        steps=3,
        seed=500,
        number_results=6,
    )
    result = engine.generate(req, max_batch=4)
    assert result.chunks == [4, 2]
    assert [im.seed for im in result.images] == list(range(500, 506))
    for im in result.images:
        single = engine.generate(
            GenerationRequest(
                model=str(tiny_folder.model_path), positive_prompt=PROMPT, width=128, height=128, steps=3, seed=im.seed
            )
        ).images[0]
        assert np.abs(im.pixels - single.pixels).max() <= TOL
    ref = _ref(reference_pipes["txt2img"], 503, prompt=PROMPT, width=128, height=128, num_inference_steps=3)
    assert np.abs(result.images[3].pixels - ref).max() <= TOL


def test_runs_are_deterministic_and_seeds_matter(engine, tiny_folder):
    kw = dict(model=str(tiny_folder.model_path), positive_prompt=PROMPT, width=128, height=128, steps=2)
    a = engine.generate(GenerationRequest(**kw, seed=1)).images[0]
    b = engine.generate(GenerationRequest(**kw, seed=1)).images[0]
    c = engine.generate(GenerationRequest(**kw, seed=2)).images[0]
    assert np.array_equal(a.pixels, b.pixels)
    assert np.abs(a.pixels - c.pixels).max() > 1e-3


def test_random_seed_is_reported_and_reusable(engine, tiny_folder):
    kw = dict(model=str(tiny_folder.model_path), positive_prompt=PROMPT, width=128, height=128, steps=2)
    r = engine.generate(GenerationRequest(**kw))
    assert 0 <= r.seed < 2**32 and r.images[0].seed == r.seed == r.images[0].recipe.seed
    again = engine.generate(GenerationRequest(**kw, seed=r.seed)).images[0]
    assert np.array_equal(again.pixels, r.images[0].pixels)


def test_largest_seed_is_accepted(engine, tiny_folder):
    r = engine.generate(
        GenerationRequest(
            model=str(tiny_folder.model_path), positive_prompt=PROMPT, width=128, height=128, steps=1, seed=2**63 - 1
        )
    )
    assert r.images[0].seed == 2**63 - 1


def test_schnell_defaults_and_rejects_cfgscale(engine, tiny_schnell):
    kw = dict(model=str(tiny_schnell.model_path), positive_prompt=PROMPT, width=128, height=128, seed=3)
    r = engine.generate(GenerationRequest(**kw)).images[0]
    assert r.recipe.steps == 4 and r.recipe.guidance is None
    with pytest.raises(RequestError) as e:
        engine.generate(GenerationRequest(**kw, guidance=3.5))
    assert e.value.parameter == "CFGScale" and "schnell" in e.value.message


def test_progress_events_and_preview(engine, tiny_folder):
    events: list[ProgressEvent] = []
    req = GenerationRequest(
        model=str(tiny_folder.model_path),
        positive_prompt=PROMPT,
        width=128,
        height=192,
        steps=3,
        seed=1,
        number_results=2,
    )
    engine.generate(req, on_progress=events.append, preview=True)
    assert [(e.step, e.total, e.images) for e in events] == [(1, 3, (0, 1)), (2, 3, (0, 1)), (3, 3, (0, 1))]
    assert all(e.elapsed > 0 for e in events)
    assert events[0].preview.size == (128 // 8, 192 // 8)
    assert events[0].preview.mode == "RGB"


def test_img2img_progress_counts_the_steps_strength_leaves(engine, tiny_folder, source_image):
    events = []
    req = GenerationRequest(
        model=str(tiny_folder.model_path),
        positive_prompt=PROMPT,
        width=128,
        height=192,
        steps=10,
        seed=1,
        seed_image=source_image,
        strength=0.5,
    )
    engine.generate(req, on_progress=events.append)
    assert len(events) == 5 and events[-1].total == 5


def test_cancellation_stops_between_steps(engine, tiny_folder):
    token = CancelToken()
    seen = []

    def on_progress(ev):
        seen.append(ev.step)
        if ev.step == 2:
            token.cancel()

    req = GenerationRequest(
        model=str(tiny_folder.model_path), positive_prompt=PROMPT, width=128, height=128, steps=10, seed=1
    )
    with pytest.raises(Cancelled):
        engine.generate(req, on_progress=on_progress, cancel=token)
    assert seen == [1, 2]
    # The engine is still usable afterwards.
    assert (
        len(
            engine.generate(
                GenerationRequest(
                    model=str(tiny_folder.model_path), positive_prompt=PROMPT, width=128, height=128, steps=1, seed=1
                )
            ).images
        )
        == 1
    )


def test_cancel_from_another_thread(engine, tiny_folder):
    token = CancelToken()
    started = threading.Event()

    def on_progress(ev):
        started.set()
        started.wait()

    threading.Timer(0.0, lambda: (started.wait(5), token.cancel())).start()
    req = GenerationRequest(
        model=str(tiny_folder.model_path), positive_prompt=PROMPT, width=128, height=128, steps=50, seed=1
    )
    with pytest.raises(Cancelled):
        engine.generate(req, on_progress=on_progress, cancel=token)


def test_recipe_fields(engine, tiny_folder, source_image):
    from daguerre.recipe import pixels_sha256

    req = GenerationRequest(
        model=str(tiny_folder.model_path),
        positive_prompt=PROMPT,
        width=128,
        height=192,
        steps=4,
        seed=10,
        seed_image=source_image,
        strength=0.5,
    )
    r = engine.generate(req).images[0].recipe
    assert r.workflow == "img2img" and r.strength == 0.5 and r.steps == 4 and r.seed == 10
    assert r.seed_image_sha256 == pixels_sha256(source_image)
    assert len(r.model_hash) == 64 and r.scheduler == "Default" and r.device == "cpu" and r.dtype == "float32"
