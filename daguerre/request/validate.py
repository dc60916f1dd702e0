"""`validate`: the boundary check of a GenerationRequest against limits.py. Inside the boundary the
request is trusted; errors name the parameter as the task API names it, its value and the range."""

from __future__ import annotations

import difflib
import unicodedata
from typing import Any

from daguerre.errors import RequestError, UnsupportedError
from daguerre.request.limits import (
    CONTROL_MODES,
    CONTROL_TYPES,
    HIRES_LATENT,
    INTEGERS,
    MAX_CONTROLNETS,
    MAX_IP_ADAPTERS,
    MAX_LORAS,
    MAX_PULID_IMAGES,
    OUTPUT_FORMATS,
    PREPROCESSORS,
    PROMPT_CHARS,
    PROMPT_WEIGHTINGS,
    RANGES,
    SAFETY_ACTIONS,
    SCHEDULER_NAMES,
    SCHEDULERS,
    SIZE_STEP,
)
from daguerre.request.types import (
    AccelOptions,
    ControlRef,
    FaceFix,
    GenerationRequest,
    HiresFix,
    LayerDiffuse,
    PuLID,
    SafetyCheck,
)


def check_range(name: str, value: Any) -> None:
    """`value` is a number in RANGES[name] (an integer where INTEGERS says so); NaN is refused."""
    lo, hi = RANGES[name]
    integer = name in INTEGERS
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type:
        raise RequestError(f"{name} must be {kind} in [{lo:g}, {hi:g}], got {value!r}", parameter=name)
    if value != value or not lo <= value <= hi:  # value != value catches NaN
        raise RequestError(f"{name} must be in [{lo:g}, {hi:g}], got {value!r}", parameter=name)


def _optional(name: str, value: Any) -> None:
    if value is not None:
        check_range(name, value)


# Tab, newline and carriage return are layout; every other control character (NUL, escape codes...)
# and lone UTF-16 surrogates have no place in a prompt, and would be embedded in the recipe.
_ALLOWED_CONTROLS = "\t\n\r"


def check_text(name: str, value: str) -> str:
    """Refuse control characters (other than tab and newlines) and lone surrogates in user text."""
    for i, ch in enumerate(value):
        if ch in _ALLOWED_CONTROLS:
            continue
        if unicodedata.category(ch) in ("Cc", "Cs"):
            raise RequestError(
                f"{name} contains the control character U+{ord(ch):04X} at position {i}; prompts may hold "
                "printable text, tabs and newlines only",
                parameter=name,
            )
    return value


def check_prompt(name: str, value: Any) -> None:
    lo, hi = PROMPT_CHARS
    if not isinstance(value, str):
        raise RequestError(
            f"{name} must be a string of {lo}-{hi} characters, got {type(value).__name__}", parameter=name
        )
    if not lo <= len(value) <= hi:
        raise RequestError(f"{name} must be {lo}-{hi} characters long, got {len(value)}", parameter=name)
    if not value.strip():
        raise RequestError(f"{name} must contain text, not only whitespace", parameter=name)
    check_text(name, value)


def check_scheduler(name: Any) -> str:
    """A scheduler name of the reference API; an unknown one gets the closest valid names."""
    if isinstance(name, str) and name in SCHEDULERS:
        return name
    close = difflib.get_close_matches(str(name), SCHEDULER_NAMES, n=3, cutoff=0.4)
    hint = f"; closest valid names: {', '.join(close)}" if close else ""
    raise RequestError(
        f"scheduler {name!r} is not a known scheduler name{hint} (see docs/schedulers.md for all 75)",
        parameter="scheduler",
    )


