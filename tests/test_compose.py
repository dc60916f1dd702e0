"""Outpainting, inpainting with maskMargin, and FLUX.1 Fill models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from daguerre.engine.inputs import feather_alpha, outpaint_canvas
from daguerre.errors import RequestError, UnsupportedError
from daguerre.request import GenerationRequest, Outpaint, validate

TOL = 1e-4


@pytest.fixture(scope="module")
def src():
    return Image.fromarray((np.random.RandomState(1).rand(96, 128, 3) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def mask():
    m = Image.new("L", (128, 96), 0)
    m.paste(255, (40, 30, 80, 70))
    return m


def _u8(pixels):
    return (pixels * 255).round().astype(np.uint8)


def test_outpaint_keeps_the_source_and_generates_the_border(engine, tiny_folder, reference_pipes, src):
    o = Outpaint(top=16, bottom=16, left=32, right=32, blur=8)
    req = GenerationRequest(
        model=str(tiny_folder.model_path),
        positive_prompt="a wide landscape",
        width=192,
        height=128,
        steps=3,
        seed=4,
        seed_image=src,
        outpaint=o,
    )
    out = engine.generate(req).images[0]
    assert out.image.size == (192, 128) and out.recipe.workflow == "outpaint" and out.recipe.strength == 1.0
    px = _u8(out.pixels)
    inner = px[16 + 8 : 16 + 96 - 8, 32 + 8 : 32 + 128 - 8]
    assert np.array_equal(inner, np.asarray(src)[8:-8, 8:-8]), "the source beyond the seam is unchanged"
    canvas, m = outpaint_canvas(src, top=16, bottom=16, left=32, right=32)
    ref = reference_pipes["inpaint"](
        "a wide landscape",
        image=canvas,
        mask_image=m,
        strength=1.0,
        width=192,
        height=128,
        num_inference_steps=3,
        guidance_scale=3.5,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(4),
    ).images[0]
    alpha = feather_alpha(m, 8, inward=False)
    assert np.abs(out.pixels - ref)[alpha == 1].max() <= TOL, "the border is the inpaint pipeline's output"


def test_mask_margin_changes_only_the_mask(engine, tiny_folder, reference_pipes):
    src = Image.fromarray((np.random.RandomState(2).rand(128, 128, 3) * 255).astype("uint8"))
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (40, 30, 80, 70))
    req = GenerationRequest(
        model=str(tiny_folder.model_path),
        positive_prompt="a red car",
        width=128,
        height=128,
        steps=3,
        seed=2,
        seed_image=src,
        mask_image=mask,
        mask_margin=32,
    )
    out = engine.generate(req).images[0]
    assert out.recipe.mask_margin == 32
    px = _u8(out.pixels)
    inside = np.asarray(mask) >= 128
    assert np.array_equal(px[~inside], np.asarray(src)[~inside]), "pixels outside the mask are unchanged"
    assert np.abs(px[inside].astype(int) - np.asarray(src)[inside]).max() > 10
    ref = reference_pipes["inpaint"](
        "a red car",
        image=src,
        mask_image=mask,
        padding_mask_crop=32,
        strength=0.8,
        width=128,
        height=128,
        num_inference_steps=3,
        guidance_scale=3.5,
        generator=torch.Generator("cpu").manual_seed(2),
    ).images[0]
    core = feather_alpha(mask, 4, inward=True) == 1
    assert core.sum() > 100
    assert np.abs(out.pixels - np.asarray(ref, dtype=np.float32) / 255)[core].max() <= TOL
    plain = engine.generate(
        GenerationRequest(
            model=str(tiny_folder.model_path),
            positive_prompt="a red car",
            width=128,
            height=128,
            steps=3,
            seed=2,
            seed_image=src,
            mask_image=mask,
        )
    ).images[0]
    assert np.abs(plain.pixels - out.pixels).max() > 1e-3, "the crop works at a different resolution"


def test_fill_model_equals_flux_fill_pipeline(engine, tiny_fill, src, mask):
    from diffusers import FluxFillPipeline

    req = GenerationRequest(
        model=str(tiny_fill.model_path),
        positive_prompt="a red car",
        width=128,
        height=128,
        steps=3,
        seed=6,
        seed_image=src,
        mask_image=mask,
    )
    out = engine.generate(req).images[0]
    assert out.recipe.guidance == 30.0 and out.recipe.strength == 1.0
    pipe = FluxFillPipeline.from_pretrained(tiny_fill.model_path)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        "a red car",
        image=src,
        mask_image=mask,
        width=128,
        height=128,
        num_inference_steps=3,
        guidance_scale=30.0,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(6),
    ).images[0]
    assert np.abs(out.pixels - ref).max() <= TOL


def test_fill_model_outpaints_and_refuses_other_workflows(engine, tiny_fill, src):
    o = Outpaint(left=32, right=32, top=16, bottom=16)
    out = engine.generate(
        GenerationRequest(
            model=str(tiny_fill.model_path),
            positive_prompt="a wide landscape",
            width=192,
            height=128,
            steps=2,
            seed=1,
            seed_image=src,
            outpaint=o,
        )
    )
    assert out.images[0].image.size == (192, 128)
    with pytest.raises(RequestError) as e:
        engine.generate(
            GenerationRequest(model=str(tiny_fill.model_path), positive_prompt="a cat", width=128, height=128, steps=1)
        )
    assert "Fill model" in e.value.message
    with pytest.raises(UnsupportedError):
        engine.generate(
            GenerationRequest(
                model=str(tiny_fill.model_path),
                positive_prompt="a cat",
                width=192,
                height=128,
                steps=1,
                seed_image=src,
                outpaint=o,
                true_cfg_scale=3.0,
            )
        )


@pytest.mark.parametrize(
    ("outpaint", "width", "needle"),
    [
        (Outpaint(), 192, "at least one"),
        (Outpaint(top=-1, left=64), 192, "outpaint.top"),
        (Outpaint(top=32, left=10), 192, "multiple of 64"),
        (Outpaint(top=32, left=64), 256, "final size 192x128"),
        (Outpaint(top=32, left=64, blur=65), 192, "outpaint.blur"),
    ],
)
def test_outpaint_validation(src, outpaint, width, needle):
    validate(
        GenerationRequest(
            model="m",
            positive_prompt="a cat",
            width=192,
            height=128,
            seed_image=src,
            outpaint=Outpaint(top=32, left=64),
        )
    )  # the valid baseline: 128x96 + 64 + 32
    with pytest.raises(RequestError) as e:
        validate(
            GenerationRequest(
                model="m", positive_prompt="a cat", width=width, height=128, seed_image=src, outpaint=outpaint
            )
        )
    assert needle in e.value.message


def test_outpaint_needs_a_seed_image_and_no_mask(src, mask):
    with pytest.raises(RequestError) as e:
        validate(
            GenerationRequest(model="m", positive_prompt="a cat", width=128, height=128, outpaint=Outpaint(top=64))
        )
    assert "seedImage" in e.value.message
    with pytest.raises(RequestError) as e:
        validate(
            GenerationRequest(
                model="m",
                positive_prompt="a cat",
                width=128,
                height=128,
                seed_image=src,
                mask_image=mask,
                outpaint=Outpaint(top=64),
            )
        )
    assert e.value.parameter == "maskImage"


def test_mask_margin_bounds(src, mask):
    for ok in (32, 128):
        validate(
            GenerationRequest(
                model="m",
                positive_prompt="a cat",
                width=128,
                height=128,
                seed_image=src,
                mask_image=mask,
                mask_margin=ok,
            )
        )
    for bad in (31, 129):
        with pytest.raises(RequestError) as e:
            validate(
                GenerationRequest(
                    model="m",
                    positive_prompt="a cat",
                    width=128,
                    height=128,
                    seed_image=src,
                    mask_image=mask,
                    mask_margin=bad,
                )
            )
        assert e.value.parameter == "maskMargin" and "[32, 128]" in e.value.message
    with pytest.raises(RequestError):
        validate(
            GenerationRequest(model="m", positive_prompt="a cat", width=128, height=128, seed_image=src, mask_margin=64)
        )


def test_kontext_edits_with_the_seed_image_as_reference(engine, tiny_kontext, src):
    from diffusers import FluxKontextPipeline

    pipe = FluxKontextPipeline.from_pretrained(tiny_kontext.model_path)
    pipe.set_progress_bar_config(disable=True)
    for image in (src, None):
        req = GenerationRequest(
            model=str(tiny_kontext.model_path),
            positive_prompt="make the car red",
            width=128,
            height=128,
            steps=2,
            seed=8,
            seed_image=image,
        )
        out = engine.generate(req).images[0]
        assert out.image.size == (128, 128) and out.recipe.guidance == 2.5 and out.recipe.strength is None
        ref = pipe(
            image=image,
            prompt="make the car red",
            width=128,
            height=128,
            max_area=128 * 128,
            num_inference_steps=2,
            guidance_scale=2.5,
            output_type="np",
            generator=torch.Generator("cpu").manual_seed(8),
        ).images[0]
        assert np.abs(out.pixels - ref).max() <= TOL


def test_kontext_refuses_what_it_cannot_do(engine, tiny_kontext, src, mask):
    base = dict(model=str(tiny_kontext.model_path), positive_prompt="make it red", width=128, height=128, steps=1)
    with pytest.raises(RequestError) as e:
        engine.generate(GenerationRequest(**base, seed_image=src, strength=0.5))
    assert e.value.parameter == "strength"
    with pytest.raises(UnsupportedError):
        engine.generate(GenerationRequest(**base, seed_image=src, mask_image=mask))


def test_kontext_kind_comes_from_the_folder(tiny_kontext):
    from daguerre.engine.models.catalog import Catalog

    assert Catalog([]).get(str(tiny_kontext.model_path)).kind == "kontext"
