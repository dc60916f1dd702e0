"""layerDiffuse: the LayerDiffuse LoRA plus the transparent VAE give RGBA images whose alpha really varies, whose
opaque pixels are the plain decode, refused as JPG; the published file layout loads strictly (sd_vae.* ignored);
the reference's ids resolve; the recipe reproduces the image; the task API returns a transparent PNG."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from daguerre.engine.features import layerdiffuse
from daguerre.errors import ModelLoadError, RequestError, UnsupportedError
from daguerre.request import GenerationRequest, HiresFix, LayerDiffuse, LoraRef, OutputSpec, validate
from daguerre.testing.tiny import build_layer_diffuse
from tests.conftest import inference_task


@pytest.fixture(scope="module")
def layer_files(tmp_path_factory, tiny_folder):
    return build_layer_diffuse(tmp_path_factory.mktemp("layers"), tiny_folder.model_path)


@pytest.fixture(scope="module")
def layer_engine(settings_factory, tiny_folder, layer_files):
    from daguerre.services import build_engine

    lora, vae = layer_files
    models = {"tiny": {"id": "daguerre:tiny@1", "path": str(tiny_folder.model_path)}, "layerlora": {"path": str(lora)},
              "transparent-vae": {"path": str(vae)}}  # fmt: skip
    settings = settings_factory(models=models)
    return build_engine(settings)


def _request(**kw):
    kw.setdefault("output", OutputSpec("PNG", 95))
    return GenerationRequest(model="tiny", positive_prompt="a glass perfume bottle, studio light", width=128,
                             height=128, steps=3, seed=11, **kw)  # fmt: skip


def test_transparent_png_alpha_varies_and_opaque_pixels_are_the_plain_decode(layer_engine):
    im = layer_engine.generate(_request(layer_diffuse=LayerDiffuse())).images[0]
    assert im.image.mode == "RGBA" and im.alpha is not None
    assert im.alpha.std() > 0.02 and im.alpha.min() < 0.8 and im.alpha.max() == 1.0
    png = Image.open(io.BytesIO(im.encode()))
    assert png.format == "PNG" and png.mode == "RGBA"
    assert np.array_equal(np.asarray(png)[..., 3], np.asarray(im.image)[..., 3])
    # The same run without the transparent VAE: the LayerDiffuse LoRA at weight 1, the model's own decode.
    plain = layer_engine.generate(_request(loras=(LoraRef("runware:120@2", 1.0),))).images[0]
    opaque = im.alpha >= layerdiffuse.OPAQUE
    assert 0 < opaque.mean() < 1
    assert np.abs(im.pixels[opaque] - plain.pixels[opaque]).max() < 1e-5
    assert np.abs(im.pixels[~opaque] - plain.pixels[~opaque]).max() > 1e-3  # the decoder's colour there
    rec = im.recipe.layer_diffuse
    catalog = layer_engine.models.catalog  # the reference's ids name the published files (by file name)
    assert rec["lora"] == catalog.get("runware:120@2").id and rec["vae"] == catalog.get("runware:120@4").id
    assert catalog.get("runware:120@4").kind == "transparentvae" and len(rec["vae_sha256"]) == 64
    assert im.recipe.loras == ()  # the LayerDiffuse LoRA is the feature's, not one the user listed


def test_the_recipe_reproduces_the_transparent_image(layer_engine):
    from daguerre.recipe import Recipe, to_request

    im = layer_engine.generate(_request(layer_diffuse=LayerDiffuse())).images[0]
    again = layer_engine.generate(to_request(Recipe.from_json(im.recipe.to_json()))).images[0]
    assert again.encode() == im.encode()


def test_decoder_median_over_the_eight_views_by_hand(layer_files):
    tvae = layerdiffuse.load(layer_files[1])
    g = torch.Generator().manual_seed(0)
    rgb, z = torch.rand(1, 3, 64, 64, generator=g), torch.randn(1, 16, 8, 8, generator=g)
    views = []
    for flip in (False, True):
        for k in range(4):
            x, lat = (rgb.flip(3), z.flip(3)) if flip else (rgb, z)
            y = torch.rot90(
                tvae.decoder(torch.rot90(x, k, (2, 3)), torch.rot90(lat, k, (2, 3))).clamp(0, 1), -k, (2, 3)
            )
            views.append(y.flip(3) if flip else y)
    with torch.no_grad():
        want = torch.stack(views).median(0).values
    assert torch.allclose(tvae.decode(rgb, z), want, atol=1e-6)
    assert tvae.offset(rgb, rgb[:, :1]).shape == (1, 16, 8, 8)


def test_the_published_layout_loads_strictly(tmp_path, layer_files):
    sd = torch.load(layer_files[1], weights_only=True)
    assert any(k.startswith("sd_vae.") for k in sd)  # present, and ignored
    broken = dict(sd)
    broken.pop("decoder.mid_block.attentions.0.to_q.weight")
    torch.save(broken, tmp_path / "TransparentVAE.pth")
    with pytest.raises(ModelLoadError, match="to_q"):
        layerdiffuse.load(tmp_path / "TransparentVAE.pth")
    torch.save({**sd, "extra.weight": torch.zeros(1)}, tmp_path / "odd.pth")
    with pytest.raises(ModelLoadError, match="extra.weight"):
        layerdiffuse.load(tmp_path / "odd.pth")


@pytest.mark.parametrize(
    ("kw", "parameter"),
    [
        ({"output": OutputSpec("JPG", 95)}, "outputFormat"),
        ({"hires_fix": HiresFix()}, "layerDiffuse"),
        ({"seed_image": Image.new("RGB", (128, 128)), "mask_image": Image.new("L", (128, 128), 255)}, "layerDiffuse"),
    ],
)
def test_refusals_name_the_field(kw, parameter):
    with pytest.raises((RequestError, UnsupportedError)) as e:
        validate(_request(layer_diffuse=LayerDiffuse(), **kw))
    assert e.value.parameter == parameter
    if parameter == "outputFormat":
        assert "alpha" in e.value.message


def test_the_task_api_returns_a_transparent_png(make_server, layer_files):
    lora, vae = layer_files
    extra = {"layerlora": {"path": str(lora)}, "transparent-vae": {"path": str(vae)}}
    with make_server(extra_models=extra) as s:
        task = inference_task(outputFormat="png", outputType="base64Data", advancedFeatures={"layerDiffuse": True})
        r = httpx.post(s.url, json=[task], timeout=60)
        assert r.status_code == 200, r.text
        import base64

        png = Image.open(io.BytesIO(base64.b64decode(r.json()["data"][0]["imageBase64Data"])))
        assert png.mode == "RGBA" and np.asarray(png)[..., 3].min() < 255
        task = inference_task(outputType="base64Data", layerDiffuse=True)  # no outputFormat: PNG, not JPG
        r = httpx.post(s.url, json=[task], timeout=60)
        assert r.status_code == 200, r.text
        assert base64.b64decode(r.json()["data"][0]["imageBase64Data"]).startswith(b"\x89PNG")
        for bad, parameter in (({"outputFormat": "JPG"}, "outputFormat"), ({"layerDiffuse": "yes"}, "layerDiffuse")):
            body = {**inference_task(layerDiffuse=True), **bad}
            r = httpx.post(s.url, json=[body], timeout=60)
            assert r.status_code == 400 and r.json()["errors"][0]["parameter"] == parameter, r.text


def test_img2img_from_an_rgba_source_goes_through_the_offset_encoder(layer_engine):
    from daguerre.config import Settings
    from daguerre.imaging import decode

    rng = np.random.RandomState(3)
    rgba = (rng.rand(128, 128, 4) * 255).astype("uint8")
    rgba[:, :64, 3] = 0  # the left half is transparent
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    source = decode(buf.getvalue(), parameter="seedImage", limits=Settings().image_limits)[0]
    assert source.mode == "RGB" and "rgba" in source.info  # what the API and the CLI hand the engine
    opaque = source.copy()
    opaque.info.pop("rgba", None)
    runs = [layer_engine.generate(_request(layer_diffuse=LayerDiffuse(), seed_image=im, strength=0.5)).images[0]
            for im in (source, opaque)]  # fmt: skip
    assert all(r.image.mode == "RGBA" for r in runs)
    assert np.abs(runs[0].pixels - runs[1].pixels).max() > 1e-3  # the source's alpha changed the latent
    # The latent by hand: VAE posterior of the premultiplied colour, mean + std x (offset encoder x 300).
    with layer_engine.models.lease("tiny") as m:
        tvae = layer_engine.transparent_vaes.get(layer_engine.models.catalog.get("runware:120@4").path)
        got = layerdiffuse.encode(m.pipe, tvae, source, 128, 128)
        rgb = torch.from_numpy(rgba[..., :3].astype(np.float32) / 255.0).permute(2, 0, 1)[None]  # as they were
        a = torch.from_numpy(rgba[..., 3].astype(np.float32) / 255.0)[None, None]
        padded = torch.from_numpy(
            layerdiffuse.pad_rgb(np.concatenate([rgb[0].permute(1, 2, 0).numpy(), a[0].permute(1, 2, 0).numpy()], -1))
        )
        with torch.no_grad():
            dist = m.pipe.vae.encode((rgb * 2 - 1) * a).latent_dist
            off = tvae.encoder(torch.cat([padded.permute(2, 0, 1)[None], a], 1)) * 300
            cfg = m.pipe.vae.config
            want = (dist.mean + dist.std * off - cfg.shift_factor) * cfg.scaling_factor
    assert torch.allclose(got, want, atol=1e-5)


def test_the_cli_transparent_flag_writes_an_rgba_png(tiny_folder, tmp_path, monkeypatch, layer_files):
    from pathlib import Path

    from typer.testing import CliRunner

    from daguerre.cli import app

    monkeypatch.setenv("DAGUERRE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DAGUERRE_DISCOVER", "false")
    cfg = tmp_path / "daguerre.toml"
    cfg.write_text(f'[models.layerlora]\npath = "{layer_files[0]}"\n[models.tvae]\npath = "{layer_files[1]}"\n')
    base = ["generate", "a glass bottle", "--model", str(tiny_folder.model_path), "-W", "128", "-H", "128", "--steps",
            "1", "--config", str(cfg), "-o", str(tmp_path / "out"), "-q", "--transparent"]  # fmt: skip
    out = CliRunner().invoke(app, base)
    assert out.exit_code == 0, out.output
    path = Path(out.stdout.split("\t")[0])
    assert path.suffix == ".png" and Image.open(path).mode == "RGBA"
    bad = CliRunner().invoke(app, [*base, "--format", "JPG"])
    assert bad.exit_code == 2 and "alpha" in bad.stderr
