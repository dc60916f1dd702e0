"""Single-file checkpoints: BFL <-> diffusers layout, ComfyUI prefixes, fp8, and clear errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from daguerre.engine.models import checkpoints, loading
from daguerre.errors import ModelLoadError, UnsupportedError


@pytest.fixture(scope="module")
def diffusers_sd(tiny_folder):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel.from_pretrained(tiny_folder.model_path, subfolder="transformer").state_dict()


def test_bfl_round_trip_is_exact(diffusers_sd):
    bfl = checkpoints.diffusers_to_bfl(diffusers_sd)
    assert "double_blocks.0.img_attn.qkv.weight" in bfl and "single_blocks.1.linear1.weight" in bfl
    back = checkpoints.bfl_to_diffusers(bfl)
    assert set(back) == set(diffusers_sd)
    assert all(torch.equal(back[k], diffusers_sd[k]) for k in back)


def test_single_file_loads_to_the_folder_weights(tiny_single, diffusers_sd):
    sd, config = loading.load_transformer_state_dict(tiny_single.model_path, torch.float32)
    assert all(torch.equal(sd[k], diffusers_sd[k]) for k in diffusers_sd)
    assert config["num_layers"] == 1 and config["num_single_layers"] == 2 and config["guidance_embeds"]
    assert config["attention_head_dim"] == 16 and config["num_attention_heads"] == 2


def test_inspect_reports_kind_layout_dtype(tiny_single):
    info = checkpoints.inspect(tiny_single.model_path)
    assert (info.layout, info.kind, info.dtype) == ("bfl", "dev", "F32")


def test_comfyui_prefixed_all_in_one_file(tiny_single, diffusers_sd, tmp_path):
    """ComfyUI checkpoints prefix the transformer and bundle other parts, which we skip."""
    sd = load_file(tiny_single.model_path)
    prefixed = {checkpoints.COMFY_PREFIX + k: v for k, v in sd.items()}
    prefixed["vae.decoder.conv_in.weight"] = torch.zeros(2)
    prefixed["text_encoders.clip_l.x"] = torch.zeros(2)
    path = tmp_path / "comfy.safetensors"
    save_file(prefixed, path)
    assert checkpoints.inspect(path).kind == "dev"
    out, _ = loading.load_transformer_state_dict(path, torch.float32)
    assert all(torch.equal(out[k], diffusers_sd[k]) for k in diffusers_sd)


def test_diffusers_layout_single_file(diffusers_sd, tmp_path):
    path = tmp_path / "flat.safetensors"
    save_file({k: v.contiguous() for k, v in diffusers_sd.items()}, path)
    assert checkpoints.inspect(path).layout == "diffusers"
    out, _ = loading.load_transformer_state_dict(path, torch.float32)
    assert all(torch.equal(out[k], diffusers_sd[k]) for k in diffusers_sd)


def test_fp8_file_is_upcast_to_the_run_dtype(tiny_single, diffusers_sd, tmp_path):
    bfl = load_file(tiny_single.model_path)
    path = tmp_path / "fp8.safetensors"
    save_file({k: v.to(torch.float8_e4m3fn) for k, v in bfl.items()}, path)
    assert checkpoints.inspect(path).dtype == "F8_E4M3"
    out, _ = loading.load_transformer_state_dict(path, torch.bfloat16)
    for k, v in diffusers_sd.items():
        assert out[k].dtype == torch.bfloat16
        assert torch.equal(out[k], v.to(torch.float8_e4m3fn).to(torch.bfloat16)), k


def test_scaled_fp8_file_multiplies_by_scale_weight(tiny_single, tmp_path):
    bfl = load_file(tiny_single.model_path)
    key = "double_blocks.0.img_attn.proj.weight"
    scaled = {k: v.to(torch.float8_e4m3fn) for k, v in bfl.items()}
    scaled[key] = (bfl[key] / 0.5).to(torch.float8_e4m3fn)
    scaled[key.replace("weight", "scale_weight")] = torch.tensor(0.5)
    scaled["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    path = tmp_path / "scaled.safetensors"
    save_file(scaled, path)
    out, _ = loading.load_transformer_state_dict(path, torch.float32)
    want = (bfl[key] / 0.5).to(torch.float8_e4m3fn).float() * 0.5
    assert torch.equal(out["transformer_blocks.0.attn.to_out.0.weight"], want)


def test_tiny_builder_fp8_single_file(tmp_path):
    from daguerre.testing.tiny import build

    spec = build(tmp_path, layout="single-file", fp8=True)
    assert checkpoints.inspect(spec.model_path).dtype == "F8_E4M3"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("model.ckpt", b"pickle", "pickle checkpoints are not loaded"),
        ("model.safetensors", b"\x01\x00", "not a readable .safetensors"),
        ("model.safetensors", b"\xff" * 8 + b"{}", "not a readable .safetensors"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ModelLoadError) as e:
        checkpoints.inspect(path)
    assert message in e.value.message and str(path) in e.value.message


def test_non_flux_safetensors_is_named_and_explained(tmp_path):
    path = tmp_path / "sdxl.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, path)
    with pytest.raises(ModelLoadError) as e:
        checkpoints.inspect(path)
    assert "not a FLUX.1 transformer" in e.value.message and "double_blocks" in e.value.message


def test_flux2_is_unsupported(tmp_path):
    flux2 = tmp_path / "flux2.safetensors"
    save_file(
        {
            "double_blocks.0.x": torch.zeros(1),
            "img_in.weight": torch.zeros(2, 64),
            "single_stream_modulation.lin.weight": torch.zeros(1),
        },
        flux2,
    )
    with pytest.raises(UnsupportedError) as e:
        checkpoints.inspect(flux2)
    assert "FLUX.2" in e.value.message


def test_kind_from_input_width(tmp_path):
    for width, guidance, kind in (
        (64, True, "dev"),
        (64, False, "schnell"),
        (384, True, "fill"),
        (128, True, "control"),
    ):
        sd = {"double_blocks.0.img_attn.norm.key_norm.scale": torch.zeros(1), "img_in.weight": torch.zeros(4, width)}
        if guidance:
            sd["guidance_in.in_layer.weight"] = torch.zeros(1)
        path = tmp_path / f"{kind}.safetensors"
        save_file(sd, path)
        assert checkpoints.inspect(path).kind == kind
