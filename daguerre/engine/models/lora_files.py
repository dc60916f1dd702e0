"""FLUX.1 LoRA files: format detection and conversion to diffusers/PEFT names, for any model width.

Formats:
  peft    diffusers/PEFT (`transformer.<module>.lora_A.weight` / `lora_B.weight`, optional `.alpha`)
  kohya   sd-scripts / ComfyUI (`lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`, `lora_up`, `alpha`)
  xlabs   XLabs-AI (`double_blocks.0.processor.qkv_lora1.down.weight`, `.up.weight`)
  bfl     BFL module names with PEFT suffixes (`double_blocks.0.img_attn.qkv.lora_A.weight`), as in
          BFL's FLUX.1 Canny/Depth control LoRAs, which also carry `lora_B.bias` terms and full
          query/key norm scales, and widen `img_in` to take the control-image latents
diffusers' own converters for these files assume the full 3072 width, so the fused BFL layers
(qkv, linear1) are split here with widths read from the model. A fused layer's LoRA becomes one
LoRA per split target: the same down matrix, the matching rows of the up matrix (and bias);
kohya's alpha/rank scale is folded into the down matrix. diffusers then widens the input layer
for a control LoRA when it loads it (and restores it on a full unload).
"""

from __future__ import annotations

from pathlib import Path

import torch

from daguerre.engine.models.checkpoints import _DOUBLE, _DOUBLE_NORMS, _SINGLE, _SINGLE_NORMS, _TOP
from daguerre.errors import ModelLoadError, UnsupportedError

FORMATS = ("peft", "kohya", "xlabs", "bfl")
BFL_PREFIX = "diffusion_model."


def detect(sd: dict[str, torch.Tensor], path: Path | str = "LoRA") -> str:
    keys = list(sd)
    bfl_names = ("double_blocks.", "single_blocks.", "img_in.")
    if any(k.removeprefix(BFL_PREFIX).startswith(bfl_names) for k in keys) and any(
        k.endswith("lora_A.weight") for k in keys
    ):
        return "bfl"
    if any(k.endswith(("lora_A.weight", "lora_B.weight")) for k in keys):
        return "peft"
    if any(".lora_down.weight" in k for k in keys):
        if any(k.startswith("lora_te2_") for k in keys):
            raise UnsupportedError(
                f"{path}: T5 (lora_te2) LoRA layers are not supported (diffusers loads CLIP text-encoder "
                "layers only for FLUX.1)",
                parameter="lora",
            )
        return "kohya"
    if any(".processor." in k and (k.endswith(".down.weight") or k.endswith(".up.weight")) for k in keys):
        return "xlabs"
    sample = ", ".join(keys[:3]) or "no tensors"
    raise ModelLoadError(
        f"{path}: not a FLUX.1 LoRA in a known format (diffusers/PEFT, kohya, XLabs); found {sample}", parameter="lora"
    )


def _targets(config) -> dict[str, list[tuple[str, slice | None, bool]]]:
    """BFL module name -> [(diffusers module, rows of the fused output, swap halves)] for this model."""
    inner = config.num_attention_heads * config.attention_head_dim
    out: dict[str, list] = {a: [(b, None, False)] for a, b in _TOP}
    out["final_layer.adaLN_modulation.1"] = [("norm_out.linear", None, True)]
    thirds = [slice(0, inner), slice(inner, 2 * inner), slice(2 * inner, 3 * inner)]
    for i in range(config.num_layers):
        p, q = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        out.update({p + a: [(q + b, None, False)] for a, b in _DOUBLE})
        out[p + "img_attn.qkv"] = [(q + f"attn.to_{x}", s, False) for x, s in zip("qkv", thirds, strict=True)]
        out[p + "txt_attn.qkv"] = [(q + f"attn.add_{x}_proj", s, False) for x, s in zip("qkv", thirds, strict=True)]
    for i in range(config.num_single_layers):
        p, q = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        out.update({p + a: [(q + b, None, False)] for a, b in _SINGLE})
        out[p + "linear1"] = [(q + f"attn.to_{x}", s, False) for x, s in zip("qkv", thirds, strict=True)]
        out[p + "linear1"].append((q + "proj_mlp", slice(3 * inner, None), False))
    return out


def _split(name: str, down: torch.Tensor, up: torch.Tensor, targets, out: dict, bias: torch.Tensor | None = None):
    for module, rows, swap in targets[name]:
        parts = {"weight": up, "bias": bias}
        for kind, t in parts.items():
            if t is None:
                continue
            t = t[rows] if rows is not None else t
            if swap:
                first, second = t.chunk(2, dim=0)
                t = torch.cat([second, first], dim=0)
            out[f"transformer.{module}.lora_B.{kind}"] = t.contiguous()
        out[f"transformer.{module}.lora_A.weight"] = down.contiguous()


def _norm_targets(config) -> dict[str, str]:
    """BFL query/key norm scale name -> diffusers parameter name (control LoRAs replace these)."""
    out = {}
    for i in range(config.num_layers):
        out.update({f"double_blocks.{i}.{a}": f"transformer_blocks.{i}.{b}" for a, b in _DOUBLE_NORMS})
    for i in range(config.num_single_layers):
        out.update({f"single_blocks.{i}.{a}": f"single_transformer_blocks.{i}.{b}" for a, b in _SINGLE_NORMS})
    return out


