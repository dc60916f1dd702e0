"""Memory modes for GPUs smaller than a model: where the weights live between uses.

offload (settings `offload`, or per catalog entry)
  none   every part resident on the GPU: the fastest, and the default.
  model  diffusers' model CPU offload: the parts live in CPU memory and each moves to the GPU when
         it runs (text encoders, then the transformer for the whole loop, then the VAE). Peak GPU
         memory is the largest part plus activations; costs one transfer per part per request.
  group  diffusers' group offload: the transformer's blocks (and the other parts' layers) stream to
         the GPU one block at a time on a CUDA side stream, overlapping transfer and compute. Peak
         GPU memory is a few blocks; costs a transfer of the whole model per step, hidden partly
         behind compute. For GPUs that cannot hold the transformer at all.
  Both need a CUDA GPU (on the CPU the weights already live in CPU memory). They run with profile
  exact (the fp8 profiles quantize on the GPU) and compile only when asked.

t5 (settings `t5`): the T5-XXL text encoder, 9.5 GB in bf16, runs once per request.
  device the GPU, as loaded (default).
  cpu    CPU memory and the CPU's cores: frees 9.5 GB of GPU memory for about a second or two of
         CPU time per request (more on CPUs without bf16 instructions); its output moves to the GPU.
  int8   on the GPU with int8 weight-only quantization (torchao): half the memory, embeddings
         within about 1% of bf16's.

GGUF-quantized transformers (city96's Q8_0/Q5_K/Q4_K files) are a third way to fit a small GPU:
they are loaded as they are by engine/checkpoints.py, no setting needed.
"""

from __future__ import annotations

import logging

import torch

from daguerre.config import OFFLOADS, T5_MODES, check_choice
from daguerre.errors import ModelLoadError

log = logging.getLogger(__name__)


def check_offload(value: str) -> str:
    return check_choice("offload", value, OFFLOADS)


def check_t5(value: str) -> str:
    return check_choice("t5", value, T5_MODES)


def check_supported(offload: str, t5: str, *, device: torch.device, profile: str) -> None:
    """Refuse, before anything loads, what these memory modes cannot do here."""
    if offload != "none" and device.type != "cuda":
        raise ModelLoadError(
            f"offload {offload!r} moves weights between CPU memory and a CUDA GPU; on device {device.type!r} "
            "the model already lives in one memory: use offload 'none'",
            parameter="offload",
        )
    if offload != "none" and profile != "exact":
        raise ModelLoadError(
            f"offload {offload!r} runs with profile 'exact' only (profile {profile!r} quantizes the transformer "
            "on the GPU); for a small GPU, a GGUF-quantized transformer gives most of fp8's memory saving",
            parameter="offload",
        )
    if t5 == "cpu" and offload != "none":
        raise ModelLoadError(
            "t5 'cpu' and offload both move the text encoder off the GPU: use one of them", parameter="t5"
        )


def load_device(part: str, device: torch.device, offload: str, t5: str) -> torch.device:
    """Where a part is loaded: the CPU for offloaded models and for T5 on the CPU, else the device."""
    if offload != "none" or (part == "text_encoder_2" and t5 == "cpu"):
        return torch.device("cpu")
    return device


def prepare_t5(module: torch.nn.Module, mode: str, device: torch.device) -> torch.nn.Module:
    """Quantize T5 (int8) or make it run on the CPU for callers on `device` (cpu)."""
    if mode == "int8":
        try:
            from torchao.quantization import Int8WeightOnlyConfig, quantize_
        except ImportError as e:
            raise ModelLoadError("t5 'int8' needs torchao (pip install torchao)", parameter="t5") from e
        quantize_(module, Int8WeightOnlyConfig())
        log.info("T5 quantized to int8 weight-only")
    elif mode == "cpu":
        _run_on_cpu(module, device)
    return module


def _run_on_cpu(module: torch.nn.Module, device: torch.device) -> None:
    """Hooks that take a caller's inputs to the CPU and bring the encoder's outputs back to `device`, so the
    pipelines (which send token ids to the execution device) need no change."""

    def to_cpu(_module, args, kwargs):
        move = lambda v: v.to("cpu") if isinstance(v, torch.Tensor) else v  # noqa: E731
        return tuple(move(a) for a in args), {k: move(v) for k, v in kwargs.items()}

    def to_device(_module, _args, _kwargs, output):
        if isinstance(output, torch.Tensor):
            return output.to(device)
        if isinstance(output, dict):  # transformers' ModelOutput: keys and attributes stay in step
            for key, value in list(output.items()):
                if isinstance(value, torch.Tensor):
                    output[key] = value.to(device)
            return output
        return type(output)(v.to(device) if isinstance(v, torch.Tensor) else v for v in output)

    module.register_forward_pre_hook(to_cpu, with_kwargs=True)
    module.register_forward_hook(to_device, with_kwargs=True)


def apply_offload(pipe, offload: str, device: torch.device) -> None:
    """Install diffusers' offload hooks on a freshly built pipeline whose parts are in CPU memory."""
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "group":
        pipe.enable_group_offload(
            onload_device=device,
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=True,
        )
