"""Image composition the pipelines lack: outpaint canvases and feathered paste-back.

Both keep the promise that pixels outside the mask come back unchanged: the blend weight is
the mask itself, softened only inwards, so it is exactly 0 wherever the mask is 0.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter


def outpaint_canvas(
    image: Image.Image,
    *,
    top: int,
    bottom: int,
    left: int,
    right: int,
) -> tuple[Image.Image, Image.Image]:
    """(canvas, mask): the image placed on a larger canvas whose new border repeats the edge pixels
    (a neutral start for the denoiser), and a mask that is white exactly on the new border."""
    src = np.asarray(image.convert("RGB"))  # (H, W, 3)
    canvas = np.pad(src, ((top, bottom), (left, right), (0, 0)), mode="edge")
    mask = np.full(canvas.shape[:2], 255, dtype=np.uint8)
    mask[top : top + src.shape[0], left : left + src.shape[1]] = 0
    return Image.fromarray(canvas, "RGB"), Image.fromarray(mask, "L")


def feather_alpha(mask: Image.Image, radius: float, *, inward: bool) -> np.ndarray:
    """(H, W) blend weights in [0, 1] from a mask, softened over `radius` pixels at its edge.

    inward=True (inpainting with maskMargin): exactly 0 outside the mask, ramping to 1 inside, so
    untouched pixels stay untouched. inward=False (outpainting): exactly 1 on the new border,
    reaching a little over the source edge to hide the seam, 0 beyond that.
    """
    binary = np.asarray(mask.convert("L")) >= 128
    if radius <= 0:
        return binary.astype(np.float32)
    # sigma = radius / 3: the ramp is spent within about `radius` pixels of the edge.
    blurred = Image.fromarray((binary * 255).astype(np.uint8), "L").filter(ImageFilter.GaussianBlur(radius / 3))
    soft = np.asarray(blurred, dtype=np.float32) / 255.0  # 0.5 on the edge
    if inward:
        return np.where(binary, np.clip(2.0 * soft - 1.0, 0.0, 1.0), 0.0).astype(np.float32)
    return np.where(binary, 1.0, np.clip(2.0 * soft, 0.0, 1.0)).astype(np.float32)


def composite(original: Image.Image, generated: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(H, W, 3) float pixels: the generated image where alpha is 1, the original where it is 0."""
    orig = np.asarray(original.convert("RGB"), dtype=np.float32) / 255.0
    a = alpha[..., None]
    return (orig * (1.0 - a) + generated * a).astype(np.float32)