def is_control(sd: dict[str, torch.Tensor]) -> bool:
    """A BFL control LoRA: it widens the input layer (or replaces norm scales) for control latents."""
    return any(k.endswith("query_norm.scale") for k in sd)


def to_peft(
    sd: dict[str, torch.Tensor], fmt: str, config, path: Path | str = "LoRA", clip_linears: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """Any supported format -> `transformer.<module>.lora_A/B.weight` (scales folded in), for this model,
    plus `text_encoder.<module>...` for CLIP text-encoder layers (clip_linears: the CLIP model's Linear names)."""
    if fmt == "peft":
        out = {}
        for k, v in sd.items():
            if k.endswith(".alpha"):
                continue
            key = (
                k
                if k.startswith(("transformer.", "text_encoder."))
                else "transformer." + k.removeprefix("base_model.model.")
            )
            if key.endswith("lora_A.weight"):
                alpha_key = k[: -len("lora_A.weight")] + "alpha"
                if alpha_key in sd:  # PEFT scales by alpha/rank; fold it in so the file's intent holds
                    v = v * (float(sd[alpha_key]) / v.shape[0])
            out[key] = v
        if any(k.startswith("text_encoder_2.") for k in out):
            raise UnsupportedError(f"{path}: T5 (text_encoder_2) LoRA layers are not supported", parameter="lora")
        if not any(k.startswith("transformer.") for k in out):
            raise ModelLoadError(f"{path}: PEFT LoRA without transformer layers", parameter="lora")
        return out
    targets = _targets(config)
    out: dict[str, torch.Tensor] = {}
    if fmt == "bfl":
        norms = _norm_targets(config)
        src = {k.removeprefix(BFL_PREFIX): v for k, v in sd.items()}
        for key, value in src.items():
            if key in norms:
                out[f"transformer.{norms[key]}"] = value
            elif key.endswith(".lora_A.weight"):
                stem = key[: -len(".lora_A.weight")]
                if stem not in targets:
                    raise ModelLoadError(
                        f"{path}: LoRA layer {stem} has no counterpart in this model", parameter="lora"
                    )
                alpha = float(src[stem + ".alpha"]) / value.shape[0] if stem + ".alpha" in src else 1.0
                _split(stem, value * alpha, src[stem + ".lora_B.weight"], targets, out, src.get(stem + ".lora_B.bias"))
            elif not key.endswith((".lora_B.weight", ".lora_B.bias", ".alpha")):
                raise ModelLoadError(f"{path}: tensor {key} is not a LoRA or norm-scale layer", parameter="lora")
        return out
    if fmt == "kohya":
        bfl_by_kohya = {"lora_unet_" + name.replace(".", "_"): name for name in targets}
        # kohya names CLIP layers from transformers' CLIPTextModel as it was (`text_model.encoder...`);
        # transformers 5 dropped the `text_model.` level, so both spellings map to the live module name.
        clip_by_kohya = {
            p + ("text_model." + name.removeprefix("text_model.")).replace(".", "_"): name
            for name in clip_linears
            for p in ("lora_te1_", "lora_te_")
        }
        for key in sd:
            if not key.endswith(".lora_down.weight"):
                continue
            stem = key[: -len(".lora_down.weight")]
            if stem.startswith("lora_te"):
                name = clip_by_kohya.get(stem)
                if name is None:
                    raise ModelLoadError(
                        f"{path}: text-encoder LoRA layer {stem} has no counterpart in this model's CLIP encoder",
                        parameter="lora",
                    )
                down, up = sd[key], sd[stem + ".lora_up.weight"]
                alpha = float(sd[stem + ".alpha"]) if stem + ".alpha" in sd else float(down.shape[0])
                out[f"text_encoder.{name}.lora_A.weight"] = (down * (alpha / down.shape[0])).contiguous()
                out[f"text_encoder.{name}.lora_B.weight"] = up.contiguous()
                continue
            name = bfl_by_kohya.get(stem)
            if name is None:
                raise ModelLoadError(
                    f"{path}: kohya LoRA layer {stem} has no counterpart in this model", parameter="lora"
                )
            down, up = sd[key], sd[stem + ".lora_up.weight"]
            alpha = float(sd[stem + ".alpha"]) if stem + ".alpha" in sd else float(down.shape[0])
            _split(name, down * (alpha / down.shape[0]), up, targets, out)
        return out
    names = {
        "qkv_lora1": "img_attn.qkv",
        "qkv_lora2": "txt_attn.qkv",
        "proj_lora1": "img_attn.proj",
        "proj_lora2": "txt_attn.proj",
    }
    for key in sd:
        if not key.endswith(".down.weight"):
            continue
        stem = key[: -len(".down.weight")]  # double_blocks.N.processor.qkv_lora1
        block, _, layer = stem.partition(".processor.")
        if not block.startswith("double_blocks.") or layer not in names:
            raise ModelLoadError(
                f"{path}: XLabs LoRA layer {stem} is not supported (double-block attention only)", parameter="lora"
            )
        name = f"{block}.{names[layer]}"
        if name not in targets:
            raise ModelLoadError(f"{path}: XLabs LoRA layer {stem} has no counterpart in this model", parameter="lora")
        _split(name, sd[key], sd[stem + ".up.weight"], targets, out)
    return out
