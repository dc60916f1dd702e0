"""Flags -> GenerationRequest: the one place the CLI builds a request (generate; reproduce uses the recipe's
own mapping, daguerre.recipe.to_request). Compound flags (--controlnet REF,GUIDE,...) are parsed here."""

from __future__ import annotations

from dataclasses import replace

from daguerre.config import Settings
from daguerre.errors import DaguerreError
from daguerre.request import (
    DEFAULT_SIZE,
    RANGES,
    SIZE_STEP,
    AccelOptions,
    FaceFix,
    GenerationRequest,
    HiresFix,
    LayerDiffuse,
    OutputSpec,
    PuLID,
    SafetyCheck,
    validate,
)

DEFAULT_MODEL = "the catalog's only model"  # what validation sees before the catalog picks the model


def build_request(
    settings: Settings,
    *,
    prompt: str,
    model: str | None,
    negative: str | None,
    width: int | None,
    height: int | None,
    steps: int | None,
    guidance: float | None,
    true_cfg: float | None,
    seed: int | None,
    n: int,
    scheduler: str,
    image: str | None,
    mask: str | None,
    strength: float | None,
    lora: list[str] | None,
    controlnet: list[str] | None,
    ip_adapter: list[str] | None,
    outpaint: str | None,
    mask_margin: int | None,
    tea_cache: float | None,
    db_cache: float | None,
    db_cache_interval: int | None,
    cache_start: int | None,
    cache_end: int | None,
    cache_max_consecutive: int | None,
    enhance: bool,
    character=None,
    weighting: str | None,
    fmt: str,
    quality: int,
    safety: SafetyCheck | None = None,
    hires: str | None = None,
    layer_diffuse: LayerDiffuse | None = None,
    hires_steps: int | None = None,
    hires_strength: float | None = None,
    face: FaceFix | None = None,
    id_images: list[str] | None = None,
    id_weight: float | None = None,
    id_cfg_start: int | None = None,
) -> GenerationRequest:
    """The request `daguerre generate` makes, validated (before any model is looked up: a typo answers at once).

    model None (not given) stays empty: the catalog's only model is chosen once the catalog is read.
    character: the saved character, whose anchor and seed are applied here.
    """
    from daguerre.imaging import load_image

    limits = settings.image_limits
    seed_image = load_image(image, parameter="seedImage", limits=limits) if image else None
    mask_image = load_image(mask, parameter="maskImage", limits=limits, mask=True) if mask else None
    extend = outpaint_sides(outpaint) if outpaint else None
    if extend is not None and seed_image is not None and width is None and height is None:
        width = seed_image.width + extend.left + extend.right
        height = seed_image.height + extend.top + extend.bottom
    if seed_image is not None and (width is None or height is None):
        # Default to the source's size, rounded down to the 64-pixel grid.
        lo, hi = RANGES["width"]
        width = width or max(lo, min(hi, seed_image.width // SIZE_STEP * SIZE_STEP))
        height = height or max(lo, min(hi, seed_image.height // SIZE_STEP * SIZE_STEP))
    name = None
    if character is not None:
        prompt, seed = character.resolve(prompt, seed)
        name = character.name
    accel = AccelOptions(
        tea_cache=tea_cache is not None,
        tea_cache_distance=tea_cache,
        db_cache=db_cache is not None,
        db_cache_threshold=db_cache,
        db_cache_skip_interval=db_cache_interval,
        cache_start_percent=cache_start,
        cache_end_percent=cache_end,
        cache_max_consecutive=cache_max_consecutive,
    )
    req = GenerationRequest(
        accelerator=accel,
        enhance_prompt=enhance,
        character=name,
        safety=safety,
        hires_fix=_hires(hires, hires_steps, hires_strength),
        face_fix=face,
        layer_diffuse=layer_diffuse,
        pulid=PuLID(
            images=tuple(load_image(x, parameter="puLID.images", limits=limits) for x in id_images),
            id_weight=1.0 if id_weight is None else id_weight,
            cfg_start_step=id_cfg_start,
        )
        if id_images
        else None,
        model=model or "",
        positive_prompt=prompt,
        negative_prompt=negative,
        width=width or DEFAULT_SIZE,
        height=height or DEFAULT_SIZE,
        steps=steps,
        guidance=guidance,
        true_cfg_scale=true_cfg,
        seed=seed,
        number_results=n,
        scheduler=scheduler,
        seed_image=seed_image,
        mask_image=mask_image,
        strength=strength,
        output=OutputSpec(format=fmt.upper(), quality=quality),
        loras=tuple(lora_ref(v) for v in lora or ()),
        outpaint=extend,
        mask_margin=mask_margin,
        prompt_weighting=weighting,
        controlnets=tuple(control_ref(v, limits) for v in controlnet or ()),
        ip_adapters=tuple(ip_ref(v, limits) for v in ip_adapter or ()),
    )
    validate(replace(req, model=req.model or DEFAULT_MODEL))
    return req


def default_model(catalog) -> str:
    """The catalog's only usable model, for a command without --model."""
    specs = catalog.available()
    if len(specs) == 1:
        return specs[0].id
    names = ", ".join(s.name for s in specs) or "none found"
    raise DaguerreError(
        f"--model is required when the catalog does not hold exactly one model (catalog: {names})",
        parameter="model",
        code="invalidParameter",
    )


def control_ref(value: str, limits):
    """--controlnet REF,GUIDE[,weight=W][,start=PCT][,end=PCT][,mode=M][,type=T][,canny]."""
    from daguerre.imaging import load_image
    from daguerre.request import ControlRef

    parts = [p.strip() for p in value.split(",")]
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise DaguerreError(
            f"--controlnet takes REF,GUIDE_IMAGE[,options], got {value!r}",
            parameter="controlNet",
            code="invalidParameter",
        )
    kwargs: dict = {}
    names = {
        "weight": ("weight", float),
        "start": ("start_percent", int),
        "end": ("end_percent", int),
        "mode": ("mode", str),
        "type": ("control_type", str),
    }
    for option in parts[2:]:
        key, sep, raw = option.partition("=")
        if option == "canny":
            kwargs["preprocessor"] = "canny"
        elif sep and key in names:
            field, cast = names[key]
            try:
                kwargs[field] = cast(raw)
            except ValueError:
                raise DaguerreError(
                    f"--controlnet {key} must be a number, got {raw!r}", parameter="controlNet", code="invalidParameter"
                ) from None
        else:
            raise DaguerreError(
                f"--controlnet option {option!r} is not one of weight=, start=, end=, mode=, type=, canny",
                parameter="controlNet",
                code="invalidParameter",
            )
    guide = load_image(parts[1], parameter="controlNet.guideImage", limits=limits)
    return ControlRef(model=parts[0], guide_image=guide, **kwargs)


def ip_ref(value: str, limits):
    """--ip-adapter REF,IMAGE[,IMAGE...][,weight=W]."""
    from daguerre.imaging import load_image
    from daguerre.request import IpAdapterRef

    parts = [p.strip() for p in value.split(",") if p.strip()]
    weights = [p for p in parts[1:] if p.startswith("weight=")]
    images = [p for p in parts[1:] if not p.startswith("weight=")]
    if not parts or not images:
        raise DaguerreError(
            f"--ip-adapter takes REF,IMAGE[,IMAGE...][,weight=W], got {value!r}",
            parameter="ipAdapters",
            code="invalidParameter",
        )
    try:
        weight = float(weights[-1].partition("=")[2]) if weights else 1.0
    except ValueError:
        raise DaguerreError(
            f"--ip-adapter weight must be a number, got {weights[-1]!r}",
            parameter="ipAdapters",
            code="invalidParameter",
        ) from None
    guides = tuple(load_image(x, parameter="ipAdapters.guideImages", limits=limits) for x in images)
    return IpAdapterRef(model=parts[0], guide_images=guides, weight=weight)


def outpaint_sides(value: str):
    """--outpaint 'top=64,left=32' -> Outpaint."""
    from daguerre.request import Outpaint

    sides = {}
    for part in value.split(","):
        key, sep, number = part.strip().partition("=")
        if not sep or key not in ("top", "bottom", "left", "right", "blur") or not number.strip().isdigit():
            raise DaguerreError(
                f"--outpaint takes 'top=N,bottom=N,left=N,right=N[,blur=N]', got {value!r}",
                parameter="outpaint",
                code="invalidParameter",
            )
        sides[key] = int(number)
    return Outpaint(**sides)


def lora_ref(value: str):
    """--lora REF[=WEIGHT]."""
    from daguerre.request import LoraRef

    ref, sep, weight = value.rpartition("=") if "=" in value else (value, "", "")
    if not sep:
        return LoraRef(model=value)
    try:
        return LoraRef(model=ref, weight=float(weight))
    except ValueError:
        raise DaguerreError(
            f"--lora weight must be a number, got {weight!r}", parameter="lora.weight", code="invalidParameter"
        ) from None


DEFAULT_UPSCALER = "default"  # what `--hires-fix` alone stands for (cli/__init__.py inserts it)


def _hires(model: str | None, steps: int | None, strength: float | None) -> HiresFix | None:
    if model is None:
        if steps is not None or strength is not None:
            raise DaguerreError("--hires-steps and --hires-strength need --hires-fix", parameter="hiresFix",
                                code="invalidParameter")  # fmt: skip
        return None
    return HiresFix(model=None if model == DEFAULT_UPSCALER else model, steps=steps, strength=strength)
