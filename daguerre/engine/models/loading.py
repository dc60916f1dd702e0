"""Every read of model weights from disk: transformers (diffusers folders, single files in BFL/ComfyUI or
diffusers layout, fp8, GGUF), the text encoders, tokenizers and VAE of a base folder, the scheduler config,
ControlNets (diffusers folders, XLabs files) and LoRA files.

The same code loads a tiny random test checkpoint and a 24 GB published file: every dimension is read from
the tensors or the configs, never assumed. Nothing here decides what stays resident (resident.py) or which
adapters are active (adapters.py).
"""

from __future__ import annotations

import struct
from pathlib import Path

import torch

from daguerre.engine.models import checkpoints
from daguerre.engine.models.catalog import ModelSpec
from daguerre.errors import ModelLoadError

FP8_DTYPES = {torch.float8_e4m3fn, torch.float8_e5m2}
# Keys of an all-in-one ComfyUI checkpoint that belong to other components; we take the
# transformer and load text encoders / VAE from the base folder.
FOREIGN_PREFIXES = ("text_encoders.", "vae.", "cond_stage_model.", "first_stage_model.", "conditioner.")
PARTS = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae")  # what a base folder lends


# ---- the transformer


def load_gguf_state_dict(
    path: Path, dtype: torch.dtype, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict]:
    """A GGUF transformer as a diffusers-layout state dict: quantized weights stay GGUFParameters (on
    `device`), the others (norms, biases, F16/F32 tensors) are cast to `dtype`; plus the implied config."""
    from diffusers.models.model_loading_utils import load_gguf_checkpoint
    from diffusers.quantizers.gguf.utils import GGUFParameter

    info = checkpoints.inspect(path)
    try:
        raw = load_gguf_checkpoint(str(path))
    except ValueError as e:  # an unsupported quantization type names itself
        raise ModelLoadError(f"{path}: {e}".split("\n\n")[0], parameter="model") from e
    sd: dict[str, torch.Tensor] = {}
    for key, t in raw.items():
        name = checkpoints.strip_prefix(key)
        if key.startswith(FOREIGN_PREFIXES):
            continue
        sd[name] = t.to(device) if isinstance(t, GGUFParameter) else t.to(device, dtype)
    if info.layout == "bfl":
        sd = checkpoints.bfl_to_diffusers(sd)
    return sd, checkpoints.config_from_state_dict(sd)


