"""Tiny random LoRA files for a tiny FLUX.1 model, in each supported format, plus the merge they mean.

`build_lora(path, model_folder, fmt)` writes a file; `merged_state_dict(model_folder, [(path, fmt, weight)])`
returns the transformer weights with each LoRA's low-rank update added by hand (in the BFL layout
for fused layers, so the split the loader does is checked, not assumed). A pipeline on the merged
weights is the reference a LoRA-carrying generation must equal.
"""

from __future__ import annotations

from pathlib import Path

import torch

from daguerre.engine.models.checkpoints import bfl_to_diffusers, diffusers_to_bfl

# Layers each format's test file touches: fused ones (qkv, linear1) and the swapped final modulation.
KOHYA_LAYERS = ("double_blocks.0.img_attn.qkv", "double_blocks.0.txt_attn.proj", "single_blocks.0.linear1",
                "single_blocks.1.linear2", "final_layer.adaLN_modulation.1")  # fmt: skip
XLABS_LAYERS = {"qkv_lora1": "img_attn.qkv", "proj_lora2": "txt_attn.proj"}
PEFT_MODULES = ("transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.proj_out", "proj_out")
# CLIP text-encoder layers a kohya file with `text_encoder=True` also trains (lora_te1_*).
CLIP_LAYERS = ("encoder.layers.0.self_attn.q_proj", "encoder.layers.0.mlp.fc1")  # kohya: lora_te1_text_model_*


def _clip_sd(model_folder: Path) -> dict[str, torch.Tensor]:
    from transformers import CLIPTextModel

    return CLIPTextModel.from_pretrained(model_folder, subfolder="text_encoder").state_dict()


def _transformer_sd(model_folder: Path) -> dict[str, torch.Tensor]:
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel.from_pretrained(model_folder, subfolder="transformer").state_dict()


