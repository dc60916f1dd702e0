"""Single-file FLUX.1 transformer checkpoints: sniffing, key layout conversion, fp8 upcast, GGUF.

FLUX.1-dev, schnell and the realism fine-tunes ship one `.safetensors` file in the
Black Forest Labs key layout (`double_blocks.N...`, `single_blocks.N...`), sometimes with
ComfyUI's `model.diffusion_model.` prefix and bundled text encoders / VAE, sometimes in
float8. diffusers' own converter hard-codes the full-size hidden width (3072), so it cannot
load a model of any other width; this module infers every dimension from the tensors, which
is what lets the tiny test checkpoints and a real 24 GB file go through the same code.

GGUF files (city96's FLUX.1 quantizations, ComfyUI-GGUF's format: BFL key names, linear weights
in llama.cpp block formats such as Q8_0, Q5_K, Q4_K) are read with diffusers' GGUF reader; their
quantized weights stay quantized (diffusers' GGUFParameter, dequantized per layer at run time by
GGUFLinear) and go through the same key conversion, which only splits along output rows and so
keeps every quantization block intact.

Layout reference: black-forest-labs/flux `src/flux/model.py` (key names) and diffusers
`FluxTransformer2DModel` (target names).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from daguerre.errors import ModelLoadError, UnsupportedError

if TYPE_CHECKING:  # the header readers run without torch (the API process reads the catalog); conversions import it
    import torch

COMFY_PREFIX = "model.diffusion_model."

# The transformer's input width tells the FLUX.1 variant apart (packed 2x2 latents):
# 64 = 16 latent channels; 128 = + control image latents; 384 = + masked image + 4x4 mask.
KIND_BY_IN_CHANNELS = {64: None, 128: "control", 384: "fill"}


@dataclass(frozen=True)
class CheckpointInfo:
    """What a single file holds, read from its header without loading tensors."""

    path: Path
    layout: str  # "bfl" (double_blocks.N...) or "diffusers" (transformer_blocks.N...)
    kind: str  # dev | schnell | fill | control
    dtype: str  # dominant tensor dtype as safetensors names it (BF16, F8_E4M3, F32...)
    size_bytes: int


def read_header(path: Path) -> dict:
    """The safetensors JSON header (tensor names, dtypes, shapes) without reading tensors."""
    path = Path(path)
    if path.suffix.lower() in {".ckpt", ".pt", ".pth", ".bin"}:
        raise ModelLoadError(
            f"{path}: pickle checkpoints are not loaded (they can run code); "
            "expected a .safetensors FLUX.1 transformer",
            parameter="model",
        )
    try:
        with path.open("rb") as f:
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise ValueError("file shorter than a safetensors header")
            (n,) = struct.unpack("<Q", raw_len)
            if n > 100_000_000 or n > path.stat().st_size:
                raise ValueError("header length is implausible")
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ModelLoadError(
            f"{path}: not a readable .safetensors file ({e}); expected a FLUX.1 transformer checkpoint",
            parameter="model",
        ) from e
    header.pop("__metadata__", None)
    return header


def gguf_header(path: Path) -> dict:
    """{tensor name: {"dtype": GGML type name, "shape": logical shape}} of a GGUF file, without its data."""
    try:
        from gguf import GGUFReader
    except ImportError as e:  # pragma: no cover - gguf is a dependency
        raise ModelLoadError(f"{path}: reading GGUF files needs the gguf package (pip install gguf)") from e
    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - the reader fails in many ways on a damaged file
        raise ModelLoadError(f"{path}: not a readable GGUF file ({e!r})", parameter="model") from e
    return {t.name: {"dtype": t.tensor_type.name, "shape": [int(n) for n in reversed(t.shape)]} for t in reader.tensors}


def inspect(path: Path) -> CheckpointInfo:
    """Identify a single-file checkpoint: layout, FLUX.1 kind, dtype. Raises a clear error otherwise."""
    path = Path(path)
    header = gguf_header(path) if path.suffix.lower() == ".gguf" else read_header(path)
    names = {strip_prefix(k) for k in header}
    if any(k.startswith("ip_adapter_proj_model.") for k in names):
        return CheckpointInfo(
            path=path,
            layout="xlabs-ip-adapter",
            kind="ipadapter",
            dtype=_dominant_dtype(header),
            size_bytes=path.stat().st_size,
        )
    if any(k.startswith(("input_hint_block.", "controlnet_blocks.")) for k in names) and "img_in.weight" in names:
        return CheckpointInfo(
            path=path,
            layout="xlabs-controlnet",
            kind="controlnet",
            dtype=_dominant_dtype(header),
            size_bytes=path.stat().st_size,
        )
    if ("model.0.weight" in names and any(k.startswith("model.1.sub.") for k in names)) or (
        "conv_first.weight" in names and any(k.startswith("body.") for k in names)
    ):  # ESRGAN-class upscalers (the old and the BasicSR key layouts), loaded with spandrel
        return CheckpointInfo(path=path, layout="esrgan", kind="upscaler", dtype=_dominant_dtype(header),
                              size_bytes=path.stat().st_size)  # fmt: skip
    if any(k.endswith(("lora_A.weight", ".lora_down.weight", ".down.weight")) for k in names):
        if not any(t in k for k in names for t in ("double_blocks", "single_blocks", "transformer_blocks")):
            raise ModelLoadError(
                f"{path}: a LoRA, but not for FLUX.1 (no FLUX block names in its layers)", parameter="lora"
            )
        # BFL's Canny/Depth control LoRAs widen the input layer to take the control latents (and carry
        # full norm scales); they drive FluxControlPipeline, so they are control models, not style LoRAs.
        control = any(k.endswith("query_norm.scale") for k in names)
        return CheckpointInfo(
            path=path,
            layout="lora",
            kind="controllora" if control else "lora",
            dtype=_dominant_dtype(header),
            size_bytes=path.stat().st_size,
        )
    if any(k.startswith("double_blocks.") for k in names):
        layout = "bfl"
        if "img_in.weight" not in names:
            raise ModelLoadError(f"{path}: BFL-layout file without img_in.weight; not a FLUX.1 transformer")
        if "double_stream_modulation_img.lin.weight" in names or "single_stream_modulation.lin.weight" in names:
            raise UnsupportedError(f"{path}: this is a FLUX.2 checkpoint; only FLUX.1 is supported")
        in_channels = header[_find(header, "img_in.weight")]["shape"][1]
        guidance = "guidance_in.in_layer.weight" in names
    elif "x_embedder.weight" in names and any(k.startswith("transformer_blocks.") for k in names):
        layout = "diffusers"
        in_channels = header[_find(header, "x_embedder.weight")]["shape"][1]
        guidance = "time_text_embed.guidance_embedder.linear_1.weight" in names
    else:
        sample = ", ".join(sorted(names)[:3]) or "no tensors"
        raise ModelLoadError(
            f"{path}: not a FLUX.1 transformer checkpoint: expected keys like "
            f"'double_blocks.0.img_attn.qkv.weight' (BFL/ComfyUI) or 'transformer_blocks.0.attn.to_q.weight' "
            f"(diffusers); found {sample}",
            parameter="model",
        )
    if in_channels not in KIND_BY_IN_CHANNELS:
        raise ModelLoadError(f"{path}: transformer input width {in_channels} is not a FLUX.1 variant (64/128/384)")
    kind = KIND_BY_IN_CHANNELS[in_channels] or ("dev" if guidance else "schnell")
    return CheckpointInfo(
        path=path, layout=layout, kind=kind, dtype=_dominant_dtype(header), size_bytes=path.stat().st_size
    )


def _dominant_dtype(header: dict) -> str:
    """The dtype holding most of the weights (by element count: many small F32 norms and scales do not count)."""
    dtypes: dict[str, int] = {}
    for entry in header.values():
        n = 1
        for d in entry.get("shape", ()):
            n *= d
        dtypes[entry["dtype"]] = dtypes.get(entry["dtype"], 0) + n
    return max(dtypes, key=dtypes.get) if dtypes else "none"


def strip_prefix(key: str) -> str:
    return key[len(COMFY_PREFIX) :] if key.startswith(COMFY_PREFIX) else key


def _find(header: dict, name: str) -> str:
    return name if name in header else COMFY_PREFIX + name


def is_quantized(t: torch.Tensor) -> bool:
    """A GGUF-quantized tensor (its shape is bytes; quant_shape is the weight's shape)."""
    return hasattr(t, "quant_type")


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(getattr(t, "quant_shape", t.shape))


def config_from_state_dict(sd: dict[str, torch.Tensor]) -> dict:
    """FluxTransformer2DModel config fields implied by a diffusers-layout state dict's shapes."""
    inner = _shape(sd["x_embedder.weight"])[0]
    head_dim = sd["transformer_blocks.0.attn.norm_q.weight"].shape[0]
    return {
        "in_channels": _shape(sd["x_embedder.weight"])[1],
        "out_channels": _shape(sd["proj_out.weight"])[0],
        "num_layers": 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("transformer_blocks.")),
        "num_single_layers": 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("single_transformer_blocks.")),
        "attention_head_dim": head_dim,
        "num_attention_heads": inner // head_dim,
        "joint_attention_dim": _shape(sd["context_embedder.weight"])[1],
        "pooled_projection_dim": _shape(sd["time_text_embed.text_embedder.linear_1.weight"])[1],
        "guidance_embeds": "time_text_embed.guidance_embedder.linear_1.weight" in sd,
    }


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    """BFL's final modulation is (shift, scale); diffusers' AdaLayerNormContinuous is (scale, shift)."""
    a, b = t.chunk(2, dim=0)
    return _cat([b, a])


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    import torch  # here, not at import: inspecting a header needs no torch

    return torch.cat(tensors, dim=0)


