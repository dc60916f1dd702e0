"""FLUX.1 Canny/Depth control models: full checkpoints and BFL control LoRAs, against FluxControlPipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from daguerre.errors import RequestError, UnsupportedError
from daguerre.request import ControlRef, GenerationRequest

TOL = 1e-4


@pytest.fixture(scope="module")
def guide():
    g = Image.new("RGB", (128, 128), (0, 0, 0))
    g.paste((255, 255, 255), (24, 40, 100, 90))
    return g


def _gen(engine, model, controls=(), **kw):
    req = GenerationRequest(
        model=str(model),
        positive_prompt="a house",
        width=128,
        height=128,
        steps=4,
        seed=3,
        controlnets=tuple(controls),
        **kw,
    )
    return engine.generate(req).images[0]


def _call(pipe, guide, guidance):
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        "a house",
        control_image=guide,
        width=128,
        height=128,
        num_inference_steps=4,
        guidance_scale=guidance,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(3),
    ).images[0]


def test_control_checkpoint_equals_flux_control_pipeline(engine, tiny_control, guide):
    from diffusers import FluxControlPipeline

    path = tiny_control.model_path
    assert engine.models.catalog.get(str(path)).kind == "control"
    out = _gen(engine, path, [ControlRef(str(path), guide)])
    ref = _call(FluxControlPipeline.from_pretrained(path), guide, 30.0)  # BFL's Canny default guidance
    assert np.abs(out.pixels - ref).max() <= TOL
    other = _gen(engine, path, [ControlRef(str(path), guide.rotate(90))])
    assert np.abs(out.pixels - other.pixels).max() > 1e-3  # the guide is an input
    assert out.recipe.guidance == 30.0 and out.recipe.controlnets[0]["kind"] == "control"
    edges = _gen(engine, path, [ControlRef(str(path), guide, preprocessor="canny")], guidance=12.0)
    assert np.isfinite(edges.pixels).all() and edges.recipe.guidance == 12.0
    src = Image.new("RGB", (128, 128), (90, 120, 200))
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (32, 32, 96, 96))
    for kw in ({"seed_image": src, "strength": 0.8}, {"seed_image": src, "mask_image": mask, "strength": 0.9}):
        assert np.isfinite(_gen(engine, path, [ControlRef(str(path), guide)], **kw).pixels).all()


def test_control_checkpoint_errors(engine, tiny_control, tiny_folder, guide):
    path = tiny_control.model_path
    with pytest.raises(RequestError) as e:
        _gen(engine, path)
    assert e.value.parameter == "controlNet" and "guideImage" in e.value.message
    with pytest.raises(UnsupportedError) as e:
        _gen(engine, path, [ControlRef(str(path), guide, weight=0.5)])
    assert e.value.parameter == "controlNet.weight"
    with pytest.raises(UnsupportedError) as e:
        _gen(engine, path, [ControlRef(str(path), guide, end_percent=50)])
    assert "startStep" in e.value.message
    with pytest.raises(RequestError) as e:  # a full checkpoint is a base model, not an add-on
        _gen(engine, tiny_folder.model_path, [ControlRef(str(path), guide)])
    assert "use it as the request's model" in e.value.message


def test_control_lora_equals_the_merged_control_model_and_unloads_exactly(engine, tiny_folder, guide, tmp_path):
    from diffusers import FluxControlPipeline, FluxPipeline, FluxTransformer2DModel

    from daguerre.engine.models.loading import read_lora as read
    from daguerre.engine.models.lora_files import detect
    from daguerre.testing.loras import build_control_lora, merged_control_state_dict

    lora = build_control_lora(tmp_path / "flux1-canny-dev-lora.safetensors", tiny_folder.model_path, seed=4)
    assert detect(read(lora)) == "bfl" and engine.models.catalog.get(str(lora)).kind == "controllora"
    model = tiny_folder.model_path
    before = _gen(engine, model)
    out = _gen(engine, model, [ControlRef(str(lora), guide, weight=0.8)])

    base = FluxPipeline.from_pretrained(model)
    transformer = FluxTransformer2DModel.from_config({**base.transformer.config, "in_channels": 128})
    transformer.load_state_dict(merged_control_state_dict(model, lora, 0.8))
    parts = {k: v for k, v in base.components.items() if k not in ("image_encoder", "feature_extractor")}
    ref = _call(FluxControlPipeline(**{**parts, "transformer": transformer.eval()}), guide, 30.0)
    assert np.abs(out.pixels - ref).max() <= TOL
    assert out.recipe.controlnets[0]["kind"] == "controllora" and out.recipe.controlnets[0]["weight"] == 0.8

    again = _gen(engine, model, [ControlRef(str(lora), guide, weight=0.8)])  # cached: same image
    assert np.array_equal(again.pixels, out.pixels)
    after = _gen(engine, model)  # unloading restores the widened input layer and the norm scales
    assert np.array_equal(after.pixels, before.pixels)
    loaded = engine.models.lease(str(model))
    with loaded as m:
        assert m.pipe.transformer.config.in_channels == 64 and m.control_lora is None
