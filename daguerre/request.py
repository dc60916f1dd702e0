"""The one normalized request type every protocol is translated into, and its validation.

Parameters are named as the task API names them (positivePrompt, CFGScale, numberResults...):
that is what error messages say, and the CLI maps them back to its flags. Ranges follow the
Runware API's imageInference reference. `validate` is the boundary: inside it, the engine
trusts the request.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from daguerre.engine.schedulers import check_name
from daguerre.errors import RequestError

MAX_SEED = 2**63 - 1
OUTPUT_FORMATS = ("JPG", "PNG", "WEBP")
# name: (min, max) - inclusive bounds of the numeric parameters.
RANGES: dict[str, tuple[float, float]] = {
    "width": (128, 2048),
    "height": (128, 2048),
    "steps": (1, 50),
    "CFGScale": (0, 20),
    "trueCFGScale": (0, 20),
    "seed": (0, MAX_SEED),
    "numberResults": (1, 20),
    "strength": (0, 1),
    "outputQuality": (20, 99),
    "lora.weight": (-4, 4),
    "controlNet.weight": (-4, 4),
    "ipAdapters.weight": (-4, 4),
}
PROMPT_CHARS = (2, 3000)
SIZE_STEP = 64
DEFAULT_STRENGTH = 0.8


@dataclass(frozen=True)
class AccelOptions:
    """acceleratorOptions, normalized. Defaults follow the reference API."""

    tea_cache: bool = False
    tea_cache_distance: float | None = None  # 0-1, default 0.5
    db_cache: bool = False
    db_cache_threshold: float | None = None  # 0-1, default 0.25
    db_cache_skip_interval: int | None = None  # >= 1, default 5
    cache_start_step: int | None = None
    cache_end_step: int | None = None
    cache_start_percent: int | None = None  # 0-99
    cache_end_percent: int | None = None  # 1-100
    cache_max_consecutive: int | None = None  # 1-5, default 3

    @property
    def enabled(self) -> bool:
        return self.tea_cache or self.db_cache

    def window(self, steps: int) -> tuple[int, int]:
        """[start, end) step indices where caching may act."""
        start = self.cache_start_step if self.cache_start_step is not None else 0
        if self.cache_start_percent is not None:
            start = int(steps * self.cache_start_percent / 100)
        end = self.cache_end_step if self.cache_end_step is not None else steps
        if self.cache_end_percent is not None:
            end = int(round(steps * self.cache_end_percent / 100))
        return start, end


def _number(name, value, lo, hi, integer: bool):
    if value is None:
        return
    bad = isinstance(value, bool) or not isinstance(value, int if integer else (int, float))
    if bad or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise RequestError(
            f"acceleratorOptions.{name} must be {kind} in [{lo:g}, {hi:g}], got {value!r}",
            parameter=f"acceleratorOptions.{name}",
        )


def validate_accel(a: AccelOptions, steps: int | None) -> None:
    """Ranges and combinations; errors name the fields."""
    for name, value in (("teaCache", a.tea_cache), ("dbCache", a.db_cache)):
        if not isinstance(value, bool):
            raise RequestError(
                f"acceleratorOptions.{name} must be true or false, got {value!r}",
                parameter=f"acceleratorOptions.{name}",
            )
    _number("teaCacheDistance", a.tea_cache_distance, 0, 1, False)
    _number("dbCacheThreshold", a.db_cache_threshold, 0, 1, False)
    _number("dbCacheSkipInterval", a.db_cache_skip_interval, 1, 1000, True)
    _number("cacheStartStep", a.cache_start_step, 0, 1000, True)
    _number("cacheEndStep", a.cache_end_step, 1, 1000, True)
    _number("cacheStartStepPercentage", a.cache_start_percent, 0, 99, True)
    _number("cacheEndStepPercentage", a.cache_end_percent, 1, 100, True)
    _number("cacheMaxConsecutiveSteps", a.cache_max_consecutive, 1, 5, True)
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


@dataclass(frozen=True)
class OutputSpec:
    """How generated images are encoded."""

    format: str = "JPG"  # JPG | PNG | WEBP
    quality: int = 95  # 20-99; PNG is lossless and ignores it


OUTPUT_TYPES = ("URL", "base64Data", "dataURI")
DELIVERY_METHODS = ("sync", "async")
MIN_TTL = 60


@dataclass(frozen=True)
class DeliverySpec:
    """How results reach the client (task API only; the CLI writes files)."""

    method: str = "sync"  # sync: reply when done; async: acknowledge, then getResponse
    output_types: tuple[str, ...] = ("URL",)  # one or more of URL | base64Data | dataURI
    include_cost: bool = False  # add `cost` (measured compute seconds x price) per result
    ttl: int | None = None  # seconds an image stays downloadable (>= 60); None = the server default
    webhook_url: str | None = None  # each result POSTed here as it completes (Standard Webhooks signed)
    upload_endpoint: str | None = None  # each image PUT here (raw bytes), e.g. a presigned S3 URL


MAX_LORAS = 8
MAX_CONTROLNETS = 4
MAX_IP_ADAPTERS = 4
CONTROL_MODES = ("balanced", "prompt", "controlnet")
PREPROCESSORS = ("canny",)
# Union ControlNets (InstantX / Shakker-Labs FLUX.1-dev-Controlnet-Union) embed the condition type as
# a mode id; these are their published ids, in order.
CONTROL_TYPES = ("canny", "tile", "depth", "blur", "pose", "gray", "lq")
MASK_MARGIN = (32, 128)
OUTPAINT_DEFAULT_BLUR = 8


@dataclass(frozen=True)
class Outpaint:
    """Pixels to add on each side of the seed image; the new border is generated."""

    top: int = 0
    bottom: int = 0
    left: int = 0
    right: int = 0
    blur: int = OUTPAINT_DEFAULT_BLUR  # feather radius (px) of the seam, 0-64


@dataclass(frozen=True)
class LoraRef:
    """One LoRA to apply for a request."""

    model: str  # catalog id, short name or path of a FLUX.1 LoRA file
    weight: float = 1.0  # -4..4; 0 has no effect, negative steers away


@dataclass(frozen=True)
class ControlRef:
    """One ControlNet for a request: a model and the guide image it follows."""

    model: str  # catalog id, short name or path of a FLUX.1 ControlNet (diffusers folder)
    guide_image: Image.Image = field(compare=False)  # RGB; resized to the output size
    weight: float = 1.0  # -4..4 conditioning scale (before the controlMode factor)
    start_step: int | None = None  # first step it acts on (0-based); or start_percent
    end_step: int | None = None  # step it stops before; or end_percent
    start_percent: int | None = None  # 0-99
    end_percent: int | None = None  # 1-100
    mode: str = "balanced"  # balanced | prompt | controlnet: see docs/api.md
    preprocessor: str | None = None  # None: the guide is already a control image; "canny": edges from a photo
    canny_low: int = 100  # Canny hysteresis thresholds, 0-255, low < high
    canny_high: int = 200
    control_type: str | None = None  # Union ControlNets only: one of CONTROL_TYPES


@dataclass(frozen=True)
class IpAdapterRef:
    """One IP-Adapter: image prompts whose look and content steer the generation."""

    model: str  # catalog id, short name or path of a FLUX.1 IP-Adapter (XLabs format)
    guide_images: tuple[Image.Image, ...] = field(compare=False)  # 1+ RGB images; several are averaged
    weight: float = 1.0  # -4..4


@dataclass(frozen=True)
class GenerationRequest:
    """One image-generation request, normalized: what every protocol adapter produces."""

    model: str  # catalog id (AIR-style), short name, or path
    positive_prompt: str  # 2-3000 characters
    width: int = 1024  # 128-2048, multiple of 64
    height: int = 1024  # 128-2048, multiple of 64
    negative_prompt: str | None = None  # used through true CFG only (true_cfg_scale > 1)
    steps: int | None = None  # 1-50; None = the model's default (28 dev, 4 schnell)
    guidance: float | None = None  # CFGScale: distilled guidance of dev-type models; None = model default
    true_cfg_scale: float | None = None  # > 1 turns on true classifier-free guidance (two passes per step)
    seed: int | None = None  # 0..2^63-1; None = random, always reported back
    number_results: int = 1  # 1-20; image i uses seed + i
    scheduler: str = "Default"
    seed_image: Image.Image | None = field(default=None, compare=False)  # RGB, img2img / inpaint source
    mask_image: Image.Image | None = field(default=None, compare=False)  # L, white = repaint
    strength: float | None = None  # 0-1 with seed_image; None = 0.8
    output: OutputSpec = field(default_factory=OutputSpec)
    loras: tuple[LoraRef, ...] = ()  # applied together, each with its own weight
    outpaint: Outpaint | None = None  # extend the seed image; width/height must be its final size
    mask_margin: int | None = None  # 32-128: inpaint a crop around the mask at full working resolution
    prompt_weighting: str | None = None  # "compel" | "sdEmbeds": weights in the prompt text; None = plain text
    controlnets: tuple[ControlRef, ...] = ()  # structure guidance; several at once
    ip_adapters: tuple[IpAdapterRef, ...] = ()  # image prompts; several at once
    accelerator: AccelOptions = field(default_factory=AccelOptions)  # step caching (acceleratorOptions)
    enhance_prompt: bool = False  # expand the prompt along the photographic formula (prompts/studio.py)
    character: str | None = None  # saved character whose anchor and seed the adapter already applied

    @property
    def workflow(self) -> str:
        if self.seed_image is None:
            return "txt2img"
        if self.outpaint is not None:
            return "outpaint"
        return "inpaint" if self.mask_image is not None else "img2img"

    def outpaint_size(self) -> tuple[int, int]:
        """(width, height) of the outpainted canvas: the seed image plus the extensions."""
        o = self.outpaint
        return self.seed_image.width + o.left + o.right, self.seed_image.height + o.top + o.bottom


def _check_range(name: str, value: Any, *, integer: bool) -> None:
    lo, hi = RANGES[name]
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type:
        raise RequestError(f"{name} must be {kind} in [{lo:g}, {hi:g}], got {value!r}", parameter=name)
    if value != value or not lo <= value <= hi:  # value != value catches NaN
        raise RequestError(f"{name} must be in [{lo:g}, {hi:g}], got {value!r}", parameter=name)


def _check_prompt(name: str, value: Any) -> None:
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


def _check_control(c: ControlRef, steps: int | None) -> None:
    if not isinstance(c.model, str) or not c.model.strip():
        raise RequestError("controlNet.model must be a ControlNet id, name or path", parameter="controlNet.model")
    _check_range("controlNet.weight", c.weight, integer=False)
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
    for name, value, lo, hi in (
        ("startStep", c.start_step, 0, 49),
        ("endStep", c.end_step, 1, 50),
        ("startStepPercentage", c.start_percent, 0, 99),
        ("endStepPercentage", c.end_percent, 1, 100),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi):
            raise RequestError(
                f"controlNet.{name} must be an integer in [{lo}, {hi}], got {value!r}", parameter=f"controlNet.{name}"
            )
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
    for name, value in (("lowThresholdCanny", c.canny_low), ("highThresholdCanny", c.canny_high)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
            raise RequestError(
                f"controlNet.{name} must be an integer in [0, 255], got {value!r}", parameter=f"controlNet.{name}"
            )
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
    for side in ("top", "bottom", "left", "right"):
        v = getattr(o, side)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 2048:
            raise RequestError(
                f"outpaint.{side} must be an integer in [0, 2048], got {v!r}", parameter=f"outpaint.{side}"
            )
    if isinstance(o.blur, bool) or not isinstance(o.blur, int) or not 0 <= o.blur <= 64:
        raise RequestError(f"outpaint.blur must be an integer in [0, 64], got {o.blur!r}", parameter="outpaint.blur")
    if not (o.top or o.bottom or o.left or o.right):
        raise RequestError("outpaint needs at least one of top, bottom, left, right > 0", parameter="outpaint")
    if req.seed_image is None:
        raise RequestError("outpaint extends a seedImage: give one", parameter="outpaint")
    if req.mask_image is not None:
        raise RequestError("outpaint makes its own mask (the new border); omit maskImage", parameter="maskImage")
    w, h = req.outpaint_size()
    for name, value in (("width", w), ("height", h)):
        if not 128 <= value <= 2048 or value % SIZE_STEP:
            raise RequestError(
                f"outpaint gives a {name} of {value} (seed image + extensions); it must be a multiple "
                f"of {SIZE_STEP} in [128, 2048]: adjust the extensions",
                parameter="outpaint",
            )
    if (req.width, req.height) != (w, h):
        raise RequestError(
            f"with outpaint, width x height must be the final size {w}x{h} (seed image "
            f"{req.seed_image.width}x{req.seed_image.height} + extensions), got {req.width}x{req.height}",
            parameter="width",
        )


def validate(req: GenerationRequest) -> GenerationRequest:
    """Check every field against its documented range; raise RequestError naming the first bad one."""
    if not isinstance(req.model, str) or not req.model.strip():
        raise RequestError("model is required: a catalog id, short name or path", parameter="model")
    _check_prompt("positivePrompt", req.positive_prompt)
    if req.negative_prompt is not None:
        _check_prompt("negativePrompt", req.negative_prompt)
    for name, value in (("width", req.width), ("height", req.height)):
        _check_range(name, value, integer=True)
        if value % SIZE_STEP:
            raise RequestError(f"{name} must be a multiple of {SIZE_STEP} in [128, 2048], got {value}", parameter=name)
    for name, value, integer in (
        ("steps", req.steps, True),
        ("CFGScale", req.guidance, False),
        ("trueCFGScale", req.true_cfg_scale, False),
        ("seed", req.seed, True),
        ("strength", req.strength, False),
    ):
        if value is not None:
            _check_range(name, value, integer=integer)
    _check_range("numberResults", req.number_results, integer=True)
    check_name(req.scheduler)
    if req.output.format not in OUTPUT_FORMATS:
        raise RequestError(
            f"outputFormat must be one of {', '.join(OUTPUT_FORMATS)}, got {req.output.format!r}",
            parameter="outputFormat",
        )
    _check_range("outputQuality", req.output.quality, integer=True)
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
        _check_range("lora.weight", lora.weight, integer=False)
    if req.mask_margin is not None:
        lo, hi = MASK_MARGIN
        if isinstance(req.mask_margin, bool) or not isinstance(req.mask_margin, int) or not lo <= req.mask_margin <= hi:
            raise RequestError(
                f"maskMargin must be an integer in [{lo}, {hi}], got {req.mask_margin!r}", parameter="maskMargin"
            )
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
        _check_range("ipAdapters.weight", ip.weight, integer=False)
    if not isinstance(req.accelerator, AccelOptions):
        raise RequestError("acceleratorOptions must be an object", parameter="acceleratorOptions")
    validate_accel(req.accelerator, req.steps)
    if not isinstance(req.enhance_prompt, bool):
        raise RequestError(
            f"enhancePrompt must be true or false, got {req.enhance_prompt!r}", parameter="enhancePrompt"
        )
    if req.prompt_weighting is not None:
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
