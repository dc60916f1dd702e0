"""hiresFix: the two passes equal diffusers' own pipelines run by hand with the same seeds, upscalers of both key
layouts load through spandrel and resolve by the reference's ids, tiles blend without a grid, and the API and
CLI give images of the requested size whose recipe reproduces them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from daguerre.engine.features import hires
from daguerre.errors import RequestError, UnsupportedError
from daguerre.request import GenerationRequest, HiresFix, validate
from daguerre.testing.tiny import build_upscaler
from tests.conftest import inference_task


@pytest.fixture(scope="module")
def upscaler_file(tmp_path_factory):
    return build_upscaler(tmp_path_factory.mktemp("up") / "RealESRGAN_x4plus.pth")


@pytest.fixture(scope="module")
def hires_engine(settings_factory, tiny_folder, upscaler_file):
    from daguerre.services import build_engine

    settings = settings_factory(models={"tiny": {"id": "daguerre:tiny@1", "path": str(tiny_folder.model_path)},
                                        "esrgan": {"path": str(upscaler_file), "kind": "upscaler"}})  # fmt: skip
    return build_engine(settings)


def _request(**kw):
    return GenerationRequest(model="tiny", positive_prompt="portrait of a woman, window light", width=256, height=192,
                             steps=3, seed=21, **kw)  # fmt: skip


def test_hires_equals_diffusers_first_pass_upscale_and_img2img(hires_engine, reference_pipes):
    """Image i: FluxPipeline at half size (seed + i) -> the upscaler -> FluxImg2ImgPipeline at the final size
    (a fresh generator seed + i), by hand, equals the engine's hiresFix."""
    req = _request(number_results=2, hires_fix=HiresFix(model="runware:504@1", steps=4, strength=0.5))
    ours = hires_engine.generate(req).images
    up = hires_engine.upscalers.get(hires_engine.models.catalog.get("runware:504@1").path)
    for im in ours:
        first = reference_pipes["txt2img"](prompt=req.positive_prompt, width=128, height=96, num_inference_steps=3,
                                           guidance_scale=3.5, output_type="np",
                                           generator=torch.Generator("cpu").manual_seed(im.seed)).images  # fmt: skip
        big = hires.upscale(up, first[0], (256, 192))[None]
        ref = reference_pipes["img2img"](prompt=req.positive_prompt, image=big, width=256, height=192, strength=0.5,
                                         num_inference_steps=4, guidance_scale=3.5, output_type="np",
                                         generator=torch.Generator("cpu").manual_seed(im.seed)).images[0]  # fmt: skip
        assert im.image.size == (256, 192)
        assert np.abs(im.pixels - ref).max() < 2e-3
    assert ours[0].recipe.hires_fix == {"upscaler": "local:esrgan@1", "sha256": ours[0].recipe.hires_fix["sha256"],
                                        "scale": 4, "first_width": 128, "first_height": 96, "steps": 4,
                                        "strength": 0.5}  # fmt: skip


def test_latent_upscale_equals_diffusers_with_latents_as_the_image(hires_engine, reference_pipes):
    req = _request(hires_fix=HiresFix(model="latent", steps=2))
    [im] = hires_engine.generate(req).images
    pipe = reference_pipes["txt2img"]
    lat = pipe(prompt=req.positive_prompt, width=128, height=96, num_inference_steps=3, guidance_scale=3.5,
               output_type="latent", generator=torch.Generator("cpu").manual_seed(21)).images  # fmt: skip
    big = hires.latent_upscale(pipe, lat, (128, 96), (256, 192))
    ref = reference_pipes["img2img"](prompt=req.positive_prompt, image=big, width=256, height=192, strength=0.6,
                                     num_inference_steps=2, guidance_scale=3.5, output_type="np",
                                     generator=torch.Generator("cpu").manual_seed(21)).images[0]  # fmt: skip
    assert np.abs(im.pixels - ref).max() < 2e-3
    assert im.recipe.hires_fix["upscaler"] == "latent" and im.recipe.hires_fix["strength"] == 0.6  # the default