def _check_control(c: ControlRef, steps: int | None) -> None:
    if not isinstance(c.model, str) or not c.model.strip():
        raise RequestError("controlNet.model must be a ControlNet id, name or path", parameter="controlNet.model")
    check_range("controlNet.weight", c.weight)
    if c.mode not in CONTROL_MODES:
        raise RequestError(
            f"controlNet.controlMode must be one of {', '.join(CONTROL_MODES)}, got {c.mode!r}",
            parameter="controlNet.controlMode",
        )
    if c.start_step is not None and c.start_percent is not None:
        raise RequestError(
            "give controlNet.startStep or startStepPercentage, not both", parameter="controlNet.startStep"
        )
    if c.end_step is not None and c.end_percent is not None:
        raise RequestError("give controlNet.endStep or endStepPercentage, not both", parameter="controlNet.endStep")
    for name, value in (
        ("startStep", c.start_step),
        ("endStep", c.end_step),
        ("startStepPercentage", c.start_percent),
        ("endStepPercentage", c.end_percent),
    ):
        _optional(f"controlNet.{name}", value)
    if c.start_step is not None and c.end_step is not None and c.start_step >= c.end_step:
        raise RequestError(
            f"controlNet.startStep ({c.start_step}) must be less than endStep ({c.end_step})",
            parameter="controlNet.startStep",
        )
    if c.start_percent is not None and c.end_percent is not None and c.start_percent >= c.end_percent:
        raise RequestError(
            f"controlNet.startStepPercentage ({c.start_percent}) must be less than endStepPercentage ({c.end_percent})",
            parameter="controlNet.startStepPercentage",
        )
    if steps is not None and c.end_step is not None and c.end_step > steps:
        raise RequestError(
            f"controlNet.endStep ({c.end_step}) must be at most steps ({steps})", parameter="controlNet.endStep"
        )
    if c.preprocessor not in (None, *PREPROCESSORS):
        raise RequestError(
            f"controlNet preprocessor {c.preprocessor!r} is not supported yet; supported: "
            f"{', '.join(PREPROCESSORS)} (or none: send a ready control image)",
            parameter="controlNet.preprocessor",
            code="unsupportedParameter",
        )
    check_range("controlNet.lowThresholdCanny", c.canny_low)
    check_range("controlNet.highThresholdCanny", c.canny_high)
    if c.canny_low >= c.canny_high:
        raise RequestError(
            "controlNet.lowThresholdCanny must be less than highThresholdCanny",
            parameter="controlNet.lowThresholdCanny",
        )
    if c.control_type is not None and c.control_type not in CONTROL_TYPES:
        raise RequestError(
            f"controlNet.controlType must be one of {', '.join(CONTROL_TYPES)}, got {c.control_type!r}",
            parameter="controlNet.controlType",
        )


def _check_outpaint(req: GenerationRequest) -> None:
    o = req.outpaint
    for side in ("top", "bottom", "left", "right", "blur"):
        check_range(f"outpaint.{side}", getattr(o, side))
    if not (o.top or o.bottom or o.left or o.right):
        raise RequestError("outpaint needs at least one of top, bottom, left, right > 0", parameter="outpaint")
    if req.seed_image is None:
        raise RequestError("outpaint extends a seedImage: give one", parameter="outpaint")
    if req.mask_image is not None:
        raise RequestError("outpaint makes its own mask (the new border); omit maskImage", parameter="maskImage")
    w, h = req.outpaint_size()
    lo, hi = RANGES["width"]
    for name, value in (("width", w), ("height", h)):
        if not lo <= value <= hi or value % SIZE_STEP:
            raise RequestError(
                f"outpaint gives a {name} of {value} (seed image + extensions); it must be a multiple "
                f"of {SIZE_STEP} in [{lo}, {hi}]: adjust the extensions",
                parameter="outpaint",
            )
    if (req.width, req.height) != (w, h):
        raise RequestError(
            f"with outpaint, width x height must be the final size {w}x{h} (seed image "
            f"{req.seed_image.width}x{req.seed_image.height} + extensions), got {req.width}x{req.height}",
            parameter="width",
        )


