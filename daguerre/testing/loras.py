"""Tiny random LoRA files for a tiny FLUX.1 model, in each supported format, plus the merge they mean.

`build_lora(path, model_folder, fmt)` writes a file; `merged_state_dict(model_folder, [(path, fmt, weight)])`
returns the transformer weights with each LoRA's low-rank update added by hand (in the BFL layout
for fused layers, so the split the loader does is checked, not assumed). A pipeline on the merged
weights is the reference a LoRA-carrying generation must equal.
"""

from __future__ import annotations

from pathlib import Path

import torch

from daguerre.engine.checkpoints import bfl_to_diffusers, diffusers_to_bfl

# Layers each format's test file touches: fused ones (qkv, linear1) and the swapped final modulation.
KOHYA_LAYERS = ("double_blocks.0.img_attn.qkv", "double_blocks.0.txt_attn.proj", "single_blocks.0.linear1",
                "single_blocks.1.linear2", "final_layer.adaLN_modulation.1")  # fmt: skip
XLABS_LAYERS = {"qkv_lora1": "img_attn.qkv", "proj_lora2": "txt_attn.proj"}
PEFT_MODULES = ("transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.proj_out", "proj_out")


def _transformer_sd(model_folder: Path) -> dict[str, torch.Tensor]:
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel.from_pretrained(model_folder, subfolder="transformer").state_dict()


def build_lora(
    path: Path, model_folder: Path, fmt: str, *, seed: int = 0, rank: int = 4, scale: float = 0.2, alpha: float = 2.0
) -> Path:
    """Write a random LoRA for the model in `model_folder` in format peft | kohya | xlabs."""
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
