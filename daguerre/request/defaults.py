"""`resolve`: a validated request with every default that depends on the model's kind filled in.

The API resolves a request at submission (from the catalog, no model loaded), so a queued job holds the
values that will run; the engine resolves again (a resolved request resolves to itself), so a request
from the CLI or a library caller gets the same values. The checks that need only the model's kind
live here too; the ones that need the loaded model stay in the engine's plan.
"""

from __future__ import annotations

import secrets
from dataclasses import replace

from daguerre.errors import RequestError, UnsupportedError
from daguerre.request.limits import (
    DEFAULT_CACHE_MAX_CONSECUTIVE,
    DEFAULT_DB_CACHE_SKIP_INTERVAL,
    DEFAULT_DB_CACHE_THRESHOLD,
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    DEFAULT_STRENGTH,
    DEFAULT_TEA_CACHE_DISTANCE,
    FACE_DEFAULTS,
    FULL_STRENGTH,
    HIRES_STRENGTH,
    LAYER_DIFFUSE_LORA,
    LAYER_DIFFUSE_VAE,
    RANDOM_SEEDS,
)
from daguerre.request.types import AccelOptions, GenerationRequest

BASE_KINDS = ("dev", "schnell", "fill", "kontext", "control")  # kinds a request's model can be


def resolve_accel(a: AccelOptions) -> AccelOptions:
    """The step-cache options with the defaults of the cache that is on filled in (so recipes show them)."""
    if not a.enabled:
        return a
    fill = {"cache_max_consecutive": a.cache_max_consecutive or DEFAULT_CACHE_MAX_CONSECUTIVE}
    if a.tea_cache and a.tea_cache_distance is None:
        fill["tea_cache_distance"] = DEFAULT_TEA_CACHE_DISTANCE
    if a.db_cache:
        if a.db_cache_threshold is None:
            fill["db_cache_threshold"] = DEFAULT_DB_CACHE_THRESHOLD
        if a.db_cache_skip_interval is None:
            fill["db_cache_skip_interval"] = DEFAULT_DB_CACHE_SKIP_INTERVAL
    return replace(a, **fill)


def resolve(req: GenerationRequest, kind: str, *, name: str = "", control: str | None = None) -> GenerationRequest:
    """`req` with steps, guidance, strength, seed and the step-cache defaults of a `kind` model filled in.

    name: the model's short name (for messages). control: "control" or "control-depth" when a FLUX.1
    control checkpoint or control LoRA runs with it (their distilled guidance differs).
    Raises what the kind rules out (CFGScale on schnell, strength on Kontext...).
    """
    workflow = req.workflow
    name = name or req.model
    if kind not in BASE_KINDS:
        raise RequestError(
            f"model {name} is a {kind} model, not a FLUX.1 base model (dev, schnell, fill, kontext or control)",
            parameter="model",
        )
    if kind == "control" and workflow == "outpaint":
        raise UnsupportedError(f"outpaint is not supported with FLUX.1 control model {name}", parameter="model")
    if kind == "kontext" and workflow not in ("txt2img", "img2img"):
        raise UnsupportedError(
            f"model {name} is a FLUX.1 Kontext model: it edits a seedImage used as a reference "
            f"({workflow} is not supported with it yet)",
            parameter="model",
        )
    if kind == "kontext" and req.strength is not None:
        raise RequestError(
            "strength does not apply to Kontext models: the seedImage is a reference, not a start image; omit strength",
            parameter="strength",
        )
    if kind == "fill" and workflow not in ("inpaint", "outpaint"):
        raise RequestError(
            f"model {name} is a FLUX.1 Fill model: it inpaints and outpaints (give a "
            "seedImage with a maskImage or outpaint)",
            parameter="model",
        )
    has_guidance = kind != "schnell"  # schnell was distilled without a guidance input
    if req.guidance is not None and not has_guidance:
        raise RequestError(
            f"CFGScale: {name} is a schnell-type model with no guidance input, so CFGScale would "
            "have no effect; omit it (or use trueCFGScale with a negativePrompt for real CFG)",
            parameter="CFGScale",
        )
    if (req.true_cfg_scale or 0) > 1 and kind == "fill":
        raise UnsupportedError("trueCFGScale is not supported with FLUX.1 Fill models", parameter="trueCFGScale")
    strength = None
    if req.seed_image is not None and kind != "kontext":
        default = FULL_STRENGTH if workflow == "outpaint" or kind == "fill" else DEFAULT_STRENGTH
        strength = req.strength if req.strength is not None else default
    guidance = None
    if has_guidance:
        guidance = req.guidance if req.guidance is not None else DEFAULT_GUIDANCE[control or kind]
    for field, what in (("hires_fix", "hiresFix"), ("face_fix", "ultralytics"), ("layer_diffuse", "layerDiffuse"),
                        ("pulid", "puLID")):  # fmt: skip
        if getattr(req, field) is not None and kind not in ("dev", "schnell"):
            raise UnsupportedError(f"{what} is not supported with FLUX.1 {kind} model {name} (dev- and "
                                   "schnell-type models only)", parameter=what)  # fmt: skip
    steps = req.steps or DEFAULT_STEPS[kind]
    hires = req.hires_fix
    if hires is not None:
        hires = replace(hires, steps=hires.steps or steps,
                        strength=hires.strength if hires.strength is not None else HIRES_STRENGTH)  # fmt: skip
    face = req.face_fix
    if face is not None:
        if face.cfg_scale is not None and not has_guidance:
            raise RequestError(f"ultralytics.CFGScale: {name} is a schnell-type model with no guidance input; omit "
                               "it", parameter="ultralytics.CFGScale")  # fmt: skip
        defaults = {k: v for k, v in FACE_DEFAULTS.items() if k != "cfg_scale" or has_guidance}
        face = replace(face, **{k: v for k, v in defaults.items() if getattr(face, k) is None})
    layers = req.layer_diffuse
    if layers is not None:
        layers = replace(layers, lora=layers.lora or LAYER_DIFFUSE_LORA, vae=layers.vae or LAYER_DIFFUSE_VAE)
    pulid, true_cfg = req.pulid, req.true_cfg_scale
    if pulid is not None:
        start = pulid.cfg_start_step
        if pulid.cfg_start_percentage is not None:
            start = steps * pulid.cfg_start_percentage // 100
        if start is not None and start >= steps:
            raise RequestError(f"puLID.CFGStartStep must be less than steps ({steps}), got {start}",
                               parameter="puLID.CFGStartStep")  # fmt: skip
        if pulid.true_cfg_scale is not None:
            if true_cfg is not None and true_cfg != pulid.true_cfg_scale:
                raise RequestError(f"trueCFGScale {true_cfg} and puLID.trueCFGScale {pulid.true_cfg_scale} disagree; "
                                   "give one of them", parameter="puLID.trueCFGScale")  # fmt: skip
            true_cfg = pulid.true_cfg_scale
        pulid = replace(pulid, cfg_start_step=start, cfg_start_percentage=None, true_cfg_scale=true_cfg)
    return replace(
        req,
        pulid=pulid,
        true_cfg_scale=true_cfg,
        layer_diffuse=layers,
        steps=steps,
        guidance=guidance,
        strength=strength,
        seed=req.seed if req.seed is not None else secrets.randbelow(RANDOM_SEEDS),
        accelerator=resolve_accel(req.accelerator),
        hires_fix=hires,
        face_fix=face,
    )