def test_hires_true_uses_the_configured_default_else_latent(hires_engine):
    [im] = hires_engine.generate(_request(hires_fix=HiresFix(steps=1))).images
    assert im.recipe.hires_fix["upscaler"] == "latent"
    hires_engine.upscaler = "esrgan"
    try:
        [im] = hires_engine.generate(_request(hires_fix=HiresFix(steps=1))).images
    finally:
        hires_engine.upscaler = None
    assert im.recipe.hires_fix["upscaler"] == "local:esrgan@1" and im.recipe.hires_fix["steps"] == 1


@pytest.mark.parametrize(("layout", "suffix"), [("basicsr", ".pth"), ("esrgan", ".safetensors"),
                                                ("basicsr", ".safetensors"), ("esrgan", ".pth")])  # fmt: skip
def test_both_key_layouts_load_through_spandrel(tmp_path, layout, suffix):
    model = hires.load_upscaler(build_upscaler(tmp_path / f"x{suffix}", scale=2, layout=layout), torch.device("cpu"))
    assert model.scale == 2
    out = hires.upscale(model, np.random.default_rng(0).random((40, 56, 3), dtype=np.float32), (112, 80))
    assert out.shape == (80, 112, 3) and out.std() > 0


def test_the_built_in_reader_equals_spandrel(tmp_path):
    """Where spandrel imports (the `upscale` extra with a working torchvision), it and the built-in ESRGAN reader
    give the same pixels for the same file."""
    try:
        import spandrel
    except Exception:  # noqa: BLE001 - absent, or present without a working torchvision
        pytest.skip("spandrel (the `upscale` extra) does not import here")
    from daguerre.engine.features import esrgan

    for layout in ("basicsr", "esrgan"):
        path = build_upscaler(tmp_path / f"{layout}.pth", layout=layout)
        x = torch.rand(1, 3, 24, 32)
        theirs = spandrel.ModelLoader().load_from_file(str(path))
        assert torch.allclose(theirs(x), esrgan.load(path, torch.device("cpu"))(x), atol=1e-5)


def test_tiles_blend_without_a_grid_and_halve_on_out_of_memory(upscaler_file):
    model = hires.load_upscaler(upscaler_file, torch.device("cpu"))
    x = np.random.default_rng(1).random((150, 200, 3), dtype=np.float32)
    whole = hires.upscale(model, x, (800, 600), tile=1024)
    tiled = hires.upscale(model, x, (800, 600), tile=64, overlap=16)
    assert np.abs(whole - tiled).max() < 5e-3 and np.abs(whole - tiled).mean() < 1e-4  # no seam, no grid
    calls = []
    real = model.model.forward

    def small_only(t):
        calls.append(t.shape[-1])
        if t.shape[-1] > 64:
            raise torch.OutOfMemoryError("too big")
        return real(t)

    model.model.forward = small_only
    try:
        halved = hires.upscale(model, x, (800, 600), tile=256, overlap=16)
    finally:
        model.model.forward = real
    assert max(calls) > 64 and calls[-1] <= 64 and np.abs(halved - whole).max() < 5e-3


def test_reference_ids_resolve_by_file_name_in_comfyui_folders(tmp_path, settings_factory):
    from daguerre.engine.models.catalog import Catalog

    folder = tmp_path / "ComfyUI" / "models" / "upscale_models"
    build_upscaler(folder / "4x-UltraSharp.pth", layout="esrgan")
    build_upscaler(folder / "RealESRGAN_x4plus.pth")
    build_upscaler(folder / "my_own_2x.safetensors", scale=2)
    catalog = Catalog.from_settings(settings_factory(discover=True, model_dirs=[tmp_path / "ComfyUI"],
                                                     hf_cache=tmp_path / "none"))  # fmt: skip
    assert catalog.get("runware:esrgan@ultrasharp").kind == "upscaler"
    assert catalog.get("runware:504@1").path.name == "RealESRGAN_x4plus.pth"
    assert catalog.get("upscaler:my_own_2x@1").kind == "upscaler"


