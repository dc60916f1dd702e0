"""puLID: the published PuLID-FLUX, EVA02-CLIP and antelopev2 layouts load strictly; the injection equals PuLID's
forward written out by hand; idWeight 0 is the plain run bit for bit; true CFG starts at CFGStartStep; the recipe
reproduces the image from the same reference photo; the task API takes the reference's example."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from daguerre.engine.features import eva, faceid, pulid
from daguerre.errors import ModelLoadError, ModelNotFoundError, RequestError, UnsupportedError
from daguerre.request import GenerationRequest, HiresFix, PuLID, validate
from daguerre.testing.identity import build_identity
from tests.conftest import inference_task

pytest.importorskip("onnxruntime", reason="puLID's face analysis runs on onnxruntime (the `safety` extra)")


@pytest.fixture(scope="module")
def id_files(tmp_path_factory, tiny_folder):
    return build_identity(tmp_path_factory.mktemp("identity"), tiny_folder.model_path)


@pytest.fixture(scope="module")
def id_engine(settings_factory, tiny_folder, id_files):
    from daguerre.services import build_engine

    models = {"tiny": {"id": "daguerre:tiny@1", "path": str(tiny_folder.model_path)},
              **{k: {"path": str(v)} for k, v in id_files.items()}}  # fmt: skip
    return build_engine(settings_factory(models=models))


def _face(seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(160, 128, 3) * 255).astype("uint8"))


def _request(**kw):
    return GenerationRequest(model="tiny", positive_prompt="portrait of a man, window light, 85mm", width=128,
                             height=128, steps=4, seed=5, **kw)  # fmt: skip


def test_the_published_layouts_load_strictly(tmp_path, id_files):
    from safetensors.torch import load_file, save_file

    w = pulid.load(id_files["pulid"])
    assert len(w.cas) == 2 and w.arc_dim == 64
    sd = load_file(str(id_files["pulid"]))
    assert any(k.startswith("pulid_ca.1.to_kv") for k in sd) and "pulid_encoder.mapping_4.6.weight" in sd
    save_file({k: v for k, v in sd.items() if k != "pulid_ca.0.norm1.weight"}, str(tmp_path / "pulid_a.safetensors"))
    with pytest.raises(ModelLoadError, match="norm1"):
        pulid.load(tmp_path / "pulid_a.safetensors")
    save_file({**sd, "pulid_encoder.extra": torch.zeros(1)}, str(tmp_path / "pulid_b.safetensors"))
    with pytest.raises(ModelLoadError, match="extra"):
        pulid.load(tmp_path / "pulid_b.safetensors")
    # EVA: BAAI's names (the file PuLID uses) and timm's give the same tower; rotary tables are recomputed.
    tower = eva.load(id_files["evaclip"])
    torch.save(tower.state_dict(), tmp_path / "eva_timm.pth")
    again = eva.load(tmp_path / "eva_timm.pth")
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        (a, ha), (b, hb) = tower(x), again(x)
    assert torch.equal(a, b) and len(ha) == 5 and all(torch.equal(p, q) for p, q in zip(ha, hb, strict=True))
    raw = torch.load(id_files["evaclip"], weights_only=True)
    torch.save({k: v for k, v in raw.items() if "q_bias" not in k}, tmp_path / "eva_broken.pt")
    with pytest.raises(ModelLoadError, match="q_proj.bias"):
        eva.load(tmp_path / "eva_broken.pt")


def test_scrfd_outputs_decode_to_the_box_and_landmarks_they_encode():
    outs = []
    for stride in faceid.STRIDES:
        n = (640 // stride) ** 2 * faceid.ANCHORS
        outs.append(np.zeros((n, 1), np.float32))
    outs += [np.zeros(((640 // s) ** 2 * faceid.ANCHORS, 4), np.float32) for s in faceid.STRIDES]
    outs += [np.zeros(((640 // s) ** 2 * faceid.ANCHORS, 10), np.float32) for s in faceid.STRIDES]
    # One confident anchor at stride 16, grid cell (x=5, y=3), second anchor: centre (80, 48).
    at = (3 * 40 + 5) * 2 + 1
    outs[1][at] = 0.9
    outs[4][at] = [2, 1, 3, 4]  # distances in strides: left 32, top 16, right 48, bottom 64
    outs[7][at] = np.arange(10) / 10
    [(box, score, kps)] = faceid.decode_scrfd(outs, 640)
    assert np.allclose(box, [48, 32, 128, 112]) and score == pytest.approx(0.9)
    assert np.allclose(kps[0], [80, 48 + 0.1 * 16]) and np.allclose(kps[4], [80 + 0.8 * 16, 48 + 0.9 * 16])


def _transformer(engine):
    with engine.models.lease("tiny") as model:
        return model.pipe.transformer


def test_the_injection_equals_pulids_forward_by_hand(id_engine, id_files):
    t = _transformer(id_engine)
    weights = pulid.load(id_files["pulid"])
    g = torch.Generator().manual_seed(0)
    ident = torch.randn(1, 4, 32, generator=g)
    kwargs = dict(hidden_states=torch.randn(2, 64, 64, generator=g),
                  encoder_hidden_states=torch.randn(2, 8, 32, generator=g),
                  pooled_projections=torch.randn(2, 32, generator=g), timestep=torch.full((2,), 0.7),
                  guidance=torch.full((2,), 3.5), txt_ids=torch.zeros(8, 3),
                  img_ids=torch.rand(64, 3, generator=g) * 8)  # fmt: skip
    with torch.inference_mode():
        plain = t(**kwargs, return_dict=False)[0]
        with pulid.Injection(t, weights.cas, cond=ident, uncond=ident * 0, weight=1.3):
            injected = t(**kwargs, return_dict=False)[0]
        by_hand = pulid.reference(t, weights.cas, ident, 1.3, **kwargs)
        after = t(**kwargs, return_dict=False)[0]
    assert torch.allclose(injected, by_hand, atol=1e-5)
    assert (injected - plain).abs().max() > 1e-3
    assert torch.equal(after, plain)  # uninstalled: the transformer is as before


def test_id_weight_zero_is_the_plain_run_and_the_identity_changes_the_image(id_engine):
    plain = id_engine.generate(_request()).images[0]
    zero = id_engine.generate(_request(pulid=PuLID(images=(_face(),), id_weight=0.0))).images[0]
    assert np.array_equal(zero.pixels, plain.pixels)
    one = id_engine.generate(_request(pulid=PuLID(images=(_face(),), id_weight=1.0))).images[0]
    assert np.abs(one.pixels - plain.pixels).max() > 1e-3
    other = id_engine.generate(_request(pulid=PuLID(images=(_face(7),), id_weight=1.0))).images[0]
    assert np.abs(other.pixels - one.pixels).max() > 1e-4  # another face, another identity
    rec = one.recipe.pulid
    assert rec["id_weight"] == 1.0 and len(rec["images_sha256"][0]) == 64 and len(rec["pulid_sha256"]) == 64
    assert rec["pulid"] == id_engine.models.catalog.get(rec["pulid"]).id and len(rec["face_boxes"]) == 1
    assert rec["parsing"] == id_engine.models.catalog.get(rec["parsing"]).id  # the face parser was used


def test_true_cfg_starts_at_cfg_start_step_with_the_zero_identity(id_engine):
    t = _transformer(id_engine)
    calls = []
    handle = t.transformer_blocks[0].register_forward_pre_hook(lambda m, a, kw: calls.append(1), with_kwargs=True)
    try:
        req = _request(negative_prompt="blurry", pulid=PuLID(images=(_face(),), true_cfg_scale=2.0, cfg_start_step=2))
        late = id_engine.generate(req).images[0]
        n_late = len(calls)
        calls.clear()
        req = _request(negative_prompt="blurry", pulid=PuLID(images=(_face(),), true_cfg_scale=2.0))
        early = id_engine.generate(req).images[0]
        n_early = len(calls)
    finally:
        handle.remove()
    assert (n_late, n_early) == (4 + 2, 4 + 4)  # the negative pass runs from step 2 on, or on every step
    assert np.abs(late.pixels - early.pixels).max() > 1e-4
    assert late.recipe.true_cfg_scale == 2.0 and late.recipe.pulid["cfg_start_step"] == 2


def test_the_recipe_reproduces_from_the_same_reference_photo(id_engine):
    from daguerre.recipe import Recipe, to_request

    face = _face(3)
    im = id_engine.generate(_request(pulid=PuLID(images=(face,), id_weight=0.8))).images[0]
    recipe = Recipe.from_json(im.recipe.to_json())
    again = id_engine.generate(to_request(recipe, id_images=[face])).images[0]
    assert again.encode() == im.encode()
    with pytest.raises(RequestError) as e:
        to_request(recipe, id_images=[_face(4)])
    assert e.value.parameter == "puLID.images"


@pytest.mark.parametrize(
    ("fields", "error", "parameter"),
    [
        ({"pulid": PuLID(images=())}, RequestError, "puLID.images"),
        ({"pulid": PuLID(images=(None,), id_weight=3.5)}, RequestError, "puLID.idWeight"),
        ({"pulid": PuLID(images=(None,), cfg_start_step=1, cfg_start_percentage=10)}, RequestError,
         "puLID.CFGStartStepPercentage"),
        ({"pulid": PuLID(images=(None,)), "hires_fix": HiresFix(model="latent")}, UnsupportedError, "puLID"),
    ],
)  # fmt: skip
def test_bad_pulid_requests_name_the_field(fields, error, parameter):
    with pytest.raises(error) as e:
        validate(_request(**fields))
    assert e.value.parameter == parameter


def test_the_task_api_takes_the_reference_example(make_server, id_files):
    buf = io.BytesIO()
    _face().save(buf, "PNG")
    photo = base64.b64encode(buf.getvalue()).decode()
    with make_server(extra_models={k: {"path": str(v)} for k, v in id_files.items()}) as s:
        example = {"images": [photo], "idWeight": 1, "trueCFGScale": 1.5, "CFGStartStep": 3}
        task = inference_task(steps=4, outputType="base64Data", puLID=example)
        r = httpx.post(s.url, json=[task], timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["data"][0]["imageBase64Data"]
        for bad, parameter in (({"idWeight": 4}, "puLID.idWeight"), ({"CFGStartStep": 4}, "puLID.CFGStartStep"),
                               ({"images": []}, "puLID.images"), ({"colour": 1}, "puLID.colour")):  # fmt: skip
            body = inference_task(steps=4, puLID={"images": [photo], **bad})
            r = httpx.post(s.url, json=[body], timeout=60)
            assert r.status_code == 400 and r.json()["errors"][0]["parameter"] == parameter, r.text


def test_a_server_without_the_files_says_which_is_missing(id_engine, settings_factory, tiny_folder):
    from daguerre.services import build_engine

    bare = build_engine(
        settings_factory(models={"tiny": {"id": "daguerre:tiny@1", "path": str(tiny_folder.model_path)}})
    )
    with pytest.raises(ModelNotFoundError, match="PuLID-FLUX"):
        bare.generate(_request(pulid=PuLID(images=(_face(),))))


def test_the_cli_id_image_generates_and_reproduces(tiny_folder, tmp_path, monkeypatch, id_files):
    from pathlib import Path

    from typer.testing import CliRunner

    from daguerre.cli import app

    monkeypatch.setenv("DAGUERRE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DAGUERRE_DISCOVER", "false")
    cfg = tmp_path / "daguerre.toml"
    cfg.write_text("".join(f'[models.{k}]\npath = "{v}"\n' for k, v in id_files.items()))
    _face(2).save(tmp_path / "me.png")
    base = ["generate", "portrait of a man", "--model", str(tiny_folder.model_path), "-W", "128", "-H", "128",
            "--steps", "2", "--config", str(cfg), "-o", str(tmp_path / "out"), "-q"]  # fmt: skip
    out = CliRunner().invoke(app, [*base, "--id-image", str(tmp_path / "me.png"), "--id-weight", "1.5"])
    assert out.exit_code == 0, out.output
    path = Path(out.stdout.split("\t")[0])
    again = CliRunner().invoke(app, ["reproduce", str(path), "--id-image", str(tmp_path / "me.png"), "--config",
                                     str(cfg), "-o", str(tmp_path / "out")])  # fmt: skip
    assert again.exit_code == 0 and "identical" in again.stdout, again.output
    missing = CliRunner().invoke(app, ["reproduce", str(path), "--config", str(cfg), "-o", str(tmp_path / "out")])
    assert missing.exit_code == 2 and "--id-image" in missing.stderr, missing.output
    bad = CliRunner().invoke(app, [*base, "--id-weight", "1"])
    assert bad.exit_code == 2 and "--id-image" in bad.stderr


def test_face_parsing_whitens_all_but_the_face(id_files, tmp_path):
    from daguerre.engine.features import faceparse

    parser = faceparse.load(id_files["faceparsing"])
    g = torch.Generator().manual_seed(1)
    face, grey = torch.rand(1, 3, 64, 64, generator=g), torch.rand(1, 3, 64, 64, generator=g)
    with torch.no_grad():
        labels = parser(
            (face - torch.tensor(faceparse.MEAN)[:, None, None]) / torch.tensor(faceparse.STD)[:, None, None]
        )
        out = faceparse.face_only(parser, face, grey)
    background = torch.isin(labels.argmax(1, keepdim=True), torch.tensor(faceparse.BACKGROUND)).expand_as(grey)
    assert 0 < background.float().mean() < 1  # the tiny parser sees both
    assert torch.equal(out[background], torch.ones_like(out[background])) and torch.equal(
        out[~background], grey[~background]
    )
    sd = torch.load(id_files["faceparsing"], weights_only=True)
    assert "cp.arm16.conv_atten.weight" in sd and "ffm.convblk.conv.weight" in sd and "conv_out32.conv_out.weight" in sd
    torch.save({k: v for k, v in sd.items() if "arm32" not in k}, tmp_path / "parsing_broken.pth")
    with pytest.raises(ModelLoadError, match="arm32"):
        faceparse.load(tmp_path / "parsing_broken.pth")
