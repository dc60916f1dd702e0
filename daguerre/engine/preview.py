"""Progress while a request runs: per-step events with a cheap latent preview, and cooperative cancellation."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from PIL import Image

# FLUX.1 latent -> RGB projection for previews: ComfyUI's published factors for the 16-channel
# FLUX VAE latent (comfy/latent_formats.py, class Flux), applied to the scaled latent.
FLUX_LATENT_RGB = torch.tensor(
    [
        [-0.0346, 0.0244, 0.0681],
        [0.0034, 0.0210, 0.0687],
        [0.0275, -0.0668, -0.0433],
        [-0.0174, 0.0160, 0.0617],
        [0.0859, 0.0721, 0.0329],
        [0.0004, 0.0383, 0.0115],
        [0.0405, 0.0861, 0.0915],
        [-0.0236, -0.0185, -0.0259],
        [-0.0245, 0.0250, 0.1180],
        [0.1008, 0.0755, -0.0421],
        [-0.0515, 0.0201, 0.0011],
        [0.0428, -0.0012, -0.0036],
        [0.0817, 0.0765, 0.0749],
        [-0.1264, -0.0522, -0.1103],
        [-0.0280, -0.0881, -0.0499],
        [-0.1262, -0.0982, -0.0778],
    ]
)  # (16, 3)
FLUX_LATENT_RGB_BIAS = torch.tensor([-0.0329, -0.0718, -0.0851])  # (3,)


@dataclass(frozen=True)
class ProgressEvent:
    """One denoising step done, for the images of the current chunk."""

    step: int  # 1-based step within this chunk's run
    total: int  # denoising steps this chunk runs (img2img: about steps * strength)
    elapsed: float  # seconds since the request started
    images: tuple[int, ...]  # indices (0-based, within the request) of the images this step advanced
    preview: Image.Image | None = None  # cheap latent->RGB preview of the chunk's first image (1/8 size)


class CancelToken:
    """Set from any thread; the engine stops at the next step boundary with Cancelled."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


def latent_preview(latents: torch.Tensor, pipe, height: int, width: int) -> Image.Image:
    """Preview of the first image from packed FLUX latents (B, L, 64): 1/8 size, no VAE."""
    x = pipe._unpack_latents(latents[:1].float().cpu(), height, width, pipe.vae_scale_factor)  # (1, 16, h, w)
    rgb = torch.einsum("bchw,cr->bhwr", x, FLUX_LATENT_RGB) + FLUX_LATENT_RGB_BIAS  # (1, h, w, 3)
    return Image.fromarray(((rgb[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy(), "RGB")
