"""Speed profiles: how a loaded model is prepared for speed (settings `profile`, or per catalog entry).

exact  the numerics of the eager model (no quantization, no caching), plus torch.compile of the
       transformer's repeated blocks (regional compilation) where `compile` is on (default: on
       CUDA, off on the CPU where compiling costs minutes). The compiled blocks are dynamic in the
       token dimension and warmed up at two sizes when the model loads, so every allowed size then
       runs without recompiling (strategy: dynamic graphs, not size buckets). Inductor's caches
       persist under `cache_dir/inductor`, so a restart compiles from cache.
fast   exact + float8 dynamic per-row quantization of the transformer's linear layers (torchao).
       Needs a CUDA GPU with compute capability >= 8.9 (Ada, Hopper) and torchao; anywhere else
       loading refuses with a message saying so.
turbo  fast + step caching: requests without acceleratorOptions get TeaCache at distance 0.4.

Every profile also picks the transformer's attention backend (settings `attention`): `auto` is
cuDNN's fused attention (diffusers' `_native_cudnn`) on CUDA GPUs of compute capability >= 9.0
(Hopper, Blackwell) and PyTorch's SDPA dispatcher (`native`: flash / memory-efficient / math by
shape) elsewhere; any other diffusers backend name can be forced, except the `*_hub` ones (they
download kernels at run time).

Not done: fused QKV projections. diffusers' fusion keeps the unfused weights beside the fused
copy (+4.3 GB for FLUX.1-dev in bf16) and a LoRA loaded on to_q/to_k/to_v is silently bypassed by
the fused path, so it would need unfusing around every LoRA request; without a GPU to measure the
gain (a few percent of the linear time at most) it is left out.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from daguerre.config import PROFILES, check_choice
from daguerre.errors import ModelLoadError, RequestError
from daguerre.request import AccelOptions, resolve_accel

log = logging.getLogger(__name__)

TURBO_CACHE = resolve_accel(AccelOptions(tea_cache=True, tea_cache_distance=0.4))
CPU_ATTENTION = ("native", "_native_math", "flex")  # attention backends that run without a GPU
WARMUP_SIZES = ((256, 256), (320, 256))  # two shapes: the second marks the token dimension dynamic


@dataclass
class Applied:
    """What a profile did to a model, reported by /health/ready and `daguerre models`."""

    profile: str = "exact"
    compiled: bool = False
    fp8: bool = False
    attention: str = "native"  # diffusers attention backend of the transformer
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def check(profile: str) -> str:
    return check_choice("profile", profile, PROFILES)


def fp8_unavailable(device: torch.device) -> str | None:
    """Why fp8 quantization cannot run here, or None."""
    if device.type != "cuda":
        return f"the device is {device.type}, not a CUDA GPU"
    if torch.cuda.get_device_capability(device) < (8, 9):
        return "the GPU's compute capability is below 8.9 (fp8 matmuls need Ada or Hopper)"
    try:
        import torchao  # noqa: F401
    except ImportError:
        return "torchao is not installed (pip install torchao)"
    return None


def attention_backend(requested: str, device: torch.device) -> str:
    """The diffusers attention backend for `requested` ("auto" or a backend name) on this device."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    if requested == "auto":
        cudnn = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0)
        return "_native_cudnn" if cudnn else "native"
    names = sorted(b.value for b in AttentionBackendName)
    if requested not in names:
        raise RequestError(f"attention must be 'auto' or one of {', '.join(names)}; got {requested!r}",
                           parameter="attention")  # fmt: skip
    if "hub" in requested:
        raise RequestError(f"attention {requested!r} downloads its kernels from the Hugging Face Hub at run time; "
                           "install the kernel's package and use its local backend", parameter="attention")  # fmt: skip
    if requested not in CPU_ATTENTION and device.type != "cuda":
        raise ModelLoadError(f"attention {requested!r} needs a CUDA GPU; on {device.type} use one of "
                             f"auto, {', '.join(CPU_ATTENTION)}", parameter="attention")  # fmt: skip
    return requested


def set_attention(transformer, backend: str) -> None:
    """Give the transformer's attention processors this backend, leaving diffusers' process-wide default
    (which other pipelines in the process follow) as it was."""
    if backend == "native":
        return
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    previous = _AttentionBackendRegistry._active_backend
    try:
        transformer.set_attention_backend(backend)
    except (RuntimeError, ValueError, ImportError) as e:
        raise ModelLoadError(f"attention backend {backend!r} cannot run here: {e}", parameter="attention") from e
    finally:
        _AttentionBackendRegistry.set_active_backend(previous)


def apply(
    pipe,
    profile: str,
    *,
    device: torch.device,
    compile_: bool | None,
    cache_dir: Path,
    kind: str,
    max_seq: int,
    attention: str = "native",
) -> Applied:
    """Prepare a freshly loaded FluxPipeline for a profile; raises ModelLoadError when it cannot run here.

    `attention` is a backend attention_backend() has resolved for this device."""
    check(profile)
    t0 = time.perf_counter()
    done = Applied(profile=profile, attention=attention)
    set_attention(pipe.transformer, done.attention)
    if profile in ("fast", "turbo"):
        why = fp8_unavailable(device)
        if why is not None:
            raise ModelLoadError(
                f"profile {profile!r} quantizes the transformer to fp8, which cannot run here: {why}; "
                "use profile 'exact'",
                parameter="profile",
            )
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        quantize_(pipe.transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
        done.fp8 = True
    if compile_ if compile_ is not None else device.type == "cuda":
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(cache_dir) / "inductor"))
        mode = "max-autotune-no-cudagraphs" if device.type == "cuda" else None
        # Regional compilation: each repeated block (FLUX's double and single blocks) is compiled, the
        # thin top-level forward stays eager. Nearly the speed of a whole-model compile for a fraction
        # of the compile time, and step caching, LoRA and IP-Adapter swaps wrap it without recompiles.
        pipe.transformer.compile_repeated_blocks(mode=mode, dynamic=True)
        done.compiled = True
        if kind in ("dev", "schnell"):
            warm_up(pipe, max_seq)
            done.notes.append(f"regional torch.compile({mode or 'default'}, dynamic), warmed up at 2 sizes")
        else:  # their inputs are built by other pipelines: the first request compiles
            done.notes.append(f"regional torch.compile({mode or 'default'}, dynamic), compiled at first use")
    done.seconds = time.perf_counter() - t0
    return done


def warm_up(pipe, max_seq: int) -> None:
    """Compile now (one step at two sizes, the model's text length), so the first request does not pay."""
    for width, height in WARMUP_SIZES:
        with torch.inference_mode():
            pipe("warm-up", width=width, height=height, num_inference_steps=1, output_type="latent",
                 max_sequence_length=max_seq, generator=torch.Generator("cpu").manual_seed(0))  # fmt: skip


def request_cache(profile: str, requested: AccelOptions) -> AccelOptions:
    """The step caching a request runs with: its own acceleratorOptions, else turbo's default."""
    if requested.enabled or profile != "turbo":
        return requested
    return TURBO_CACHE


def log_applied(name: str, applied: Applied) -> None:
    log.info("profile %s for %s: compiled=%s fp8=%s (%.1f s) %s", applied.profile, name, applied.compiled,
             applied.fp8, applied.seconds, "; ".join(applied.notes))  # fmt: skip
