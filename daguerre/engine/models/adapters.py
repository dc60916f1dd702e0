"""Adapter hot-swap on a resident model: LoRAs (and BFL control LoRAs) and IP-Adapters.

Each call makes exactly the requested set active and leaves the base weights untouched, so a request
without adapters runs the base model bit for bit and switching sets never reloads the model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from daguerre.engine.models import lora_files
from daguerre.engine.models.loading import read_lora
from daguerre.engine.models.resident import LoadedModel
from daguerre.errors import ModelLoadError, UnsupportedError


def set_loras(
    model: LoadedModel, loras: list[tuple[str, Path, float]], control: tuple[str, Path, float] | None = None
) -> None:
    """Make exactly these (adapter name, file, weight) LoRAs active on the model's transformer,
    plus an optional BFL control LoRA (Canny/Depth) for the control pipelines.

    The base weights are never touched: PEFT layers add the low-rank update, and with no LoRA
    requested they are disabled, which gives the base output bit for bit. Loaded adapters stay
    cached (LRU) so switching sets between requests costs no reload of the base or the LoRA.
    A control LoRA widens the transformer's input layer and replaces some norm scales, so it is
    not cached beside the others: switching it on or off unloads every adapter and restores the
    original layers (diffusers keeps them), and the plain LoRAs are loaded again on next use.
    """
    pipe = model.pipe
    control_path = control[1] if control is not None else None
    current = model.control_lora[1] if model.control_lora is not None else None
    if control_path != current and (current is not None or model.adapters):
        pipe.unload_lora_weights(reset_to_overwritten_params=True)
        model.adapters.clear()
        model.control_lora = None
    if control is not None and model.control_lora is None:
        _load_lora(model, control[0], control[1], parameter="controlNet.model")
        model.control_lora = control[:2]
    for name, path, _ in loras:
        if name in model.adapters:
            model.adapters.move_to_end(name)
            continue
        _load_lora(model, name, path)
        model.adapters[name] = path
    wanted = {name for name, _, _ in loras}
    while len(model.adapters) > model.max_adapters:
        old = next(n for n in model.adapters if n not in wanted)
        pipe.delete_adapters(old)
        del model.adapters[old]
    active = [*loras, *([control] if control is not None else [])]
    if not model.adapters and model.control_lora is None:
        return
    if active:
        pipe.enable_lora()
        pipe.set_adapters([n for n, _, _ in active], [w for _, _, w in active])
    else:
        pipe.disable_lora()


def _load_lora(model: LoadedModel, name: str, path: Path, parameter: str = "lora") -> None:
    pipe = model.pipe
    sd = read_lora(path, parameter=parameter)
    clip = tuple(n for n, m in pipe.text_encoder.named_modules() if isinstance(m, torch.nn.Linear))
    converted = lora_files.to_peft(sd, lora_files.detect(sd, path), pipe.transformer.config, path, clip)
    try:
        pipe.load_lora_weights({k: v.to(model.device, model.dtype) for k, v in converted.items()}, adapter_name=name)
    except (ValueError, RuntimeError, KeyError) as e:
        raise ModelLoadError(f"{path}: LoRA does not fit {model.spec.name}: {e}", parameter=parameter) from e


def set_ip_adapters(model: LoadedModel, specs: list) -> None:
    """Make exactly these IP-Adapters (catalog specs) loaded; a different set is swapped in whole.

    diffusers replaces the double blocks' attention processors to add IP-Adapters and restores the
    defaults on unload, so with none requested the transformer is the base model again, bit for bit.
    """
    paths = tuple(s.path for s in specs)
    if paths == model.ip_adapters:
        return
    pipe = model.pipe
    if model.ip_adapters:
        pipe.unload_ip_adapter()
        model.ip_adapters = ()
    if not specs:
        return
    encoders = {s.image_encoder for s in specs}
    if None in encoders:
        name = next(s.name for s in specs if s.image_encoder is None)
        raise ModelLoadError(
            f'IP-Adapter {name} needs a CLIP image encoder: set image_encoder = "<folder>" on its '
            "catalog entry, or put an image_encoder/ folder beside the file",
            parameter="ipAdapters",
        )
    if len(encoders) > 1:
        raise UnsupportedError(
            "IP-Adapters with different image encoders cannot run together yet", parameter="ipAdapters"
        )
    try:
        pipe.load_ip_adapter(
            [str(s.path.parent) for s in specs],
            weight_name=[s.path.name for s in specs],
            image_encoder_pretrained_model_name_or_path=encoders.pop(),
            image_encoder_dtype=model.dtype,
        )
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise ModelLoadError(
            f"cannot load IP-Adapter(s) {', '.join(s.name for s in specs)}: {e}", parameter="ipAdapters"
        ) from e
    model.ip_adapters = paths
