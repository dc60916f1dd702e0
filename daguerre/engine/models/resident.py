"""Resident models: the device and dtype, a loaded model's pipelines, and the LRU set under a memory budget.

The model code is diffusers' and transformers'; loading.py reads the files. This module decides where each
part goes (a diffusers folder, or a single-file transformer plus a base folder; the device, or the CPU for
the memory modes), prepares it for its speed profile, and keeps models loaded until the budget needs the
room. Text encoders and VAE that several single-file models borrow from one base folder are loaded once and
shared.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from daguerre.engine import memory, profiles
from daguerre.engine.models import loading
from daguerre.engine.models.catalog import Catalog, ModelSpec
from daguerre.engine.models.hashes import HashCache, transformer_files
from daguerre.engine.schedulers import make_scheduler
from daguerre.errors import ModelLoadError, RequestError
from daguerre.request import DEFAULT_SCHEDULER, MAX_SEQUENCE_LENGTH

log = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_device(preference: str | None = None) -> torch.device:
    """cuda > mps > cpu, unless a device is asked for (and then it must exist)."""
    if preference is not None:
        if preference == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError("device 'cuda' was requested but no CUDA device is available", parameter="device")
        if preference == "mps" and not torch.backends.mps.is_available():
            raise ModelLoadError("device 'mps' was requested but MPS is not available", parameter="device")
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(device: torch.device, preference: str | None = None) -> torch.dtype:
    """bf16 on GPUs, fp32 on the CPU (bf16 matmuls are slow there), unless overridden."""
    if preference is not None:
        return DTYPES[preference]
    return torch.float32 if device.type == "cpu" else torch.bfloat16


def default_budget_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * 0.9)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 16 * 2**30
    return int(ram * 0.6)


def tensor_bytes(t: torch.Tensor) -> int:
    """Memory a tensor holds; for quantized tensor subclasses (torchao int8/fp8), what their parts hold."""
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def module_bytes(module: torch.nn.Module) -> int:
    return sum(tensor_bytes(t) for t in (*module.parameters(), *module.buffers()))


def unique_bytes(models) -> int:
    """Memory held by these loaded models, counting parts they share (base-folder encoders) once."""
    seen: dict[int, int] = {}
    for m in models:
        for mod in m.modules:
            seen.setdefault(id(mod), module_bytes(mod))
    return sum(seen.values())


@dataclass
class LoadedModel:
    """A model resident on the device: its FluxPipeline (the shared components) and what it costs."""

    spec: ModelSpec
    pipe: object  # diffusers FluxPipeline holding every component
    checkpoint_hash: str  # sha256 of the transformer weights (hex)
    device: torch.device
    dtype: torch.dtype
    pipelines: dict[str, object] = field(default_factory=dict)  # workflow -> pipeline sharing `pipe`'s parts
    users: int = 0  # leases in progress; a model in use is never evicted
    adapters: OrderedDict = field(default_factory=OrderedDict)  # adapter name -> LoRA path, LRU order
    max_adapters: int = 8  # loaded LoRAs kept for hot-swap; the least recently used beyond this are deleted
    controlnets: OrderedDict = field(default_factory=OrderedDict)  # ControlNet folder -> module, LRU order
    max_controlnets: int = 4
    ip_adapters: tuple = ()  # IP-Adapter files loaded now, in order (diffusers holds one set at a time)
    control_lora: tuple | None = None  # (adapter name, file) of the BFL control LoRA loaded now
    applied: profiles.Applied = field(default_factory=profiles.Applied)  # the speed profile it runs with

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def modules(self) -> list[torch.nn.Module]:
        c = self.pipe.components
        return [c[k] for k in ("transformer", "text_encoder", "text_encoder_2", "vae")]

    def pipeline(self, workflow: str):
        """The diffusers pipeline for a workflow, built once from the same loaded components."""
        if workflow not in self.pipelines:
            from diffusers import (
                FluxControlImg2ImgPipeline,
                FluxControlInpaintPipeline,
                FluxControlPipeline,
                FluxFillPipeline,
                FluxImg2ImgPipeline,
                FluxInpaintPipeline,
                FluxKontextPipeline,
                FluxPipeline,
            )

            cls = {
                "txt2img": FluxPipeline,
                "img2img": FluxImg2ImgPipeline,
                "inpaint": FluxInpaintPipeline,
                "fill": FluxFillPipeline,
                "kontext": FluxKontextPipeline,
                "control-txt2img": FluxControlPipeline,
                "control-img2img": FluxControlImg2ImgPipeline,
                "control-inpaint": FluxControlInpaintPipeline,
            }[workflow]
            accepted = inspect.signature(cls.__init__).parameters
            pipe = cls(**{k: v for k, v in self.pipe.components.items() if k in accepted})
            pipe.set_progress_bar_config(disable=True)
            self.pipelines[workflow] = pipe
        return self.pipelines[workflow]

    def controlnet_pipeline(self, workflow: str, nets: list):
        """A ControlNet pipeline for txt2img / img2img / inpaint with these ControlNets (loaded once, cached).

        Built per request (it only holds references), around the same resident components.
        """
        from diffusers import (
            FluxControlNetImg2ImgPipeline,
            FluxControlNetInpaintPipeline,
            FluxControlNetPipeline,
            FluxMultiControlNetModel,
        )

        cls = {
            "txt2img": FluxControlNetPipeline,
            "img2img": FluxControlNetImg2ImgPipeline,
            "inpaint": FluxControlNetInpaintPipeline,
        }[workflow]
        accepted = inspect.signature(cls.__init__).parameters
        parts = {k: v for k, v in self.pipe.components.items() if k in accepted}
        pipe = cls(**parts, controlnet=nets[0] if len(nets) == 1 else FluxMultiControlNetModel(nets))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def controlnet(self, path: Path):
        """The ControlNet module for a diffusers folder or an XLabs file, loaded on first use and kept
        (LRU, max_controlnets)."""
        if path in self.controlnets:
            self.controlnets.move_to_end(path)
            return self.controlnets[path]
        net = loading.load_controlnet(path, self.dtype, self.device, self.pipe.transformer.config.axes_dims_rope)
        self.controlnets[path] = net
        while len(self.controlnets) > self.max_controlnets:
            self.controlnets.popitem(last=False)
        return net


class ModelManager:
    """Keeps loaded models resident, evicting the least recently used under a memory budget.

    `lease(ref)` is called by the engine around each generation: it loads the model if needed
    (one load per model at a time, however many threads ask) and pins it until released.
    """

    def __init__(
        self,
        *,
        catalog: Catalog,
        device: str | None = None,
        dtype: str | None = None,
        memory_budget_gb: float | None = None,
        cache_dir: Path,
        profile: str = "exact",
        compile_: bool | None = None,
        offload: str = "none",
        t5: str = "device",
        attention: str = "auto",
    ):
        self.catalog = catalog
        self.profile = profiles.check(profile)
        self.offload = memory.check_offload(offload)  # per model: the catalog entry's offload
        self.t5 = memory.check_t5(t5)
        self.compile = compile_  # None: on for CUDA, off on the CPU
        self.cache_dir = Path(cache_dir)
        self.device = resolve_device(device)
        self.attention = profiles.attention_backend(attention, self.device)  # resolved; impossible ones fail now
        self.dtype = resolve_dtype(self.device, dtype)
        self.budget = int(memory_budget_gb * 2**30) if memory_budget_gb else default_budget_bytes(self.device)
        self.hashes = HashCache(cache_dir)
        self._resident: OrderedDict[str, LoadedModel] = OrderedDict()  # LRU order: oldest first
        self._shared: dict[tuple, torch.nn.Module] = {}  # (folder, part, dtype) -> module borrowed by models
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    @contextmanager
    def lease(self, ref: str) -> Iterator[LoadedModel]:
        """The loaded model for `ref`, pinned (not evictable) for the duration of the block."""
        spec = self.catalog.get(ref)
        if spec.kind == "lora":
            raise RequestError(
                f"{ref!r} is a LoRA, not a base model: pass it in lora with a FLUX.1 model", parameter="model"
            )
        model = self._get(spec)
        try:
            yield model
        finally:
            with self._lock:
                model.users -= 1

    def resident(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._resident.values())

    def resident_bytes(self) -> int:
        return unique_bytes(self.resident())

    def unload(self, ref: str) -> None:
        spec = self.catalog.get(ref)
        with self._lock:
            model = self._resident.get(spec.id)
            if model is not None and model.users == 0:
                self._drop(spec.id)

    def _get(self, spec: ModelSpec) -> LoadedModel:
        with self._lock:
            if spec.id in self._resident:
                self._resident.move_to_end(spec.id)
                model = self._resident[spec.id]
                model.users += 1
                return model
            gate = self._loading.setdefault(spec.id, threading.Lock())
        with gate:  # a second caller for the same model waits here for the first load
            with self._lock:
                if spec.id in self._resident:
                    model = self._resident[spec.id]
                    self._resident.move_to_end(spec.id)
                    model.users += 1
                    return model
                self._make_room(spec.size_bytes)
            model = self._load(spec)
            with self._lock:
                self._resident[spec.id] = model
                model.users += 1
                self._make_room(0)
            return model

    def _make_room(self, incoming: int) -> None:
        """Evict idle models, oldest first, until the resident set plus `incoming` fits (lock held)."""
        for model_id in list(self._resident):
            if unique_bytes(self._resident.values()) + incoming <= self.budget:
                return
            if self._resident[model_id].users == 0:
                log.info("evicting %s to stay within the %.1f GiB budget", model_id, self.budget / 2**30)
                self._drop(model_id)

    def _drop(self, model_id: str) -> None:
        self._resident.pop(model_id)
        live = {id(mod) for m in self._resident.values() for mod in m.modules}
        self._shared = {k: v for k, v in self._shared.items() if id(v) in live}
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _load(self, spec: ModelSpec) -> LoadedModel:
        """Load every part of a model in the run dtype on the run device."""
        from diffusers import FluxPipeline

        t0 = time.perf_counter()
        log.info("loading %s from %s (%s, %s)", spec.name, spec.path, self.dtype, self.device)
        profile, offload = spec.profile or self.profile, spec.offload or self.offload
        memory.check_supported(offload, self.t5, device=self.device, profile=profile)
        # 1. Where the non-transformer parts come from: the model's own folder or its base.
        folder = spec.path if spec.format == "folder" else self.catalog.resolve_base(spec)

        # 2. The transformer (the only part a fine-tune changes).
        def where(part: str) -> torch.device:
            return memory.load_device(part, self.device, offload, self.t5)

        transformer = loading.load_transformer(spec, folder, self.dtype, where("transformer"))
        # 3. The rest, shared with every model that uses the same folder and placement.
        parts = {name: self._shared_part(folder, name, where(name)) for name in loading.PARTS}
        scheduler = make_scheduler(DEFAULT_SCHEDULER, loading.load_scheduler_config(folder), spec.kind)
        pipe = FluxPipeline(transformer=transformer, scheduler=scheduler, **parts)
        pipe.set_progress_bar_config(disable=True)
        digest = self.hashes.sha256(transformer_files(spec))
        memory.apply_offload(pipe, offload, self.device)
        applied = profiles.apply(
            pipe,
            profile,
            device=self.device,
            # Offloaded models compile only when asked: the hooks move weights under the compiled blocks.
            compile_=self.compile if offload == "none" else bool(self.compile),
            cache_dir=self.cache_dir,
            kind=spec.kind,
            max_seq=MAX_SEQUENCE_LENGTH.get(spec.kind, 512),
            attention=self.attention,
        )
        if offload != "none":
            applied.notes.append(f"offload {offload}")
        if self.t5 != "device":
            applied.notes.append(f"t5 {self.t5}")
        profiles.log_applied(spec.name, applied)
        log.info("loaded %s in %.1f s", spec.name, time.perf_counter() - t0)
        return LoadedModel(
            spec=spec, pipe=pipe, checkpoint_hash=digest, device=self.device, dtype=self.dtype, applied=applied
        )

    def _shared_part(self, folder: Path, name: str, device: torch.device):
        key = (str(folder), name, self.dtype, str(device))
        with self._lock:
            if key in self._shared:
                return self._shared[key]
        part = loading.load_part(folder, name, self.dtype, device)
        if name == "text_encoder_2":  # T5 on the CPU or in int8, per settings `t5`
            part = memory.prepare_t5(part, self.t5, self.device)
        with self._lock:
            return self._shared.setdefault(key, part)
