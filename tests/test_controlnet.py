"""ControlNet: equals diffusers' ControlNet pipelines, several at once, step windows, canny, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from daguerre.errors import RequestError, UnsupportedError
from daguerre.request import ControlRef, GenerationRequest, validate

TOL = 1e-4


@pytest.fixture(scope="module")
def guide():
    g = Image.new("RGB", (128, 128), (0, 0, 0))
    g.paste((255, 255, 255), (32, 32, 96, 96))
    return g


def _gen(engine, folder, controls, **kw):
    req = GenerationRequest(
        model=str(folder),
        positive_prompt="a house",
        width=128,
        height=128,
        steps=4,
        seed=2,
        controlnets=tuple(controls),
        **kw,
    )
    return engine.generate(req).images[0]


def _pipe(folder, nets):
    from diffusers import FluxControlNetModel, FluxControlNetPipeline, FluxMultiControlNetModel

    models = [FluxControlNetModel.from_pretrained(n) for n in nets]
    pipe = FluxControlNetPipeline.from_pretrained(
        folder, controlnet=models[0] if len(models) == 1 else FluxMultiControlNetModel(models)
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_one_controlnet_equals_the_diffusers_pipeline(engine, tiny_folder, tiny_controlnets, guide):
    out = _gen(
        engine,
        tiny_folder.model_path,
        [ControlRef(str(tiny_controlnets[0]), guide, weight=0.8, start_percent=25, end_percent=100)],
    )
    ref = _pipe(tiny_folder.model_path, tiny_controlnets[:1])(
        "a house",
        control_image=guide,
        controlnet_conditioning_scale=0.8,
        control_guidance_start=0.25,
        control_guidance_end=1.0,
        width=128,
        height=128,
        num_inference_steps=4,
        guidance_scale=3.5,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(2),
    ).images[0]
    assert np.abs(out.pixels - ref).max() <= TOL
    plain = _gen(engine, tiny_folder.model_path, [])
    assert np.abs(out.pixels - plain.pixels).max() > 1e-3
    [rec] = out.recipe.controlnets
    assert rec["weight"] == 0.8 and rec["start"] == 0.25 and rec["end"] == 1.0 and len(rec["guide_sha256"]) == 64


def test_several_controlnets_with_their_own_windows_and_modes(engine, tiny_folder, tiny_controlnets, guide):
    controls = [
        ControlRef(str(tiny_controlnets[0]), guide, weight=1.0, start_step=0, end_step=2, mode="prompt"),
        ControlRef(str(tiny_controlnets[1]), guide.rotate(90), weight=0.6, mode="controlnet"),
    ]
    out = _gen(engine, tiny_folder.model_path, controls)
    ref = _pipe(tiny_folder.model_path, tiny_controlnets)(
        "a house",
        control_image=[guide, guide.rotate(90)],
        controlnet_conditioning_scale=[0.5, 0.9],
        control_guidance_start=[0.0, 0.0],
        control_guidance_end=[0.5, 1.0],
        width=128,
        height=128,
        num_inference_steps=4,
        guidance_scale=3.5,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(2),
    ).images[0]
    assert np.abs(out.pixels - ref).max() <= TOL


def test_weight_zero_equals_no_controlnet(engine, tiny_folder, tiny_controlnets, guide):
    plain = _gen(engine, tiny_folder.model_path, [])
    zero = _gen(engine, tiny_folder.model_path, [ControlRef(str(tiny_controlnets[0]), guide, weight=0.0)])
    assert np.abs(plain.pixels - zero.pixels).max() <= TOL


def test_canny_preprocessing_turns_a_photo_into_edges(engine, tiny_folder, tiny_controlnets):
    from daguerre.engine.controlnet import canny

    photo = Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 40 + 100).astype("uint8")).resize((128, 128))
    photo.paste((250, 250, 250), (40, 40, 90, 90))
    edges = canny(photo, 100, 200)
    arr = np.asarray(edges)
    assert set(np.unique(arr)) <= {0, 255} and arr.max() == 255 and (arr > 0).mean() < 0.2
    a = _gen(engine, tiny_folder.model_path, [ControlRef(str(tiny_controlnets[0]), photo, preprocessor="canny")])
    b = _gen(engine, tiny_folder.model_path, [ControlRef(str(tiny_controlnets[0]), edges)])
    assert np.array_equal(a.pixels, b.pixels), "canny preprocessing equals sending the edge image"


def test_controlnet_with_img2img_and_inpaint(engine, tiny_folder, tiny_controlnets, guide):
    src = Image.fromarray((np.random.RandomState(3).rand(128, 128, 3) * 255).astype("uint8"))
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (20, 20, 100, 100))
    c = [ControlRef(str(tiny_controlnets[0]), guide)]
    for kw in ({"seed_image": src, "strength": 0.7}, {"seed_image": src, "mask_image": mask, "strength": 0.9}):
        out = _gen(engine, tiny_folder.model_path, c, **kw)
        assert np.isfinite(out.pixels).all() and out.image.size == (128, 128)


def test_controlnet_errors(engine, tiny_folder, tiny_controlnets, guide, tmp_path):
    base = dict(model="m", positive_prompt="a house", width=128, height=128)
    cases = [
        (ControlRef("x", guide, weight=4.5), "controlNet.weight"),
        (ControlRef("x", guide, start_step=2, start_percent=20), "controlNet.startStep"),
        (ControlRef("x", guide, start_percent=50, end_percent=40), "controlNet.startStepPercentage"),
        (ControlRef("x", guide, mode="loud"), "controlNet.controlMode"),
        (ControlRef("x", guide, canny_low=200, canny_high=100), "controlNet.lowThresholdCanny"),
    ]
    for ref, parameter in cases:
        with pytest.raises(RequestError) as e:
            validate(GenerationRequest(**base, controlnets=(ref,)))
        assert e.value.parameter == parameter
    with pytest.raises(RequestError) as e:
        validate(GenerationRequest(**base, controlnets=(ControlRef("x", guide, preprocessor="openpose"),)))
    assert e.value.code == "unsupportedParameter"
    with pytest.raises(RequestError) as e:
        _gen(engine, tiny_folder.model_path, [ControlRef(str(tiny_folder.model_path), guide)])
    assert "not a FLUX.1 ControlNet" in e.value.message
    with pytest.raises(RequestError) as e:
        _gen(engine, tiny_folder.model_path, [ControlRef(str(tiny_controlnets[0]), guide, end_step=9)])
    assert "at most steps" in e.value.message
    with pytest.raises(RequestError) as e:
        validate(GenerationRequest(**base, controlnets=(ControlRef("x", guide, control_type="edges"),)))
    assert e.value.parameter == "controlNet.controlType" and "canny, tile, depth" in e.value.message
    with pytest.raises(RequestError) as e:
        _gen(engine, tiny_folder.model_path, [ControlRef(str(tiny_controlnets[0]), guide, control_type="canny")])
    assert e.value.parameter == "controlNet.controlType" and "Union ControlNets only" in e.value.message


def _reference(folder, net, guide, **kw):
    from diffusers import FluxControlNetPipeline

    pipe = FluxControlNetPipeline.from_pretrained(folder, controlnet=net)
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        "a house",
        control_image=guide,
        width=128,
        height=128,
        num_inference_steps=4,
        guidance_scale=3.5,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(2),
        **kw,
    ).images[0]


def test_union_controlnet_follows_its_control_type(engine, tiny_folder, guide, tmp_path):
    from daguerre.testing.tiny import build_controlnet, tiny_controlnet

    union = build_controlnet(tmp_path / "union", seed=5, union_modes=7)
    depth = _gen(engine, tiny_folder.model_path, [ControlRef(str(union), guide, control_type="depth")])
    ref = _reference(tiny_folder.model_path, tiny_controlnet(seed=5, union_modes=7), guide, control_mode=2)
    assert np.abs(depth.pixels - ref).max() <= TOL
    canny = _gen(engine, tiny_folder.model_path, [ControlRef(str(union), guide, control_type="canny")])
    ref0 = _reference(tiny_folder.model_path, tiny_controlnet(seed=5, union_modes=7), guide, control_mode=0)
    assert np.abs(canny.pixels - ref0).max() <= TOL
    assert not np.array_equal(depth.pixels, canny.pixels)  # the type is an input, not a label
    assert depth.recipe.controlnets[0]["control_type"] == "depth"
    with pytest.raises(RequestError) as e:
        _gen(engine, tiny_folder.model_path, [ControlRef(str(union), guide)])
    assert e.value.parameter == "controlNet.controlType" and "Union" in e.value.message


def test_xlabs_controlnet_file_equals_the_diffusers_model(engine, tiny_folder, tiny_controlnets, guide, tmp_path):
    from daguerre.engine.models.checkpoints import inspect
    from daguerre.testing.tiny import build_xlabs_controlnet, tiny_controlnet

    path = build_xlabs_controlnet(tmp_path / "flux-canny-controlnet-v3.safetensors", seed=6)
    assert inspect(path).kind == "controlnet"
    out = _gen(engine, tiny_folder.model_path, [ControlRef(str(path), guide, weight=0.7)])
    ref = _reference(
        tiny_folder.model_path, tiny_controlnet(seed=6, xlabs=True), guide, controlnet_conditioning_scale=0.7
    )
    assert np.abs(out.pixels - ref).max() <= TOL
    assert np.abs(out.pixels - _gen(engine, tiny_folder.model_path, []).pixels).max() > 1e-3
    with pytest.raises(UnsupportedError) as e:  # diffusers applies one residual layout to all nets
        _gen(
            engine, tiny_folder.model_path, [ControlRef(str(path), guide), ControlRef(str(tiny_controlnets[0]), guide)]
        )
    assert "XLabs" in e.value.message