def test_bad_hires_requests_name_the_field(hires_engine):
    from PIL import Image

    with pytest.raises(UnsupportedError, match="text-to-image"):
        validate(_request(hires_fix=HiresFix(), seed_image=Image.new("RGB", (256, 192)), strength=0.5))
    with pytest.raises(RequestError) as e:
        validate(_request(hires_fix=HiresFix(strength=0)))
    assert e.value.parameter == "hiresFix.strength"
    with pytest.raises(RequestError) as e:
        validate(_request(hires_fix=HiresFix(steps=99)))
    assert e.value.parameter == "hiresFix.steps"
    with pytest.raises(RequestError, match="not an upscaler") as e:
        hires_engine.generate(_request(hires_fix=HiresFix(model="tiny")))
    assert e.value.parameter == "hiresFix.model"


def test_the_task_api_and_reproduce(make_server, upscaler_file, tmp_path):
    """hiresFix through POST /v1 comes back at the requested size; reproducing the file gives its pixels back."""
    import httpx

    from daguerre import recipe as recipes
    from daguerre.recipe import to_request

    extra = {"esrgan": {"id": "runware:504@1", "path": str(upscaler_file), "kind": "upscaler"}}
    with make_server(extra_models=extra, api_keys=["k1"]) as s:
        h = {"Authorization": "Bearer k1"}
        [item] = httpx.post(s.url, headers=h, timeout=120, json=[inference_task(
            width=256, height=192, hiresFix={"model": "runware:504@1", "steps": 2, "strength": 0.5},
            outputFormat="PNG")]).json()["data"]  # fmt: skip
        data = httpx.get(item["imageURL"]).content
        bad = httpx.post(s.url, headers=h, json=[inference_task(hiresFix={"steps": 2})]).json()["errors"][0]
        assert bad["parameter"] == "hiresFix.model"
        not_up = httpx.post(s.url, headers=h, json=[inference_task(hiresFix={"model": "daguerre:tiny@1"})])
        assert not_up.json()["errors"][0]["parameter"] == "hiresFix.model"
        engine = s.services.engine
    path = tmp_path / "hires.png"
    path.write_bytes(data)
    r = recipes.read(path)
    assert r.hires_fix["upscaler"] == "runware:504@1" and (r.width, r.height) == (256, 192)
    again = engine.generate(replace(to_request(r), number_results=r.batch_size)).images[r.batch_index]
    from PIL import Image

    assert np.array_equal(np.asarray(again.image), np.asarray(Image.open(path).convert("RGB")))


def test_the_cli_hires_fix_flag_with_and_without_a_model(tiny_folder, tmp_path, monkeypatch, upscaler_file):
    from typer.testing import CliRunner

    from daguerre.cli import app

    monkeypatch.setenv("DAGUERRE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DAGUERRE_DISCOVER", "false")
    cfg = tmp_path / "daguerre.toml"
    cfg.write_text(f'[models.up]\npath = "{upscaler_file}"\nkind = "upscaler"\n')
    runner = CliRunner()
    base = ["generate", "a red barn", "--model", str(tiny_folder.model_path), "-W", "256", "-H", "128", "--steps",
            "1", "--config", str(cfg), "-o", str(tmp_path / "out"), "-q"]  # fmt: skip
    for extra in (["--hires-fix", "--hires-steps", "1"], ["--hires-fix", "up", "--hires-strength", "0.4"]):
        out = runner.invoke(app, [*base, *extra])
        assert out.exit_code == 0, out.output
        from daguerre import recipe as recipes

        r = recipes.read(Path(out.stdout.split("\t")[0]))
        assert (r.width, r.height) == (256, 128) and r.hires_fix["first_width"] == 128
    assert r.hires_fix["upscaler"] == "local:up@1" and r.hires_fix["strength"] == 0.4
    bad = runner.invoke(app, [*base, "--hires-steps", "2"])
    assert bad.exit_code == 2 and "--hires-fix" in bad.stderr
