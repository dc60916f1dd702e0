"""hiresFix: a first pass at half the final size, an upscale to the final size, and an image-to-image refine.

first pass   the request at (width/2, height/2), each side rounded to a multiple of 16 (what FLUX.1 takes)
upscale      an upscaler model (spandrel: ESRGAN-class files, either key layout), run in overlapping tiles
             blended with linear ramps (the tile halves on out-of-memory), then resized to the final
             size; or, with model "latent" (or no upscaler configured), the first pass's latents
             resized bicubically, with no decode in between
refine       diffusers' Flux image-to-image at the final size with hiresFix.strength and .steps, each
             image with a fresh generator seeded like its first pass (seed + index), so image i equals
             FluxPipeline -> this upscale -> FluxImg2ImgPipeline run by hand with the same seeds
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from daguerre.errors import ModelLoadError, RequestError
from daguerre.request import HIRES_LATENT, HIRES_SCALE

FLUX_MULTIPLE = 16  # FLUX.1 sizes: multiples of the VAE factor (8) times the patch size (2)
TILE = 512  # input pixels per upscaler tile side
OVERLAP = 32  # input pixels two neighbouring tiles share
MIN_TILE = 64
MIN_FIRST = 64  # the smallest first-pass side
CACHED = 2  # upscalers kept loaded


def first_size(width: int, height: int) -> tuple[int, int]:
    """The first pass's size: half the final size, each side a multiple of 16 (at least 64)."""
    return tuple(max(MIN_FIRST, round(v / HIRES_SCALE / FLUX_MULTIPLE) * FLUX_MULTIPLE) for v in (width, height))


@dataclass(frozen=True)
class HiresPlan:
    """hiresFix as one request runs it."""

    upscaler: object | None  # the loaded spandrel model; None = latent upscale
    upscaler_id: str  # the catalog id, or "latent"
    sha256: str | None
    scale: int | None  # the upscaler's own factor
    first: tuple[int, int]  # (width, height) of the first pass
    steps: int
    strength: float

    def recipe(self) -> dict:
        return {"upscaler": self.upscaler_id, "sha256": self.sha256, "scale": self.scale,
                "first_width": self.first[0], "first_height": self.first[1], "steps": self.steps,
                "strength": self.strength}  # fmt: skip


class Upscalers:
    """Upscaler models loaded with spandrel, the last CACHED of them kept (they are small: 16-70 MB)."""

    def __init__(self, device: torch.device):
        self.device = device
        self._loaded: OrderedDict[Path, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path):
        with self._lock:
            if path in self._loaded:
                self._loaded.move_to_end(path)
                return self._loaded[path]
            model = load_upscaler(path, self.device)
            self._loaded[path] = model
            while len(self._loaded) > CACHED:
                self._loaded.popitem(last=False)
            return model


def load_upscaler(path: Path, device: torch.device):
    """A spandrel image model (ESRGAN, RealESRGAN, UltraSharp and the other architectures spandrel knows), or,
    where spandrel does not import (it needs torchvision), the built-in ESRGAN-class reader (esrgan.py)."""
    try:
        import spandrel
    except Exception:  # noqa: BLE001 - absent, or its torchvision does not load with this torch
        from daguerre.engine.features import esrgan

        return esrgan.Descriptor(esrgan.load(path, device))
    try:
        descriptor = spandrel.ModelLoader(device=device).load_from_file(str(path))
    except Exception as e:  # noqa: BLE001 - spandrel raises many kinds on a file it cannot read
        raise ModelLoadError(f"{path}: not an upscaler spandrel can load ({e})", parameter="hiresFix.model") from e
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.scale < 1:
        raise ModelLoadError(f"{path}: not an image upscaler (a {type(descriptor).__name__})",
                             parameter="hiresFix.model")  # fmt: skip
    return descriptor.eval()


def plan(engine, req) -> HiresPlan | None:
    """What the request's hiresFix runs as: its upscaler loaded (the engine's default when it names none)."""
    h = req.hires_fix
    if h is None:
        return None
    ref = h.model or engine.upscaler or HIRES_LATENT
    first = first_size(req.width, req.height)
    if ref == HIRES_LATENT:
        return HiresPlan(None, HIRES_LATENT, None, None, first, h.steps, h.strength)
    spec = engine.models.catalog.get(ref, parameter="hiresFix.model")
    if spec.kind != "upscaler":
        raise RequestError(f"hiresFix.model {ref!r} is a {spec.kind} model, not an upscaler",
                           parameter="hiresFix.model")  # fmt: skip
    model = engine.upscalers.get(spec.path)
    digest = engine.models.hashes.sha256([spec.path])
    return HiresPlan(model, spec.id, digest, model.scale, first, h.steps, h.strength)


# ---- upscaling


