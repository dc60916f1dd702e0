"""Loading FLUX.1 models onto a device, and keeping them resident under a memory budget.

The model code is diffusers' and transformers'; this module only decides where each part
comes from (a diffusers folder, or a single-file transformer plus a base folder), in which
dtype and on which device, and which models stay loaded. Text encoders and VAE that several
single-file models borrow from one base folder are loaded once and shared.
"""

from __future__ import annotations

import hashlib
import inspect
import json
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

from daguerre.engine import checkpoints, memory, profiles
from daguerre.engine.catalog import Catalog, ModelSpec
from daguerre.engine.schedulers import make_scheduler
from daguerre.errors import ModelLoadError, RequestError, UnsupportedError

log = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Default sampling settings of the FLUX.1 families (BFL's reference CLI and diffusers' docs):
# schnell is timestep-distilled for 4 steps and was trained with 256 T5 tokens; dev with 512.
DEFAULT_STEPS = {"schnell": 4, "dev": 28, "fill": 28, "kontext": 28, "control": 28}
# Fill was distilled at guidance 30, Kontext at 2.5, Canny at 30 and Depth at 10 (BFL's reference
# settings); a control model's default is Depth's when its name says depth, else Canny's.
DEFAULT_GUIDANCE = {"dev": 3.5, "fill": 30.0, "kontext": 2.5, "control": 30.0, "control-depth": 10.0}
MAX_SEQUENCE_LENGTH = {"schnell": 256, "dev": 512, "fill": 512, "kontext": 512, "control": 512}


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
        from diffusers import FluxControlNetModel

        if path in self.controlnets:
            self.controlnets.move_to_end(path)
            return self.controlnets[path]
        try:
            if Path(path).is_file():
                net = self._xlabs_controlnet(Path(path))
            else:
                net = FluxControlNetModel.from_pretrained(path, torch_dtype=self.dtype)
            net = net.to(self.device).eval()
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise ModelLoadError(f"{path}: cannot load the FLUX.1 ControlNet: {e}", parameter="controlNet.model") from e
        self.controlnets[path] = net
        while len(self.controlnets) > self.max_controlnets:
            self.controlnets.popitem(last=False)
        return net

    def _xlabs_controlnet(self, path: Path):
        from diffusers import FluxControlNetModel
        from safetensors.torch import load_file

        sd = checkpoints.xlabs_controlnet_to_diffusers(load_file(str(path)))
        config = checkpoints.xlabs_controlnet_config(sd, self.pipe.transformer.config.axes_dims_rope)
        with torch.device("meta"):
            net = FluxControlNetModel(**config)
        net.load_state_dict({k: v.to(self.dtype) for k, v in sd.items()}, strict=True, assign=True)
        return net


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
    from daguerre.engine import loras as lora_files

    pipe = model.pipe
    sd = lora_files.read(path)
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


def _attach_gguf(model: torch.nn.Module, sd: dict, compute_dtype: torch.dtype) -> set[str]:
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


class HashCache:
    """sha256 of weight files, remembered by (path, size, mtime) so a 24 GB file is read once."""

    def __init__(self, folder: Path):
        self.path = folder / "hashes.json"
        self._lock = threading.Lock()

    def sha256(self, files: list[Path]) -> str:
        digests = [self._file(f) for f in sorted(files)]
        if len(digests) == 1:
            return digests[0]
        return hashlib.sha256("".join(digests).encode()).hexdigest()

    def _file(self, f: Path) -> str:
        st = f.stat()
        key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        with self._lock:
            cache = self._read()
            if key in cache:
                return cache[key]
        h = hashlib.sha256()
        with f.open("rb") as fh:
            while chunk := fh.read(16 * 2**20):
                h.update(chunk)
        digest = h.hexdigest()
        with self._lock:
            cache = self._read()
            cache[key] = digest
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(cache, indent=0))
                tmp.replace(self.path)
            except OSError as e:  # a read-only cache folder only costs re-hashing
                log.warning("cannot write hash cache %s: %s", self.path, e)
        return digest

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}


def transformer_files(spec: ModelSpec) -> list[Path]:
    if spec.format == "single-file":
        return [spec.path]
    files = sorted((spec.path / "transformer").glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{spec.path}/transformer has no .safetensors weights", parameter="model")
    return files


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

        transformer = self._load_transformer(spec, folder, where("transformer"))
        # 3. The rest, shared with every model that uses the same folder and placement.
        parts = {
            name: self._shared_part(folder, name, where(name))
            for name in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae")
        }
        scheduler = self._scheduler(folder, spec.kind)
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

    def _load_transformer(self, spec: ModelSpec, folder: Path, device: torch.device) -> torch.nn.Module:
        from accelerate import init_empty_weights
        from diffusers import FluxTransformer2DModel

        try:
            if spec.format == "folder":
                model = FluxTransformer2DModel.from_pretrained(
                    spec.path, subfolder="transformer", torch_dtype=self.dtype
                )
            else:
                sd, implied = checkpoints.load_transformer_state_dict(spec.path, self.dtype, device)
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
                quantized = _attach_gguf(model, sd, self.dtype)
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

    def _shared_part(self, folder: Path, name: str, device: torch.device):
        key = (str(folder), name, self.dtype, str(device))
        with self._lock:
            if key in self._shared:
                return self._shared[key]
        part = self._load_part(folder, name, device)
        with self._lock:
            return self._shared.setdefault(key, part)

    def _load_part(self, folder: Path, name: str, device: torch.device):
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
            part = cls.from_pretrained(sub, torch_dtype=self.dtype).to(device).eval()
        except (OSError, ValueError, RuntimeError) as e:
            raise ModelLoadError(f"{sub}: cannot load {name}: {e}", parameter="model") from e
        if name == "text_encoder_2":  # T5 on the CPU or in int8, per settings `t5`
            part = memory.prepare_t5(part, self.t5, self.device)
        return part

    def _scheduler(self, folder: Path, kind: str):
        from diffusers import FlowMatchEulerDiscreteScheduler

        config = dict(FlowMatchEulerDiscreteScheduler.load_config(folder, subfolder="scheduler"))
        return make_scheduler("Default", config, kind)
