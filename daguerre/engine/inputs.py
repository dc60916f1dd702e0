"""Image inputs: what img2img, inpaint, outpaint and mask-crop inpainting give the pipelines, and the
composition the pipelines lack (outpaint canvases, feathered paste-back).

Outpaint and mask-crop inpainting keep the promise that pixels outside the mask come back unchanged: the
blend weight is the mask itself, softened only inwards, so it is exactly 0 wherever the mask is 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFilter

from daguerre.request import GenerationRequest

if TYPE_CHECKING:
    from daguerre.engine.plan import Plan


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


MASK_FEATHER = 4  # px of inward feather when a mask crop is pasted back


def image_inputs(req: GenerationRequest, plan: Plan) -> tuple[dict, str, Callable[[np.ndarray], np.ndarray]]:
    """(pipeline image kwargs, output type, finish) for the request's workflow.

    finish turns a pipeline output (H, W, 3 floats) into the final pixels: the identity, or a
    feathered paste onto the source so pixels outside the mask come back as they were.
    """
    if req.workflow == "outpaint":
        o = req.outpaint
        canvas, mask = outpaint_canvas(req.seed_image, top=o.top, bottom=o.bottom, left=o.left, right=o.right)
        alpha = feather_alpha(mask, o.blur, inward=False)
        return {"image": canvas, "mask_image": mask}, "np", lambda px: composite(canvas, px, alpha)
    if req.workflow == "inpaint" and req.mask_margin is not None:
        size = (req.width, req.height)
        source = req.seed_image.resize(size, Image.Resampling.LANCZOS)
        mask = req.mask_image.resize(size, Image.Resampling.BILINEAR)
        alpha = feather_alpha(mask, MASK_FEATHER, inward=True)
        kwargs = {"image": source, "mask_image": mask, "padding_mask_crop": req.mask_margin}
        return kwargs, "pil", lambda px: composite(source, px, alpha)
    kwargs = {}
    if req.seed_image is not None:
        kwargs["image"] = req.seed_image
    if req.mask_image is not None:
        kwargs["mask_image"] = req.mask_image
    return kwargs, "np", lambda px: px
