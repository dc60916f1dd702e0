"""Every scheduler name runs a real flow sampler; the Euler names equal FluxPipeline; higher orders converge."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from daguerre.engine.schedulers import REGISTRY, make_scheduler
from daguerre.request import SCHEDULER_NAMES as REFERENCE_NAMES
from daguerre.request import SCHEDULERS, GenerationRequest

STOCHASTIC = {"Euler a", "EulerAncestralDiscreteScheduler", "DDPMScheduler", "KDPM2AncestralDiscreteScheduler",
              "TCDScheduler", "LCM", "LCMScheduler", "DPM++ 3M SDE Uniform"}  # fmt: skip
STOCHASTIC |= {n for n in REFERENCE_NAMES if n.startswith(("DPM++ SDE", "DPM++ 2M SDE"))}


def _gen(engine, model, name, **kw):
    kw = {"width": 128, "height": 128, "steps": 4, "seed": 11, **kw}
    return engine.generate(GenerationRequest(model=str(model), positive_prompt="a lighthouse", scheduler=name, **kw))


@pytest.mark.parametrize("name", REFERENCE_NAMES)
def test_every_name_runs_and_gives_a_finite_image(engine, tiny_folder, name):
    [img] = _gen(engine, tiny_folder.model_path, name).images
    assert np.isfinite(img.pixels).all() and img.pixels.std() > 0.01
    assert img.recipe.scheduler == name


@pytest.mark.parametrize("name", ["Default", "FlowMatchEulerDiscreteScheduler", "Euler"])
def test_euler_names_equal_the_flux_pipeline_default(engine, tiny_folder, reference_pipes, name):
    [img] = _gen(engine, tiny_folder.model_path, name).images
    ref = reference_pipes["txt2img"](
        "a lighthouse",
        width=128,
        height=128,
        num_inference_steps=4,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(11),
    ).images[0]
    assert np.array_equal(img.pixels, ref)


def test_stochastic_samplers_reproduce_per_image_at_any_batch_size(engine, tiny_folder):
    for name in ("Euler a", "DPM++ 2M SDE Karras", "DPM++ SDE"):
        batch = _gen(engine, tiny_folder.model_path, name, number_results=2).images
        single = _gen(engine, tiny_folder.model_path, name, seed=12).images[0]
        assert np.abs(batch[1].pixels - single.pixels).max() <= 1e-4, name
        assert np.abs(batch[0].pixels - batch[1].pixels).max() > 1e-3


def test_samplers_with_img2img_inpaint_and_schnell(engine, tiny_folder, tiny_schnell):
    src = Image.new("RGB", (128, 128), (40, 90, 160))
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (32, 32, 96, 96))
    for name in ("Heun", "DPM++ 2M Karras", "UniPC 3M", "LMS", "Euler a"):
        for kw in ({"seed_image": src, "strength": 0.6}, {"seed_image": src, "mask_image": mask, "strength": 0.8}):
            assert np.isfinite(_gen(engine, tiny_folder.model_path, name, steps=6, **kw).images[0].pixels).all()
        assert np.isfinite(_gen(engine, tiny_schnell.model_path, name).images[0].pixels).all()


def test_higher_order_samplers_converge_to_the_ode_solution(reference_pipes):
    """Deterministic samplers all integrate FLUX's flow ODE: against Euler at 300 steps, each is closer at
    8 steps than Euler at 8 steps (higher order), and its error at least halves from 8 to 32 steps. (The tiny
    random model is a rough function of t, so errors fall slower than the asymptotic orders.)"""
    pipe = reference_pipes["txt2img"]
    original = pipe.scheduler
    config = dict(original.config)

    def latents(name: str, steps: int) -> torch.Tensor:
        pipe.scheduler = make_scheduler(name, config, "dev")
        return pipe(
            "a lighthouse",
            width=128,
            height=128,
            num_inference_steps=steps,
            output_type="latent",
            generator=torch.Generator("cpu").manual_seed(3),
        ).images

    try:
        truth = latents("Euler", 300)
        euler8 = (latents("Euler", 8) - truth).abs().mean().item()
        for name in ("DPM++ 2M", "DPM++ 3M", "UniPC", "DEISMultistepScheduler", "Heun", "KDPM2DiscreteScheduler",
                     "LMS", "IPNDMScheduler", "DPMSolverSinglestepScheduler"):  # fmt: skip
            e8 = (latents(name, 8) - truth).abs().mean().item()
            e32 = (latents(name, 32) - truth).abs().mean().item()
            assert e8 < euler8, (name, e8, euler8)
            assert e32 < e8 / 2, (name, e8, e32)
    finally:
        pipe.scheduler = original


def test_every_name_maps_to_a_sampler_and_docs_list_them():
    from pathlib import Path

    assert set(SCHEDULERS) == set(REFERENCE_NAMES) and len(REFERENCE_NAMES) == 75
    assert {algorithm for algorithm, _ in SCHEDULERS.values()} <= set(REGISTRY)  # every name has a sampler
    doc = (Path(__file__).parents[1] / "docs" / "schedulers.md").read_text()
    for name in REFERENCE_NAMES:
        assert f"| `{name}` |" in doc, name
