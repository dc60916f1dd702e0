"""The recipe every image carries: enough to regenerate it on the same device.

    from daguerre import recipe
    r = recipe.read("out/portrait-123.jpg")   # -> Recipe
    r.seed, r.model, r.model_hash

Embedded as JSON (PNG iTXt chunk `daguerre`; EXIF UserComment and XMP `daguerre:recipe` in JPG
and WEBP) plus an A1111-style `parameters` text in PNGs that other tools display.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from PIL import Image

from daguerre import __version__
from daguerre.errors import RequestError
from daguerre.imaging import read_embedded

FORMAT = "daguerre.recipe/1"


@dataclass(frozen=True)
class Recipe:
    """How one image was made. Every field is needed to reproduce it."""

    model: str  # the catalog id of the model
    model_hash: str  # sha256 of the transformer weights
    workflow: str  # txt2img | img2img | inpaint | outpaint
    positive_prompt: str
    negative_prompt: str | None
    seed: int  # this image's own seed (request seed + index)
    steps: int  # as requested (img2img runs int(steps * strength) of them)
    scheduler: str
    guidance: float | None  # distilled guidance (CFGScale); None for models without it
    true_cfg_scale: float | None  # > 1 when true CFG ran
    width: int
    height: int
    strength: float | None  # img2img / inpaint only
    seed_image_sha256: str | None  # sha256 of the normalized source pixels
    mask_image_sha256: str | None
    output_format: str
    output_quality: int
    device: str  # cuda | mps | cpu: bytes are reproducible on the same device type
    dtype: str
    # Images sharing a forward pass differ from single runs in the last float bits, so the
    # exact bytes come back only by re-running the same chunk: its size and this image's place.
    batch_size: int = 1
    batch_index: int = 0
    loras: tuple = ()  # ({"model": id, "sha256": file hash, "weight": w}, ...) applied to the transformer
    outpaint: dict | None = None  # {top, bottom, left, right, blur} for outpaint recipes
    mask_margin: int | None = None  # inpainting crop margin, when one was used
    prompt_weighting: str | None = None  # compel | sdEmbeds when the prompts carry weights
    controlnets: tuple = ()  # per ControlNet: its ControlRef fields, start/end fractions, guide_sha256
    ip_adapters: tuple = ()  # per IP-Adapter: {"model", "sha256", "weight", "guide_sha256": [...]}
    original_prompt: str | None = None  # the prompt as sent, when enhancePrompt expanded it into positive_prompt
    accelerator: dict | None = None  # acceleratorOptions as run, with the computed/skipped pass counts
    character: str | None = None  # the saved character it was made with (anchor and seed are already applied)
    safety: dict | None = None  # the safety check: {checker, score, threshold, flagged, action}
    hires_fix: dict | None = None  # {upscaler, sha256, scale, first_width, first_height, steps, strength}
    face_fix: dict | None = None  # the face pass's settings, the detector, and the faces it enhanced
    layer_diffuse: dict | None = None  # {lora, lora_sha256, vae, vae_sha256}: transparent output
    pulid: dict | None = None  # identity: images_sha256, face_boxes, id_weight, cfg_start_step, true_cfg_scale, files
    version: str = __version__  # Daguerre version that made it
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=True, separators=(",", ":"))

    def parameters_text(self) -> str:
        """A1111-style one-block summary that image browsers show."""
        lines = [self.positive_prompt]
        if self.negative_prompt:
            lines.append(f"Negative prompt: {self.negative_prompt}")
        parts = [
            f"Steps: {self.steps}",
            f"Sampler: {self.scheduler}",
            f"Seed: {self.seed}",
            f"Size: {self.width}x{self.height}",
            f"Model: {self.model}",
            f"Model hash: {self.model_hash[:10]}",
        ]
        if self.guidance is not None:
            parts.insert(2, f"Distilled CFG Scale: {self.guidance:g}")
        if self.true_cfg_scale is not None:
            parts.insert(2, f"CFG scale: {self.true_cfg_scale:g}")
        if self.strength is not None:
            parts.append(f"Denoising strength: {self.strength:g}")
        for lora in self.loras:
            parts.append(f"Lora: {lora['model']}:{lora['weight']:g} ({lora['sha256'][:10]})")
        parts.append(f"Version: daguerre {self.version}")
        lines.append(", ".join(parts))
        return "\n".join(lines)

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        if data.get("format") != FORMAT:
            raise RequestError(f"recipe format {data.get('format')!r} is not {FORMAT!r}", parameter="image")
        data["loras"] = tuple(data.get("loras", ()))
        data["controlnets"] = tuple(data.get("controlnets", ()))
        data["ip_adapters"] = tuple(data.get("ip_adapters", ()))
        return cls(**{k: v for k, v in data.items() if k in known})


def read(path: str | Path) -> Recipe:
    """The recipe embedded in an image Daguerre wrote. Raises RequestError if there is none."""
    data = Path(path).read_bytes()
    text = read_embedded(data)
    if text is None:
        raise RequestError(f"{path} carries no Daguerre recipe", parameter="image")
    return Recipe.from_json(text)


@dataclass(frozen=True)
class Comparison:
    """How a regenerated image compares with the original file, judged separately on bytes, pixels and recipe."""

    bytes_identical: bool
    pixels_identical: bool
    max_difference: int  # largest per-channel difference, 0-255 (0 when the pixels are identical)
    psnr_db: float | None  # None when the pixels are identical or the sizes differ
    recipe_differences: tuple[str, ...]  # recipe fields whose values differ (model, model_hash, ...)

    def summary(self) -> str:
        """One line a person reads: what is the same and what is not."""
        if self.bytes_identical:
            return "identical bytes"
        if self.pixels_identical:
            text = "identical pixels, different bytes"
        elif self.psnr_db is None:
            text = "DIFFERENT pixels (the sizes differ)"
        else:
            text = f"DIFFERENT pixels (max difference {self.max_difference}/255, PSNR {self.psnr_db:.1f} dB)"
        if self.recipe_differences:
            text += f"; the recipe differs in {', '.join(self.recipe_differences)}"
        elif not self.pixels_identical:
            text += "; the recipe is the same"
        return text


def compare(original: bytes, regenerated: bytes) -> Comparison:
    """Compare two encoded images Daguerre wrote: their bytes, their decoded pixels and their recipes."""
    import io

    import numpy as np

    if original == regenerated:
        return Comparison(True, True, 0, None, ())

    def pixels(data: bytes) -> np.ndarray:  # RGBA when the file has transparency (layerDiffuse), else RGB
        im = Image.open(io.BytesIO(data))
        return np.asarray(im.convert("RGBA" if "A" in im.getbands() else "RGB"), dtype=np.int16)

    a, b = pixels(original), pixels(regenerated)
    if a.shape != b.shape:
        same, worst, psnr = False, 255, None
    else:
        diff = np.abs(a - b)
        worst = int(diff.max())
        same = worst == 0
        mse = float((diff.astype(np.float64) ** 2).mean())
        psnr = None if same else (float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse))
    differences = ()
    texts = read_embedded(original), read_embedded(regenerated)
    if None not in texts:
        old, new = json.loads(texts[0]), json.loads(texts[1])
        differences = tuple(k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
    elif texts != (None, None):
        differences = ("(one image carries no recipe)",)
    return Comparison(False, same, worst, psnr, differences)


def pixels_sha256(image: Image.Image) -> str:
    """Digest of an image's pixels (mode and size included), independent of its file encoding."""
    h = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def _accel_fields() -> tuple[str, ...]:
    from dataclasses import fields as dc_fields

    from daguerre.request import AccelOptions

    return tuple(f.name for f in dc_fields(AccelOptions))