# (BFL name, diffusers name) for tensors that only change name; {i} is the block index.
_TOP = [
    ("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
    ("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
    ("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
    ("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
    ("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"),
    ("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"),
    ("txt_in", "context_embedder"),
    ("img_in", "x_embedder"),
    ("final_layer.linear", "proj_out"),
]
_DOUBLE = [
    ("img_mod.lin", "norm1.linear"),
    ("txt_mod.lin", "norm1_context.linear"),
    ("img_attn.proj", "attn.to_out.0"),
    ("txt_attn.proj", "attn.to_add_out"),
    ("img_mlp.0", "ff.net.0.proj"),
    ("img_mlp.2", "ff.net.2"),
    ("txt_mlp.0", "ff_context.net.0.proj"),
    ("txt_mlp.2", "ff_context.net.2"),
]
_DOUBLE_NORMS = [
    ("img_attn.norm.query_norm.scale", "attn.norm_q.weight"),
    ("img_attn.norm.key_norm.scale", "attn.norm_k.weight"),
    ("txt_attn.norm.query_norm.scale", "attn.norm_added_q.weight"),
    ("txt_attn.norm.key_norm.scale", "attn.norm_added_k.weight"),
]
_SINGLE = [("modulation.lin", "norm.linear"), ("linear2", "proj_out")]
_SINGLE_NORMS = [("norm.query_norm.scale", "attn.norm_q.weight"), ("norm.key_norm.scale", "attn.norm_k.weight")]
_QKV_DOUBLE = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
_QKV_SINGLE = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")


def _block_count(keys, prefix: str) -> int:
    idx = {int(k.split(".")[1]) for k in keys if k.startswith(prefix)}
    return max(idx) + 1 if idx else 0


def bfl_to_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename and split a BFL-layout FLUX.1 state dict into diffusers' FluxTransformer2DModel layout."""
    src = dict(sd)
    out: dict[str, torch.Tensor] = {}
    inner = src["img_in.weight"].shape[0]

    def move(a: str, b: str) -> None:
        for suffix in (".weight", ".bias"):
            if a + suffix in src:
                out[b + suffix] = src.pop(a + suffix)

    for a, b in _TOP:
        move(a, b)
    for suffix in (".weight", ".bias"):  # absent from ControlNets, which have no output layer
        if "final_layer.adaLN_modulation.1" + suffix in src:
            out["norm_out.linear" + suffix] = _swap_halves(src.pop("final_layer.adaLN_modulation.1" + suffix))
    for i in range(_block_count(src, "double_blocks.")):
        p, q = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for a, b in _DOUBLE:
            move(p + a, q + b)
        for a, b in _DOUBLE_NORMS:
            out[q + b] = src.pop(p + a)
        for fused, parts in _QKV_DOUBLE.items():
            for suffix in (".weight", ".bias"):
                for name, t in zip(parts, src.pop(p + fused + suffix).chunk(3, dim=0), strict=True):
                    out[q + name + suffix] = t
    for i in range(_block_count(src, "single_blocks.")):
        p, q = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        for a, b in _SINGLE:
            move(p + a, q + b)
        for a, b in _SINGLE_NORMS:
            out[q + b] = src.pop(p + a)
        for suffix in (".weight", ".bias"):
            fused = src.pop(p + "linear1" + suffix)
            split = (inner, inner, inner, fused.shape[0] - 3 * inner)
            for name, t in zip(_QKV_SINGLE, fused.split(split, dim=0), strict=True):
                out[q + name + suffix] = t
    if src:
        raise ModelLoadError(f"BFL checkpoint has tensors this converter does not know: {sorted(src)[:5]}")
    return out


def diffusers_to_bfl(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `bfl_to_diffusers`: how FLUX.1 single files lay out a diffusers transformer."""
    src = dict(sd)
    out: dict[str, torch.Tensor] = {}

    def move(b: str, a: str) -> None:
        for suffix in (".weight", ".bias"):
            if b + suffix in src:
                out[a + suffix] = src.pop(b + suffix)

    for a, b in _TOP:
        move(b, a)
    for suffix in (".weight", ".bias"):
        if "norm_out.linear" + suffix in src:
            out["final_layer.adaLN_modulation.1" + suffix] = _swap_halves(src.pop("norm_out.linear" + suffix))
    for i in range(_block_count(src, "transformer_blocks.")):
        p, q = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for a, b in _DOUBLE:
            move(q + b, p + a)
        for a, b in _DOUBLE_NORMS:
            out[p + a] = src.pop(q + b)
        for fused, parts in _QKV_DOUBLE.items():
            for suffix in (".weight", ".bias"):
                out[p + fused + suffix] = _cat([src.pop(q + n + suffix) for n in parts])
    for i in range(_block_count(src, "single_transformer_blocks.")):
        p, q = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        for a, b in _SINGLE:
            move(q + b, p + a)
        for a, b in _SINGLE_NORMS:
            out[p + a] = src.pop(q + b)
        for suffix in (".weight", ".bias"):
            out[p + "linear1" + suffix] = _cat([src.pop(q + n + suffix) for n in _QKV_SINGLE])
    if src:
        raise ValueError(f"diffusers state dict has tensors with no BFL name: {sorted(src)[:5]}")
    return out


# XLabs ControlNets (x-flux `ControlNetFlux`): a few BFL double blocks plus a pixel-space hint encoder.
# diffusers' FluxControlNetModel has the same architecture (conditioning_embedding_channels=16,
# no single blocks, residuals repeated over the base blocks) but no loader for the file layout.
# XLabs' input_hint_block is one Sequential of 8 convs with SiLUs between (even indices = convs).
_XLABS_HINT = {0: "conv_in", **{2 * i + 2: f"blocks.{i}" for i in range(6)}, 14: "conv_out"}
_XLABS_TOP = [("pos_embed_input", "controlnet_x_embedder")]


def xlabs_controlnet_to_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An XLabs ControlNet state dict in diffusers' FluxControlNetModel layout."""
    return _xlabs(sd, to_diffusers=True)


def diffusers_to_xlabs_controlnet(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `xlabs_controlnet_to_diffusers` (how XLabs files lay out a ControlNet)."""
    return _xlabs(sd, to_diffusers=False)


def _xlabs(sd: dict[str, torch.Tensor], *, to_diffusers: bool) -> dict[str, torch.Tensor]:
    """The XLabs <-> diffusers renaming, both ways from one table: the hint encoder and the input embedder by
    name, the controlnet_blocks as they are, the double blocks through the BFL converter."""
    names = [*((f"input_hint_block.{i}", f"input_hint_block.{name}") for i, name in _XLABS_HINT.items()), *_XLABS_TOP]
    src = dict(sd)
    out: dict[str, torch.Tensor] = {}
    for xlabs, diffusers in names:
        a, b = (xlabs, diffusers) if to_diffusers else (diffusers, xlabs)
        for suffix in (".weight", ".bias"):
            out[b + suffix] = src.pop(a + suffix)
    for k in [k for k in src if k.startswith("controlnet_blocks.")]:
        out[k] = src.pop(k)
    out.update(bfl_to_diffusers(src) if to_diffusers else diffusers_to_bfl(src))
    return out


def xlabs_controlnet_config(sd: dict[str, torch.Tensor], axes_dims_rope) -> dict:
    """FluxControlNetModel config for a converted XLabs state dict (RoPE axes come from the base model)."""
    inner = sd["x_embedder.weight"].shape[0]
    head_dim = sd["transformer_blocks.0.attn.norm_q.weight"].shape[0]
    return {
        "patch_size": 2,  # the hint features are packed 2x2, like the latents
        "in_channels": sd["x_embedder.weight"].shape[1],
        "num_layers": _block_count(sd, "transformer_blocks."),
        "num_single_layers": 0,
        "attention_head_dim": head_dim,
        "num_attention_heads": inner // head_dim,
        "joint_attention_dim": _shape(sd["context_embedder.weight"])[1],
        "pooled_projection_dim": _shape(sd["time_text_embed.text_embedder.linear_1.weight"])[1],
        "guidance_embeds": "time_text_embed.guidance_embedder.linear_1.weight" in sd,
        "axes_dims_rope": tuple(axes_dims_rope),
        "conditioning_embedding_channels": sd["input_hint_block.conv_out.weight"].shape[0],
    }