def validate_accel(a: AccelOptions, steps: int | None) -> None:
    """acceleratorOptions: ranges and combinations; errors name the fields."""
    if not isinstance(a, AccelOptions):
        raise RequestError("acceleratorOptions must be an object", parameter="acceleratorOptions")
    for name, value in (("teaCache", a.tea_cache), ("dbCache", a.db_cache)):
        if not isinstance(value, bool):
            raise RequestError(
                f"acceleratorOptions.{name} must be true or false, got {value!r}",
                parameter=f"acceleratorOptions.{name}",
            )
    for name, value in (
        ("teaCacheDistance", a.tea_cache_distance),
        ("dbCacheThreshold", a.db_cache_threshold),
        ("dbCacheSkipInterval", a.db_cache_skip_interval),
        ("cacheStartStep", a.cache_start_step),
        ("cacheEndStep", a.cache_end_step),
        ("cacheStartStepPercentage", a.cache_start_percent),
        ("cacheEndStepPercentage", a.cache_end_percent),
        ("cacheMaxConsecutiveSteps", a.cache_max_consecutive),
    ):
        _optional(f"acceleratorOptions.{name}", value)
    if a.tea_cache and a.db_cache:
        raise RequestError(
            "acceleratorOptions.teaCache and acceleratorOptions.dbCache are two caches of the same passes: turn on one",
            parameter="acceleratorOptions.dbCache",
        )
    for name, value, owner in (
        ("teaCacheDistance", a.tea_cache_distance, a.tea_cache),
        ("dbCacheThreshold", a.db_cache_threshold, a.db_cache),
        ("dbCacheSkipInterval", a.db_cache_skip_interval, a.db_cache),
    ):
        if value is not None and not owner:
            cache = "teaCache" if name.startswith("tea") else "dbCache"
            raise RequestError(
                f"acceleratorOptions.{name} is set but acceleratorOptions.{cache} is off",
                parameter=f"acceleratorOptions.{name}",
            )
    window = (a.cache_start_step, a.cache_end_step, a.cache_start_percent, a.cache_end_percent, a.cache_max_consecutive)
    if any(v is not None for v in window) and not a.enabled:
        raise RequestError(
            "acceleratorOptions cache window/limits are set but neither teaCache nor dbCache is on",
            parameter="acceleratorOptions",
        )
    if a.cache_start_step is not None and a.cache_start_percent is not None:
        raise RequestError(
            "give acceleratorOptions.cacheStartStep or cacheStartStepPercentage, not both",
            parameter="acceleratorOptions.cacheStartStep",
        )
    if a.cache_end_step is not None and a.cache_end_percent is not None:
        raise RequestError(
            "give acceleratorOptions.cacheEndStep or cacheEndStepPercentage, not both",
            parameter="acceleratorOptions.cacheEndStep",
        )
    if a.cache_start_step is not None and a.cache_end_step is not None and a.cache_start_step >= a.cache_end_step:
        raise RequestError(
            f"acceleratorOptions.cacheStartStep ({a.cache_start_step}) must be less than cacheEndStep "
            f"({a.cache_end_step})",
            parameter="acceleratorOptions.cacheStartStep",
        )
    percents = (a.cache_start_percent, a.cache_end_percent)
    if None not in percents and percents[0] >= percents[1]:
        raise RequestError(
            f"acceleratorOptions.cacheStartStepPercentage ({a.cache_start_percent}) must be less than "
            f"cacheEndStepPercentage ({a.cache_end_percent})",
            parameter="acceleratorOptions.cacheStartStepPercentage",
        )
    if steps is not None and a.cache_end_step is not None and a.cache_end_step > steps:
        raise RequestError(
            f"acceleratorOptions.cacheEndStep ({a.cache_end_step}) must be at most steps ({steps})",
            parameter="acceleratorOptions.cacheEndStep",
        )


