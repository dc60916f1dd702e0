"""IP-Adapter (XLabs format): equals diffusers with the same adapter, unloads to the base exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from daguerre.errors import ModelLoadError, RequestError
from daguerre.request import GenerationRequest, IpAdapterRef, validate

TOL = 1e-4


@pytest.fixture(scope="module")
def guides():
    rng = np.random.RandomState(4)
    return [Image.fromarray((rng.rand(64, 64, 3) * 255).astype("uint8")) for _ in range(2)]


def _gen(engine, folder, ips=(), **kw):
    req = GenerationRequest(
        model=str(folder),
        positive_prompt="a portrait",
        width=128,
        height=128,
        steps=2,
        seed=5,
        ip_adapters=tuple(ips),
        **kw,
    )
    return engine.generate(req).images[0]


def test_ip_adapter_equals_diffusers_and_unloads_exactly(engine, tiny_folder, tiny_ip_adapter, guides):
    from diffusers import FluxPipeline

    path, encoder = tiny_ip_adapter
    base = _gen(engine, tiny_folder.model_path)
    out = _gen(engine, tiny_folder.model_path, [IpAdapterRef(str(path), (guides[0],), 0.8)])
    pipe = FluxPipeline.from_pretrained(tiny_folder.model_path)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_ip_adapter(
        str(path.parent),
        weight_name=path.name,
        image_encoder_pretrained_model_name_or_path=str(encoder),
        image_encoder_dtype=torch.float32,
    )
    pipe.set_ip_adapter_scale(0.8)
    ref = pipe(
        "a portrait",
        ip_adapter_image=guides[0],
        width=128,
        height=128,
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(5),
    ).images[0]
    assert np.abs(out.pixels - ref).max() <= TOL
    assert np.abs(out.pixels - base.pixels).max() > 1e-3
    [rec] = out.recipe.ip_adapters
    assert rec["weight"] == 0.8 and len(rec["guide_sha256"]) == 1
    after = _gen(engine, tiny_folder.model_path)
    assert np.array_equal(after.pixels, base.pixels), "no IP-Adapter requested: the base model, bit for bit"
    zero = _gen(engine, tiny_folder.model_path, [IpAdapterRef(str(path), (guides[0],), 0.0)])
    assert np.abs(zero.pixels - base.pixels).max() <= TOL


def test_several_guide_images_are_averaged(engine, tiny_folder, tiny_ip_adapter, guides):
    path, _ = tiny_ip_adapter
    one = _gen(engine, tiny_folder.model_path, [IpAdapterRef(str(path), (guides[0],))])
    two = _gen(engine, tiny_folder.model_path, [IpAdapterRef(str(path), tuple(guides))])
    again = _gen(engine, tiny_folder.model_path, [IpAdapterRef(str(path), tuple(guides))])
    assert np.abs(one.pixels - two.pixels).max() > 1e-4 and np.array_equal(two.pixels, again.pixels)


def test_ip_adapter_with_img2img_and_true_cfg(engine, tiny_folder, tiny_ip_adapter, guides):
    path, _ = tiny_ip_adapter
    src = Image.fromarray((np.random.RandomState(1).rand(128, 128, 3) * 255).astype("uint8"))
    out = _gen(
        engine,
        tiny_folder.model_path,
        [IpAdapterRef(str(path), (guides[0],))],
        seed_image=src,
        strength=0.6,
        negative_prompt="blurry",
        true_cfg_scale=2.0,
    )
    assert np.isfinite(out.pixels).all()


def test_ip_adapter_errors(engine, tiny_folder, tiny_ip_adapter, guides, tmp_path):
    import shutil

    path, _ = tiny_ip_adapter
    with pytest.raises(RequestError) as e:
        validate(
            GenerationRequest(
                model="m",
                positive_prompt="ab",
                width=128,
                height=128,
                ip_adapters=(IpAdapterRef(str(path), (guides[0],), 5.0),),
            )
        )
    assert e.value.parameter == "ipAdapters.weight" and "[-4, 4]" in e.value.message
    with pytest.raises(RequestError) as e:
        validate(
            GenerationRequest(
                model="m", positive_prompt="ab", width=128, height=128, ip_adapters=(IpAdapterRef(str(path), ()),)
            )
        )
    assert e.value.parameter == "ipAdapters.guideImages"
    lonely = tmp_path / "alone" / "ip.safetensors"
    lonely.parent.mkdir()
    shutil.copy(path, lonely)
    with pytest.raises(ModelLoadError) as e:
        _gen(engine, tiny_folder.model_path, [IpAdapterRef(str(lonely), (guides[0],))])
    assert "image encoder" in e.value.message
    with pytest.raises(RequestError) as e:
        _gen(engine, tiny_folder.model_path, [IpAdapterRef(str(tiny_folder.model_path), (guides[0],))])
    assert "not a FLUX.1 IP-Adapter" in e.value.message


def test_ip_adapter_with_a_controlnet_equals_diffusers(engine, tiny_folder, tiny_ip_adapter, tiny_controlnets, guides):
    from diffusers import FluxControlNetModel, FluxControlNetPipeline

    from daguerre.request import ControlRef

    path, encoder = tiny_ip_adapter
    edge = Image.new("RGB", (128, 128), (0, 0, 0))
    edge.paste((255, 255, 255), (30, 30, 90, 90))
    control = ControlRef(str(tiny_controlnets[0]), edge, weight=0.7)
    out = _gen(engine, tiny_folder.model_path, [IpAdapterRef(str(path), (guides[0],), 0.8)], controlnets=(control,))
    pipe = FluxControlNetPipeline.from_pretrained(
        tiny_folder.model_path, controlnet=FluxControlNetModel.from_pretrained(tiny_controlnets[0])
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.load_ip_adapter(
        str(path.parent),
        weight_name=path.name,
        image_encoder_pretrained_model_name_or_path=str(encoder),
        image_encoder_dtype=torch.float32,
    )
    pipe.set_ip_adapter_scale(0.8)
    ref = pipe(
        "a portrait",
        ip_adapter_image=guides[0],
        control_image=edge,
        controlnet_conditioning_scale=0.7,
        guidance_scale=3.5,  # this pipeline's own default is 7
        width=128,
        height=128,
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(5),
    ).images[0]
    assert np.abs(out.pixels - ref).max() <= TOL
    assert np.abs(out.pixels - _gen(engine, tiny_folder.model_path, controlnets=(control,)).pixels).max() > 1e-3


def test_ip_adapter_with_kontext(engine, tiny_kontext, tiny_ip_adapter, guides):
    path, _ = tiny_ip_adapter
    src = Image.new("RGB", (128, 128), (120, 80, 40))
    plain = _gen(engine, tiny_kontext.model_path, seed_image=src)
    out = _gen(engine, tiny_kontext.model_path, [IpAdapterRef(str(path), (guides[1],), 1.0)], seed_image=src)
    assert np.isfinite(out.pixels).all() and np.abs(out.pixels - plain.pixels).max() > 1e-3
    assert out.recipe.ip_adapters[0]["weight"] == 1.0