def load_transformer_state_dict(
    path: Path, dtype: torch.dtype, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a single file into a diffusers-layout state dict in `dtype` on `device`, plus its implied config.

    Tensors are read straight onto the device and fp8 ones upcast one by one (ComfyUI "scaled
    fp8" files: times their `scale_weight`), so peak memory stays near one copy of the model in
    the run dtype, and a GPU box does not stage 24 GB in host RAM.
    """
    from safetensors import safe_open

    if Path(path).suffix.lower() == ".gguf":
        return load_gguf_state_dict(path, dtype, device)
    info = checkpoints.inspect(path)
    sd: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        keys = list(f.keys())
        scales = {k[: -len("scale_weight")]: k for k in keys if k.endswith(".scale_weight")}
        for key in keys:
            name = checkpoints.strip_prefix(key)
            if key.startswith(FOREIGN_PREFIXES) or name == "scaled_fp8" or key.endswith(".scale_weight"):
                continue
            if key.endswith(".scale_input"):
                continue
            t = f.get_tensor(key)
            if t.dtype in FP8_DTYPES:
                t = t.to(torch.float32)
                prefix = key[: -len("weight")] if key.endswith("weight") else None
                if prefix is not None and prefix in scales:
                    t = t * f.get_tensor(scales[prefix]).to(torch.float32)
            elif not t.is_floating_point():
                raise ModelLoadError(f"{path}: tensor {key} has dtype {t.dtype}; quantized files are not supported")
            sd[name] = t.to(dtype)
    if info.layout == "bfl":
        sd = checkpoints.bfl_to_diffusers(sd)
    return sd, checkpoints.config_from_state_dict(sd)


def attach_gguf(model: torch.nn.Module, sd: dict, compute_dtype: torch.dtype) -> set[str]:
    """Swap the linears whose weights are GGUF-quantized for diffusers' GGUFLinear (dequantized per
    layer at run time, fused CUDA kernels where available) and attach those weights; returns their keys."""
    quantized = {k for k, v in sd.items() if checkpoints.is_quantized(v)}
    if not quantized:
        return quantized
    from diffusers.quantizers.gguf.utils import _replace_with_gguf_linear

    _replace_with_gguf_linear(model, compute_dtype, sd)
    for key in quantized:
        owner, attr = key.rsplit(".", 1)
        setattr(model.get_submodule(owner), attr, sd[key])
    return quantized


def load_transformer(spec: ModelSpec, folder: Path, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """The FLUX.1 transformer of a spec in `dtype` on `device`; `folder` gives a single file its config."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    try:
        if spec.format == "folder":
            model = FluxTransformer2DModel.from_pretrained(spec.path, subfolder="transformer", torch_dtype=dtype)
        else:
            sd, implied = load_transformer_state_dict(spec.path, dtype, device)
            config = (
                dict(FluxTransformer2DModel.load_config(folder, subfolder="transformer"))
                if (folder / "transformer" / "config.json").exists()
                else {}
            )
            config.update(implied)
            if "axes_dims_rope" not in config and implied["attention_head_dim"] != 128:
                raise ModelLoadError(
                    f"{spec.path}: head dim {implied['attention_head_dim']} differs from FLUX.1's 128 and the "
                    f"base folder {folder} has no transformer/config.json to give the rope axes"
                )
            with init_empty_weights():
                model = FluxTransformer2DModel.from_config(config)
            quantized = attach_gguf(model, sd, dtype)
            missing, unexpected = model.load_state_dict(
                {k: v for k, v in sd.items() if k not in quantized}, strict=False, assign=True
            )
            missing = [k for k in missing if k not in quantized]
            if missing or unexpected:
                raise ModelLoadError(
                    f"{spec.path}: weights do not fit a FLUX.1 transformer "
                    f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
                )
    except ModelLoadError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise ModelLoadError(f"{spec.path}: cannot load the FLUX.1 transformer: {e}", parameter="model") from e
    return model.to(device).eval()  # already in the run dtype


# ---- what a base folder lends: encoders, tokenizers, VAE, the scheduler config


def load_part(folder: Path, name: str, dtype: torch.dtype, device: torch.device):
    """One of PARTS from a diffusers folder, in `dtype` on `device` (tokenizers: no dtype, no device)."""
    from diffusers import AutoencoderKL
    from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

    sub = folder / name
    if not sub.is_dir():
        raise ModelLoadError(
            f"{folder} has no {name}/ folder; a FLUX.1 base folder needs text_encoder/, "
            "text_encoder_2/, tokenizer/, tokenizer_2/ and vae/",
            parameter="model",
        )
    try:
        if name.startswith("tokenizer"):
            return AutoTokenizer.from_pretrained(sub)
        cls = {"text_encoder": CLIPTextModel, "text_encoder_2": T5EncoderModel, "vae": AutoencoderKL}[name]
        return cls.from_pretrained(sub, torch_dtype=dtype).to(device).eval()
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelLoadError(f"{sub}: cannot load {name}: {e}", parameter="model") from e


def load_scheduler_config(folder: Path) -> dict:
    """The folder's scheduler/scheduler_config.json (FLUX's flow-matching schedule settings)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return dict(FlowMatchEulerDiscreteScheduler.load_config(folder, subfolder="scheduler"))


# ---- adapters' files


def load_controlnet(path: Path, dtype: torch.dtype, device: torch.device, axes_dims_rope) -> torch.nn.Module:
    """A FLUX.1 ControlNet from a diffusers folder or an XLabs file (converted to diffusers' module)."""
    from diffusers import FluxControlNetModel

    try:
        if Path(path).is_file():
            from safetensors.torch import load_file

            sd = checkpoints.xlabs_controlnet_to_diffusers(load_file(str(path)))
            config = checkpoints.xlabs_controlnet_config(sd, axes_dims_rope)
            with torch.device("meta"):
                net = FluxControlNetModel(**config)
            net.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=True, assign=True)
        else:
            net = FluxControlNetModel.from_pretrained(path, torch_dtype=dtype)
        return net.to(device).eval()
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise ModelLoadError(f"{path}: cannot load the FLUX.1 ControlNet: {e}", parameter="controlNet.model") from e


def read_lora(path: Path, parameter: str = "lora") -> dict[str, torch.Tensor]:
    """A LoRA file's tensors (safetensors only: pickle files can run code)."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ModelLoadError(f"{path}: LoRA files must be .safetensors", parameter=parameter)
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
        if n > path.stat().st_size:
            raise ValueError("bad header")
        return load_file(str(path))
    except (OSError, ValueError, struct.error, RuntimeError) as e:
        raise ModelLoadError(f"{path}: not a readable .safetensors LoRA ({e})", parameter=parameter) from e