def build_lora(
    path: Path,
    model_folder: Path,
    fmt: str,
    *,
    seed: int = 0,
    rank: int = 4,
    scale: float = 0.2,
    alpha: float = 2.0,
    text_encoder: bool = False,
) -> Path:
    """Write a random LoRA for the model in `model_folder` in format peft | kohya | xlabs
    (kohya with text_encoder=True: also CLIP text-encoder layers, `lora_te1_*`)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    sd = _transformer_sd(model_folder)
    bfl = diffusers_to_bfl(dict(sd))

    def pair(out_f: int, in_f: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.randn(rank, in_f, generator=g) * scale, torch.randn(out_f, rank, generator=g) * scale)

    out: dict[str, torch.Tensor] = {}
    if fmt == "peft":
        for m in PEFT_MODULES:
            a, b = pair(*sd[m + ".weight"].shape)
            out[f"transformer.{m}.lora_A.weight"], out[f"transformer.{m}.lora_B.weight"] = a, b
    elif fmt == "kohya":
        for name in KOHYA_LAYERS:
            down, up = pair(*bfl[name + ".weight"].shape)
            stem = "lora_unet_" + name.replace(".", "_")
            out[stem + ".lora_down.weight"], out[stem + ".lora_up.weight"] = down, up
            out[stem + ".alpha"] = torch.tensor(alpha)
        clip = _clip_sd(model_folder) if text_encoder else {}
        for name in CLIP_LAYERS if text_encoder else ():
            down, up = pair(*clip[name + ".weight"].shape)
            stem = "lora_te1_text_model_" + name.replace(".", "_")
            out[stem + ".lora_down.weight"], out[stem + ".lora_up.weight"] = down * 4, up * 4
            out[stem + ".alpha"] = torch.tensor(alpha)
    elif fmt == "xlabs":
        for layer, name in XLABS_LAYERS.items():
            down, up = pair(*bfl[f"double_blocks.0.{name}.weight"].shape)
            out[f"double_blocks.0.processor.{layer}.down.weight"] = down
            out[f"double_blocks.0.processor.{layer}.up.weight"] = up
    else:
        raise ValueError(f"unknown LoRA format {fmt!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, str(path))
    return path


def merged_state_dict(model_folder: Path, loras: list[tuple[Path, str, float]]) -> dict[str, torch.Tensor]:
    """The transformer weights with each (file, format, weight) LoRA merged in: W += weight * scale * up @ down."""
    from safetensors.torch import load_file

    sd = _transformer_sd(model_folder)
    for path, fmt, weight in loras:
        lora = load_file(str(path))
        if fmt == "peft":
            for m in PEFT_MODULES:
                a, b = lora[f"transformer.{m}.lora_A.weight"], lora[f"transformer.{m}.lora_B.weight"]
                sd[m + ".weight"] = sd[m + ".weight"] + weight * (b @ a)
            continue
        bfl = diffusers_to_bfl(dict(sd))
        if fmt == "kohya":
            for name in KOHYA_LAYERS:
                stem = "lora_unet_" + name.replace(".", "_")
                down, up = lora[stem + ".lora_down.weight"], lora[stem + ".lora_up.weight"]
                k = float(lora[stem + ".alpha"]) / down.shape[0]
                bfl[name + ".weight"] = bfl[name + ".weight"] + weight * k * (up @ down)
        else:
            for layer, name in XLABS_LAYERS.items():
                down = lora[f"double_blocks.0.processor.{layer}.down.weight"]
                up = lora[f"double_blocks.0.processor.{layer}.up.weight"]
                key = f"double_blocks.0.{name}.weight"
                bfl[key] = bfl[key] + weight * (up @ down)
        sd = bfl_to_diffusers(bfl)
    return sd


CONTROL_LAYERS = ("img_in", "double_blocks.0.img_attn.qkv", "single_blocks.0.linear2")
CONTROL_NORMS = ("double_blocks.0.img_attn.norm.query_norm.scale", "single_blocks.1.norm.key_norm.scale")


def build_control_lora(path: Path, model_folder: Path, *, seed: int = 0, rank: int = 4, scale: float = 0.2) -> Path:
    """A tiny BFL-format control LoRA (like FLUX.1-Canny-dev-lora): it widens `img_in` to 128 inputs
    (latents + control-image latents), has `lora_B.bias` terms and replaces two norm scales."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    bfl = diffusers_to_bfl(dict(_transformer_sd(model_folder)))
    out: dict[str, torch.Tensor] = {}
    for name in CONTROL_LAYERS:
        out_f, in_f = bfl[name + ".weight"].shape
        in_f = 2 * in_f if name == "img_in" else in_f
        out[name + ".lora_A.weight"] = torch.randn(rank, in_f, generator=g) * scale
        out[name + ".lora_B.weight"] = torch.randn(out_f, rank, generator=g) * scale
        out[name + ".lora_B.bias"] = torch.randn(out_f, generator=g) * scale
    for name in CONTROL_NORMS:
        out[name] = 1 + torch.randn(bfl[name].shape, generator=g) * 0.1
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, str(path))
    return path


def merged_control_state_dict(model_folder: Path, path: Path, weight: float) -> dict[str, torch.Tensor]:
    """Transformer weights with a control LoRA merged in: img_in zero-padded to the wider input, then
    W += weight * up @ down and b += weight * up_bias; norm scales replaced. Load it into a transformer
    with in_channels = 2x the base's."""
    from safetensors.torch import load_file

    lora = load_file(str(path))
    bfl = diffusers_to_bfl(dict(_transformer_sd(model_folder)))
    w = bfl["img_in.weight"]
    bfl["img_in.weight"] = torch.cat([w, torch.zeros_like(w)], dim=1)
    for name in CONTROL_LAYERS:
        a, b = lora[name + ".lora_A.weight"], lora[name + ".lora_B.weight"]
        bfl[name + ".weight"] = bfl[name + ".weight"] + weight * (b @ a)
        bfl[name + ".bias"] = bfl[name + ".bias"] + weight * lora[name + ".lora_B.bias"]
    for name in CONTROL_NORMS:
        bfl[name] = lora[name]
    return bfl_to_diffusers(bfl)


def merged_clip_state_dict(model_folder: Path, path: Path, weight: float) -> dict[str, torch.Tensor]:
    """The CLIP text encoder's weights with a kohya file's `lora_te1_*` layers merged in."""
    from safetensors.torch import load_file

    lora = load_file(str(path))
    sd = _clip_sd(model_folder)
    for name in CLIP_LAYERS:
        stem = "lora_te1_text_model_" + name.replace(".", "_")
        down, up = lora[stem + ".lora_down.weight"], lora[stem + ".lora_up.weight"]
        k = float(lora[stem + ".alpha"]) / down.shape[0]
        sd[name + ".weight"] = sd[name + ".weight"] + weight * k * (up @ down)
    return sd