def validate(req: GenerationRequest) -> GenerationRequest:
    """Check every field against its documented range; raise RequestError naming the first bad one."""
    if not isinstance(req.model, str) or not req.model.strip():
        raise RequestError("model is required: a catalog id, short name or path", parameter="model")
    check_prompt("positivePrompt", req.positive_prompt)
    if req.negative_prompt is not None:
        check_prompt("negativePrompt", req.negative_prompt)
    lo, hi = RANGES["width"]
    for name, value in (("width", req.width), ("height", req.height)):
        check_range(name, value)
        if value % SIZE_STEP:
            raise RequestError(f"{name} must be a multiple of {SIZE_STEP} in [{lo}, {hi}], got {value}", parameter=name)
    for name, value in (
        ("steps", req.steps),
        ("CFGScale", req.guidance),
        ("trueCFGScale", req.true_cfg_scale),
        ("seed", req.seed),
        ("strength", req.strength),
    ):
        _optional(name, value)
    check_range("numberResults", req.number_results)
    check_scheduler(req.scheduler)
    if req.output.format not in OUTPUT_FORMATS:
        raise RequestError(
            f"outputFormat must be one of {', '.join(OUTPUT_FORMATS)}, got {req.output.format!r}",
            parameter="outputFormat",
        )
    check_range("outputQuality", req.output.quality)
    if len(req.loras) > MAX_LORAS:
        raise RequestError(f"lora takes at most {MAX_LORAS} entries, got {len(req.loras)}", parameter="lora")
    seen = set()
    for lora in req.loras:
        if not isinstance(lora.model, str) or not lora.model.strip():
            raise RequestError("lora.model must be a LoRA id, name or path", parameter="lora.model")
        if lora.model in seen:
            raise RequestError(
                f"lora {lora.model!r} is listed twice; give it once with the combined weight", parameter="lora.model"
            )
        seen.add(lora.model)
        check_range("lora.weight", lora.weight)
    if req.mask_margin is not None:
        check_range("maskMargin", req.mask_margin)
        if req.mask_image is None:
            raise RequestError("maskMargin applies to inpainting: give a maskImage", parameter="maskMargin")
    if req.outpaint is not None:
        _check_outpaint(req)
    for c in req.controlnets:
        _check_control(c, req.steps)
    if len(req.controlnets) > MAX_CONTROLNETS:
        raise RequestError(
            f"controlNet takes at most {MAX_CONTROLNETS} entries, got {len(req.controlnets)}", parameter="controlNet"
        )
    if len(req.ip_adapters) > MAX_IP_ADAPTERS:
        raise RequestError(
            f"ipAdapters takes at most {MAX_IP_ADAPTERS} entries, got {len(req.ip_adapters)}", parameter="ipAdapters"
        )
    for ip in req.ip_adapters:
        if not isinstance(ip.model, str) or not ip.model.strip():
            raise RequestError("ipAdapters.model must be an IP-Adapter id, name or path", parameter="ipAdapters.model")
        if not ip.guide_images:
            raise RequestError("ipAdapters.guideImages needs at least one image", parameter="ipAdapters.guideImages")
        check_range("ipAdapters.weight", ip.weight)
    validate_accel(req.accelerator, req.steps)
    _validate_hires(req)
    _validate_face(req)
    _validate_layers(req)
    _validate_pulid(req)
    if req.safety is not None:
        if not isinstance(req.safety, SafetyCheck):
            raise RequestError("safety must be an object", parameter="safety")
        if req.safety.action is not None and req.safety.action not in SAFETY_ACTIONS:
            raise RequestError(f"safety action must be one of {', '.join(SAFETY_ACTIONS)}, got {req.safety.action!r}",
                               parameter="safety.action")  # fmt: skip
        _optional("safety.threshold", req.safety.threshold)
    if not isinstance(req.enhance_prompt, bool):
        raise RequestError(
            f"enhancePrompt must be true or false, got {req.enhance_prompt!r}", parameter="enhancePrompt"
        )
    if req.prompt_weighting is not None:
        if req.prompt_weighting not in PROMPT_WEIGHTINGS:
            raise RequestError(f"promptWeighting must be 'compel' or 'sdEmbeds', got {req.prompt_weighting!r}",
                               parameter="promptWeighting")  # fmt: skip
        from daguerre.prompts.weighting import parse

        parse(req.positive_prompt, req.prompt_weighting)  # syntax errors name the column now, not mid-run
        if req.negative_prompt is not None:
            parse(req.negative_prompt, req.prompt_weighting, parameter="negativePrompt")
    if req.mask_image is not None and req.seed_image is None:
        raise RequestError("maskImage needs a seedImage to paint into", parameter="maskImage")
    if req.strength is not None and req.seed_image is None:
        raise RequestError(
            "strength applies to image-to-image and inpainting; give a seedImage or omit strength", parameter="strength"
        )
    if req.seed_image is not None and req.strength == 0:
        raise RequestError(
            "strength must be > 0 with a seedImage (0 would run no denoising step); allowed: (0, 1]",
            parameter="strength",
        )
    return req


def _validate_hires(req: GenerationRequest) -> None:
    h = req.hires_fix
    if h is None:
        return
    if not isinstance(h, HiresFix):
        raise RequestError("hiresFix must be true or an object {model, steps, strength}", parameter="hiresFix")
    if h.model is not None and (not isinstance(h.model, str) or not h.model.strip()):
        raise RequestError(f"hiresFix.model must be an upscaler's id, name or alias (or {HIRES_LATENT!r}), "
                           f"got {h.model!r}", parameter="hiresFix.model")  # fmt: skip
    _optional("hiresFix.steps", h.steps)
    _optional("hiresFix.strength", h.strength)
    if h.strength is not None and h.strength <= 0:
        raise RequestError("hiresFix.strength must be over 0 (0 would skip the refine pass)",
                           parameter="hiresFix.strength")  # fmt: skip
    if req.workflow != "txt2img":
        raise UnsupportedError(f"hiresFix applies to text-to-image; this request is {req.workflow}",
                               parameter="hiresFix")  # fmt: skip
    if req.controlnets or req.ip_adapters:
        what = "controlNet" if req.controlnets else "ipAdapters"
        raise UnsupportedError(f"hiresFix with {what} is not supported yet", parameter="hiresFix")


