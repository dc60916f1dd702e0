"""IP-Adapters: load the request's adapters (or none) and embed their image prompts once per request."""

from __future__ import annotations

import numpy as np
import torch

from daguerre.engine.models.adapters import set_ip_adapters
from daguerre.engine.models.resident import LoadedModel, ModelManager
from daguerre.engine.plan import Plan
from daguerre.errors import UnsupportedError
from daguerre.recipe import pixels_sha256
from daguerre.request import GenerationRequest


def ip_adapter_inputs(
    models: ModelManager, model: LoadedModel, req: GenerationRequest, plan: Plan
) -> tuple[dict, tuple]:
    """Load the request's IP-Adapters (or unload all) and embed their guide images once.

    Several guide images for one adapter are averaged in CLIP image-embedding space. Returns the
    pipeline arguments and the recipe entries.
    """
    # Their kinds were checked with the request (plan.check_kinds).
    specs = [models.catalog.get(ip.model, parameter="ipAdapters.model") for ip in req.ip_adapters]
    # diffusers' pipelines that take image-prompt embeddings: txt2img/img2img/inpaint, Kontext, and
    # the txt2img ControlNet pipeline.
    if specs and plan.pipeline not in ("txt2img", "img2img", "inpaint", "kontext"):
        raise UnsupportedError(
            f"ipAdapters are not supported with {plan.pipeline} models/workflows yet", parameter="ipAdapters"
        )
    if specs and req.controlnets and plan.pipeline != "txt2img":
        raise UnsupportedError(
            f"ipAdapters together with controlNet work for txt2img only (not {plan.pipeline} yet)",
            parameter="ipAdapters",
        )
    set_ip_adapters(model, specs)
    if not specs:
        return {}, ()
    pipe = model.pipe
    # One adapter: a float (a one-element list would be read as per-block scales).
    weights = [ip.weight for ip in req.ip_adapters]
    pipe.set_ip_adapter_scale(weights[0] if len(weights) == 1 else weights)
    with torch.inference_mode():
        # (1, 1, D) per adapter: the shape diffusers builds from an image (one image, one token set)
        embeds = [
            pipe.encode_image(list(ip.guide_images), model.device, 1).mean(0, keepdim=True)[None]
            for ip in req.ip_adapters
        ]
        # diffusers always embeds a black image as the negative side (used by true CFG), and
        # shapes it (width, height, 3); computed here because the workflow pipelines hold no encoder.
        black = np.zeros((req.width, req.height, 3), dtype=np.uint8)
        neg = pipe.encode_image(black, model.device, 1)[None]
        kwargs = {
            "ip_adapter_image_embeds": embeds,
            "negative_ip_adapter_image_embeds": [neg for _ in req.ip_adapters],
        }
    recipe = tuple(
        {
            "model": s.id,
            "sha256": models.hashes.sha256([s.path]),
            "weight": ip.weight,
            "guide_sha256": [pixels_sha256(g) for g in ip.guide_images],
        }
        for s, ip in zip(specs, req.ip_adapters, strict=True)
    )
    return kwargs, recipe
