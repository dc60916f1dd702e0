"""The normalized request every protocol adapter produces, and its parts (frozen dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from daguerre.request.limits import (
    CANNY_THRESHOLDS,
    DEFAULT_OUTPUT_QUALITY,
    DEFAULT_SCHEDULER,
    DEFAULT_SIZE,
    OUTPAINT_DEFAULT_BLUR,
)


@dataclass(frozen=True)
class AccelOptions:
    """acceleratorOptions, normalized. None = the default (limits.DEFAULT_*), filled in by `resolve`."""

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


@dataclass(frozen=True)
class SafetyCheck:
    """Run the safety checker on each image (engine/features/safety.py)."""

    action: str | None = None  # what a flagged image becomes (limits.SAFETY_ACTIONS); None = the server's setting
    threshold: float | None = None  # 0-1: a score at or above it flags; None = the server's setting


@dataclass(frozen=True)
class HiresFix:
    """hiresFix: generate at half size, upscale, refine with image-to-image at the final size."""

    model: str | None = None  # an upscaler (catalog id, name, alias), "latent", or None = the server's default
    steps: int | None = None  # refine steps, 1-50; None = the request's steps
    strength: float | None = None  # refine strength, (0, 1]; None = limits.HIRES_STRENGTH


@dataclass(frozen=True)
class LayerDiffuse:
    """layerDiffuse: an RGBA image from the LayerDiffuse LoRA and the transparent VAE's RGBA decoder."""

    lora: str | None = None  # the LayerDiffuse LoRA (catalog id/name); None = limits.LAYER_DIFFUSE_LORA
    vae: str | None = None  # the TransparentVAE file (catalog id/name); None = limits.LAYER_DIFFUSE_VAE


@dataclass(frozen=True)
class PuLID:
    """puLID: identity from reference photos (PuLID-FLUX's ID former and cross-attention)."""

    images: tuple = ()  # PIL images of the person (each one's largest face is used)
    id_weight: float = 1.0  # 0-3: the identity's strength
    cfg_start_step: int | None = None  # true CFG (with the zero identity) from this step; exclusive with:
    cfg_start_percentage: int | None = None  # 0-99 percent of the steps
    true_cfg_scale: float | None = None  # 0-10: the true CFG scale for the run (> 1: on)


@dataclass(frozen=True)
class FaceFix:
    """ultralytics: detect faces, inpaint each at inpaint_size, paste it back feathered."""

    cfg_scale: float | None = None  # the face pass's distilled guidance (0-50); None = limits.FACE_DEFAULTS
    confidence: float | None = None  # detection threshold, 0-1
    inpaint_size: int | None = None  # the long side each face crop is inpainted at, 128-2048
    mask_blur: int | None = None  # feathering of the paste, 0-100 px
    mask_padding: int | None = None  # padding around each detected face, 0-20 px
    positive_prompt: str | None = None  # the face pass's prompt; None = the request's
    negative_prompt: str | None = None  # acts with the request's true CFG, as negativePrompt does
    steps: int | None = None  # 1-100 (image-to-image runs steps x strength of them)
    strength: float | None = None  # 0-1


@dataclass(frozen=True)
class OutputSpec:
    """How generated images are encoded."""

    format: str = "JPG"  # JPG | PNG | WEBP
    quality: int = DEFAULT_OUTPUT_QUALITY  # 20-99; PNG is lossless and ignores it


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
    canny_low: int = CANNY_THRESHOLDS[0]  # Canny hysteresis thresholds, 0-255, low < high
    canny_high: int = CANNY_THRESHOLDS[1]
    control_type: str | None = None  # Union ControlNets only: one of CONTROL_TYPES


@dataclass(frozen=True)
class IpAdapterRef:
    """One IP-Adapter: image prompts whose look and content steer the generation."""

    model: str  # catalog id, short name or path of a FLUX.1 IP-Adapter (XLabs format)
    guide_images: tuple[Image.Image, ...] = field(compare=False)  # 1+ RGB images; several are averaged
    weight: float = 1.0  # -4..4


@dataclass(frozen=True)
class GenerationRequest:
    """One image-generation request, normalized: what every protocol adapter produces.

    Fields left None take their defaults from limits.py; `resolve` fills them in for a model's kind
    (a request in the job queue is always resolved, so what runs and what the recipe says are the same).
    """

    model: str  # catalog id (AIR-style), short name, or path
    positive_prompt: str  # 2-3000 characters
    width: int = DEFAULT_SIZE  # 128-2048, multiple of 64
    height: int = DEFAULT_SIZE  # 128-2048, multiple of 64
    negative_prompt: str | None = None  # used through true CFG only (true_cfg_scale > 1)
    steps: int | None = None  # 1-50; None = the model's default (28 dev, 4 schnell)
    guidance: float | None = None  # CFGScale: distilled guidance of dev-type models; None = model default
    true_cfg_scale: float | None = None  # > 1 turns on true classifier-free guidance (two passes per step)
    seed: int | None = None  # 0..2^63-1; None = random, always reported back
    number_results: int = 1  # 1-20; image i uses seed + i
    scheduler: str = DEFAULT_SCHEDULER
    seed_image: Image.Image | None = field(default=None, compare=False)  # RGB, img2img / inpaint source
    mask_image: Image.Image | None = field(default=None, compare=False)  # L, white = repaint
    strength: float | None = None  # 0-1 with seed_image; None = 0.8 (1.0 for outpaint and Fill models)
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
    safety: SafetyCheck | None = None  # check each image for explicit content; None = no check
    hires_fix: HiresFix | None = None  # two-pass generation: half size, upscale, refine (text-to-image)
    face_fix: FaceFix | None = None  # face enhancement after generation (the `ultralytics` object)
    layer_diffuse: LayerDiffuse | None = None  # transparent output (RGBA; PNG or WEBP)
    pulid: PuLID | None = None  # identity from reference photos

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