def _validate_layers(req: GenerationRequest) -> None:
    ld = req.layer_diffuse
    if ld is None:
        return
    if not isinstance(ld, LayerDiffuse):
        raise RequestError("layerDiffuse must be true or false", parameter="layerDiffuse")
    if req.output.format not in ("PNG", "WEBP"):
        raise RequestError(f"outputFormat {req.output.format} cannot carry the transparency layerDiffuse makes (JPG "
                           "has no alpha channel); use PNG or WEBP", parameter="outputFormat")  # fmt: skip
    _txt2img_or_img2img_alone(req, "layerDiffuse", ((req.hires_fix, "hiresFix"), (req.face_fix, "ultralytics"),
                                                    (req.controlnets, "controlNet"),
                                                    (req.ip_adapters, "ipAdapters")))  # fmt: skip


def _txt2img_or_img2img_alone(req: GenerationRequest, feature: str, others) -> None:
    """`feature` is built for text-to-image and image-to-image, and not yet with any of `others` ((value, field))."""
    if req.workflow not in ("txt2img", "img2img"):
        raise UnsupportedError(f"{feature} works for text-to-image and image-to-image; this request is "
                               f"{req.workflow}", parameter=feature)  # fmt: skip
    for present, what in others:
        if present:
            raise UnsupportedError(f"{feature} with {what} is not supported yet", parameter=feature)


def _validate_pulid(req: GenerationRequest) -> None:
    p = req.pulid
    if p is None:
        return
    if not isinstance(p, PuLID):
        raise RequestError("puLID must be an object {images, idWeight, CFGStartStep, trueCFGScale}", parameter="puLID")
    if not p.images or len(p.images) > MAX_PULID_IMAGES:
        raise RequestError(f"puLID.images must hold 1 to {MAX_PULID_IMAGES} reference photos, got {len(p.images)}",
                           parameter="puLID.images")  # fmt: skip
    for name, value in (("idWeight", p.id_weight), ("CFGStartStep", p.cfg_start_step),
                        ("CFGStartStepPercentage", p.cfg_start_percentage),
                        ("trueCFGScale", p.true_cfg_scale)):  # fmt: skip
        _optional(f"puLID.{name}", value)
    if p.cfg_start_step is not None and p.cfg_start_percentage is not None:
        raise RequestError("puLID.CFGStartStep and puLID.CFGStartStepPercentage are exclusive; give one",
                           parameter="puLID.CFGStartStepPercentage")  # fmt: skip
    _txt2img_or_img2img_alone(req, "puLID", ((req.hires_fix, "hiresFix"), (req.face_fix, "ultralytics"),
                                             (req.controlnets, "controlNet"), (req.ip_adapters, "ipAdapters"),
                                             (req.layer_diffuse, "layerDiffuse"),
                                             (req.accelerator.db_cache, "acceleratorOptions.dbCache")))  # fmt: skip


def _validate_face(req: GenerationRequest) -> None:
    f = req.face_fix
    if f is None:
        return
    if not isinstance(f, FaceFix):
        raise RequestError("ultralytics must be an object", parameter="ultralytics")
    for name, value in (("CFGScale", f.cfg_scale), ("confidence", f.confidence), ("inpaintSize", f.inpaint_size),
                        ("maskBlur", f.mask_blur), ("maskPadding", f.mask_padding), ("steps", f.steps),
                        ("strength", f.strength)):  # fmt: skip
        _optional(f"ultralytics.{name}", value)
    if f.strength is not None and f.strength <= 0:
        raise RequestError("ultralytics.strength must be over 0", parameter="ultralytics.strength")
    for name, text in (("positivePrompt", f.positive_prompt), ("negativePrompt", f.negative_prompt)):
        if text is not None:
            check_text(f"ultralytics.{name}", text)