def upscale(
    model, pixels: np.ndarray, size: tuple[int, int], *, tile: int = TILE, overlap: int = OVERLAP
) -> np.ndarray:
    """(H, W, 3) float pixels -> (height, width, 3) at `size` = (width, height): the model in tiles, then a
    bicubic resize to the exact size."""
    x = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None].float()
    device = next(model.model.parameters()).device
    while True:
        try:
            with torch.inference_mode():
                y = tiled(lambda t: model(t.to(device)).float().cpu(), x, model.scale, tile, overlap)
            break
        except torch.OutOfMemoryError:
            if tile <= MIN_TILE:
                raise
            tile //= 2  # the same image in smaller tiles
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    width, height = size
    y = torch.nn.functional.interpolate(y, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return y[0].clamp(0, 1).permute(1, 2, 0).numpy()


def tiled(fn, x: torch.Tensor, scale: int, tile: int, overlap: int) -> torch.Tensor:
    """fn over (1, C, H, W) in overlapping tiles of `tile` pixels, blended where they overlap (linear ramps that
    never reach zero, normalized by the summed weights), so there is no seam and no grid."""
    _, c, h, w = x.shape
    if h <= tile and w <= tile:
        return fn(x)
    out = torch.zeros(1, c, h * scale, w * scale)
    weight = torch.zeros(1, 1, h * scale, w * scale)
    for y0 in _starts(h, tile, overlap):
        for x0 in _starts(w, tile, overlap):
            th, tw = min(tile, h), min(tile, w)
            up = fn(x[:, :, y0 : y0 + th, x0 : x0 + tw])
            ramp = _ramp(th * scale, tw * scale, overlap * scale, top=y0 > 0, left=x0 > 0,
                         bottom=y0 + th < h, right=x0 + tw < w)  # fmt: skip
            out[:, :, y0 * scale : (y0 + th) * scale, x0 * scale : (x0 + tw) * scale] += up * ramp
            weight[:, :, y0 * scale : (y0 + th) * scale, x0 * scale : (x0 + tw) * scale] += ramp
    return out / weight


def _starts(n: int, tile: int, overlap: int) -> list[int]:
    if n <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, n - tile, stride))
    return [*starts, n - tile]


def _ramp(h: int, w: int, width: int, *, top: bool, left: bool, bottom: bool, right: bool) -> torch.Tensor:
    """A (1, 1, h, w) weight: 1 inside, rising linearly over `width` pixels along the edges that meet another tile."""

    def axis(n: int, start: bool, end: bool) -> torch.Tensor:
        v = torch.ones(n)
        k = min(width, n // 2)
        if k:
            rise = (torch.arange(k) + 0.5) / k
            if start:
                v[:k] = rise
            if end:
                v[n - k :] = rise.flip(0)
        return v

    return (axis(h, top, bottom)[:, None] * axis(w, left, right)[None, :])[None, None]


def latent_upscale(pipe, latents: torch.Tensor, first: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Packed first-pass latents (B, L, 64) -> unpacked latents (B, 16, height/8, width/8) at the final size."""
    fw, fh = first
    width, height = size
    x = pipe._unpack_latents(latents, fh, fw, pipe.vae_scale_factor)
    factor = pipe.vae_scale_factor
    return torch.nn.functional.interpolate(x.float(), size=(height // factor, width // factor), mode="bicubic",
                                           align_corners=False).to(latents.dtype)  # fmt: skip


def refine_inputs(pipe, hp: HiresPlan, out, size: tuple[int, int]):
    """The refine pass's `image`: upscaled pixels (B, H, W, 3) float, or latents (B, 16, h, w)."""
    if hp.upscaler is None:
        return latent_upscale(pipe, out, hp.first, size)
    return np.stack([upscale(hp.upscaler, np.asarray(im, dtype=np.float32), size) for im in out])


def refine(model, seeds: list[int], req, hp: HiresPlan, plan, out, cond: dict, callback) -> list:
    """The second pass: the first pass (`out`: pixels, or latents for the latent upscale) upscaled to the final
    size and refined with image-to-image; each image with a fresh generator seeded as its first pass."""
    from daguerre.engine.samplers import NOISE_SALT
    from daguerre.engine.schedulers import make_scheduler

    pipe = model.pipeline("img2img")
    image = refine_inputs(pipe, hp, out, (req.width, req.height))
    noise = [torch.Generator("cpu").manual_seed((s + NOISE_SALT) % 2**64) for s in seeds]
    pipe.scheduler = make_scheduler(req.scheduler, dict(model.pipe.scheduler.config), model.kind, noise)
    with torch.inference_mode():
        return pipe(
            image=image,
            height=req.height,
            width=req.width,
            strength=hp.strength,
            num_inference_steps=hp.steps,
            max_sequence_length=plan.max_seq,
            generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
            output_type="np",
            callback_on_step_end=callback,
            **cond,
        ).images