def to_request(
    r: Recipe,
    *,
    model: str | None = None,
    seed_image: Image.Image | None = None,
    mask_image: Image.Image | None = None,
    guides: list[Image.Image] = (),
    ip_guides: list[Image.Image] = (),
    id_images: list[Image.Image] = (),
):
    """The GenerationRequest that re-runs this image's chunk (the image is number `r.batch_index` of it).

    guides: the ControlNet guide images in the recipe's order; ip_guides: every IP-Adapter's image
    prompts, adapter after adapter, in the recipe's order; id_images: puLID's reference photos, in order.

    The input images the recipe only names by pixel hash must be given back, and must be the same
    pixels: a RequestError names the one that is missing or different.
    """
    from daguerre.request import (
        AccelOptions,
        ControlRef,
        FaceFix,
        GenerationRequest,
        HiresFix,
        IpAdapterRef,
        LayerDiffuse,
        LoraRef,
        Outpaint,
        OutputSpec,
        PuLID,
    )

    ACCEL_FIELDS = _accel_fields()
    FACE_FIELDS = {f.name for f in fields(FaceFix)}

    for name, img, want in (
        ("seedImage", seed_image, r.seed_image_sha256),
        ("maskImage", mask_image, r.mask_image_sha256),
    ):
        if want and img is None:
            raise RequestError(f"this {r.workflow} recipe needs the original {name}", parameter=name)
        if want and pixels_sha256(img) != want:
            raise RequestError(f"{name} is not the image the recipe was made from (pixel hash differs)", parameter=name)
    wanted = [h for ip in r.ip_adapters for h in ip["guide_sha256"]]
    if len(ip_guides) != len(wanted):
        raise RequestError(
            f"this recipe used {len(wanted)} IP-Adapter image prompt(s), {len(ip_guides)} given; give each, in order",
            parameter="ipAdapters.guideImages",
        )
    if any(pixels_sha256(g) != h for g, h in zip(ip_guides, wanted, strict=True)):
        raise RequestError(
            "an IP-Adapter image prompt is not the one the recipe was made from (pixel hash differs)",
            parameter="ipAdapters.guideImages",
        )
    pulid = None
    if r.pulid:
        wanted = r.pulid["images_sha256"]
        if len(id_images) != len(wanted) or any(pixels_sha256(g) != h for g, h in zip(id_images, wanted, strict=False)):
            raise RequestError(f"this recipe's puLID used {len(wanted)} reference photo(s); give the same ones, "
                               f"in order ({len(id_images)} given, or their pixels differ)",
                               parameter="puLID.images")  # fmt: skip
        pulid = PuLID(images=tuple(id_images), id_weight=r.pulid["id_weight"],
                      cfg_start_step=r.pulid["cfg_start_step"], true_cfg_scale=r.pulid["true_cfg_scale"])  # fmt: skip
    adapters, at = [], 0
    for ip in r.ip_adapters:
        n = len(ip["guide_sha256"])
        adapters.append(
            IpAdapterRef(model=ip["model"], guide_images=tuple(ip_guides[at : at + n]), weight=ip["weight"])
        )
        at += n
    if len(guides) != len(r.controlnets):
        raise RequestError(
            f"this recipe used {len(r.controlnets)} ControlNet guide image(s), {len(guides)} given; "
            "give each, in order",
            parameter="controlNet.guideImage",
        )
    controls = []
    for c, g in zip(r.controlnets, guides, strict=True):
        if pixels_sha256(g) != c["guide_sha256"]:
            raise RequestError(
                "a ControlNet guide image is not the one the recipe was made from (pixel hash differs)",
                parameter="controlNet.guideImage",
            )
        controls.append(
            ControlRef(
                guide_image=g, **{k: v for k, v in c.items() if k not in ("start", "end", "guide_sha256", "kind")}
            )
        )
    return GenerationRequest(
        model=model or r.model,
        positive_prompt=r.positive_prompt,
        negative_prompt=r.negative_prompt,
        width=r.width,
        height=r.height,
        steps=r.steps,
        guidance=r.guidance,
        true_cfg_scale=r.true_cfg_scale,
        seed=r.seed - r.batch_index,
        number_results=r.batch_size,
        scheduler=r.scheduler,
        seed_image=seed_image,
        mask_image=mask_image,
        strength=r.strength,
        output=OutputSpec(format=r.output_format, quality=r.output_quality),
        loras=tuple(LoraRef(model=x["model"], weight=x["weight"]) for x in r.loras),
        outpaint=Outpaint(**r.outpaint) if r.outpaint else None,
        mask_margin=r.mask_margin,
        prompt_weighting=r.prompt_weighting,
        controlnets=tuple(controls),
        ip_adapters=tuple(adapters),
        accelerator=AccelOptions(**{k: v for k, v in (r.accelerator or {}).items() if k in ACCEL_FIELDS}),
        hires_fix=HiresFix(model=r.hires_fix["upscaler"], steps=r.hires_fix["steps"], strength=r.hires_fix["strength"])
        if r.hires_fix
        else None,
        face_fix=FaceFix(**{k: v for k, v in r.face_fix.items() if k in FACE_FIELDS}) if r.face_fix else None,
        layer_diffuse=LayerDiffuse(r.layer_diffuse["lora"], r.layer_diffuse["vae"]) if r.layer_diffuse else None,
        pulid=pulid,
    )
