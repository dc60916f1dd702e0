"""ControlNets and the FLUX.1 control models: which controlNet entries run how, their guides, their arguments.

Two mechanisms take a controlNet entry:
- ControlNets (diffusers format: InstantX, Union; XLabs files converted at load) add residuals to the
  transformer's blocks through diffusers' FluxControlNet pipelines, several at once, each with a weight,
  a step window and a controlMode.
- FLUX.1 Canny/Depth control checkpoints and BFL control LoRAs ("structural" control) take the guide's
  latents as extra input channels through FluxControlPipeline*: a checkpoint is the request's model, a
  LoRA widens a dev model's input layer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from PIL import Image

from daguerre.engine.models.resident import LoadedModel, ModelManager
from daguerre.engine.plan import STRUCTURAL, Plan
from daguerre.errors import RequestError, UnsupportedError
from daguerre.recipe import pixels_sha256
from daguerre.request import CONTROL_TYPES, GenerationRequest

# controlMode -> factor on the ControlNet's conditioning scale: FLUX's distilled guidance has no
# separate unconditional pass to bias, so "who leads" is expressed in how strongly the ControlNet
# residuals are added. balanced: the weight as given; prompt: half; controlnet: one and a half.
CONTROL_MODE_SCALE = {"balanced": 1.0, "prompt": 0.5, "controlnet": 1.5}


@dataclass(frozen=True)
class Structural:
    """A FLUX.1 control checkpoint or control LoRA for this request, with its prepared guide."""

    spec: object  # the control model's or control LoRA's ModelSpec
    image: Image.Image  # guide at the output size, preprocessed
    lora: tuple | None  # (adapter name, file, weight) for a control LoRA
    ref: object  # the ControlRef as requested


@dataclass(frozen=True)
class Control:
    spec: object  # the ControlNet's ModelSpec
    net: object  # the loaded FluxControlNetModel
    image: Image.Image  # prepared guide: output size, preprocessed
    scale: float  # weight x controlMode factor
    start: float  # fraction of the run's steps where it starts acting
    end: float  # fraction where it stops
    ref: object  # the ControlRef as requested

    @property
    def mode_id(self) -> int | None:
        """The Union ControlNet's condition id (None for single-condition ControlNets)."""
        return CONTROL_TYPES.index(self.ref.control_type) if self.ref.control_type else None


def prepare_guide(c, req: GenerationRequest) -> Image.Image:
    """A controlNet entry's guide at the output size, through its preprocessor."""
    guide = c.guide_image.convert("RGB").resize((req.width, req.height), Image.Resampling.LANCZOS)
    return canny(guide, c.canny_low, c.canny_high) if c.preprocessor == "canny" else guide


def recipe_entry(ref, spec, **extra) -> dict:
    """A controlNet entry as the recipe records it: the request's fields, the model id, the guide's hash."""
    fields_ = {k: v for k, v in asdict(ref).items() if k not in ("guide_image", "model")}
    return {**fields_, "model": spec.id, **extra, "guide_sha256": pixels_sha256(ref.guide_image)}


def canny(image: Image.Image, low: int, high: int) -> Image.Image:
    """Canny edges (OpenCV) of an RGB image, as a 3-channel white-on-black control image."""
    from daguerre.imaging import canny_edges

    return canny_edges(image, low, high)


def pipeline_kwargs(control: list[Control], *, single: bool) -> dict:
    """Pipeline arguments for one ControlNet (plain values) or several (lists, in order)."""
    if single:
        c = control[0]
        return {
            "control_image": c.image,
            "controlnet_conditioning_scale": c.scale,
            "control_guidance_start": c.start,
            "control_guidance_end": c.end,
            "control_mode": c.mode_id,
        }
    return {
        "control_image": [c.image for c in control],
        "controlnet_conditioning_scale": [c.scale for c in control],
        "control_guidance_start": [c.start for c in control],
        "control_guidance_end": [c.end for c in control],
        "control_mode": [c.mode_id for c in control],
    }


def structural_control(models: ModelManager, model: LoadedModel, req: GenerationRequest, plan: Plan):
    """(the FLUX.1 control checkpoint or BFL control LoRA entry, updated plan), or (None, plan).

    FLUX.1 Canny/Depth models take the control image's latents as extra input channels
    (FluxControlPipeline*): a full control checkpoint is the request's model, a control LoRA
    widens a dev model's input layer. Either is given as a controlNet entry with its guide.
    """
    entries = [(c, models.catalog.get(c.model, parameter="controlNet.model")) for c in req.controlnets]
    found = [(c, s) for c, s in entries if s.kind in STRUCTURAL]
    if model.kind == "control" and not any(s.id == model.spec.id for _, s in found):
        raise RequestError(
            f"model {model.spec.name} is a FLUX.1 control model (Canny/Depth): give its guide image as "
            f'controlNet: [{{"model": "{model.spec.name}", "guideImage": ...}}]',
            parameter="controlNet",
        )
    if not found:
        return None, plan
    c, spec = found[0]
    if len(entries) > 1:
        raise UnsupportedError(
            "a FLUX.1 control model or control LoRA runs alone: it cannot be combined with other controlNet "
            "entries yet",
            parameter="controlNet",
        )
    if spec.kind == "control" and spec.id != model.spec.id:
        raise RequestError(
            f"controlNet.model {c.model!r} is a full FLUX.1 control checkpoint: use it as the request's model "
            "(with this controlNet entry for its guide image)",
            parameter="controlNet.model",
        )
    if spec.kind == "controllora" and model.kind != "dev":
        raise RequestError(
            f"controlNet.model {c.model!r} is a FLUX.1 control LoRA for dev-type models; {model.spec.name} "
            f"is a {model.kind} model",
            parameter="controlNet.model",
        )
    if plan.pipeline not in ("txt2img", "img2img", "inpaint") or req.workflow == "outpaint" or req.mask_margin:
        raise UnsupportedError(
            "FLUX.1 control models work for txt2img, img2img and inpaint (not outpaint or maskMargin yet)",
            parameter="controlNet",
        )
    if plan.true_cfg is not None:
        raise UnsupportedError(
            "trueCFGScale is not supported with FLUX.1 control models (their pipeline has no negative branch)",
            parameter="trueCFGScale",
        )
    windows = (c.start_step, c.end_step, c.start_percent, c.end_percent)
    if any(v is not None for v in windows) or c.mode != "balanced" or c.control_type is not None:
        raise UnsupportedError(
            "FLUX.1 control models read the guide at every step as input channels: startStep/endStep, "
            "their percentages, controlMode and controlType do not apply to them",
            parameter="controlNet",
        )
    if spec.kind == "control" and c.weight != 1:
        raise UnsupportedError(
            f"controlNet.weight {c.weight}: a full FLUX.1 control checkpoint has no strength input, so the "
            "weight must be 1 (a control LoRA takes a weight as its LoRA scale)",
            parameter="controlNet.weight",
        )
    guide = prepare_guide(c, req)
    lora = None
    if spec.kind == "controllora":
        lora = (f"control_{models.hashes.sha256([spec.path])[:16]}", spec.path, c.weight)
    # The guidance default for control models was resolved with the request (plan.control_kind).
    return Structural(spec=spec, image=guide, lora=lora, ref=c), replace(plan, pipeline=f"control-{plan.pipeline}")


def controlnets(models: ModelManager, model: LoadedModel, req: GenerationRequest, plan: Plan) -> list[Control]:
    """Each requested ControlNet with its folder, prepared guide image and active step window."""
    out = []
    # A weight-0 ControlNet adds nothing, so it is not run: that keeps "weight 0 = no ControlNet"
    # exact (diffusers' ControlNet pipeline would otherwise draw its guide latent from the same
    # generators first, shifting the noise).
    for c in (c for c in req.controlnets if c.weight != 0):
        spec = models.catalog.get(c.model, parameter="controlNet.model")
        if spec.kind in STRUCTURAL:
            continue  # handled by _structural_control
        if model.kind not in ("dev", "schnell") or req.workflow == "outpaint" or req.mask_margin:
            raise UnsupportedError(
                f"controlNet works with dev/schnell models for txt2img, img2img and inpaint (not with "
                f"{model.kind} models, outpaint or maskMargin yet)",
                parameter="controlNet",
            )
        if c.end_step is not None and c.end_step > plan.steps:
            raise RequestError(
                f"controlNet.endStep ({c.end_step}) must be at most steps ({plan.steps})",
                parameter="controlNet.endStep",
            )
        start = c.start_step / plan.steps if c.start_step is not None else (c.start_percent or 0) / 100
        end = (
            c.end_step / plan.steps
            if c.end_step is not None
            else (c.end_percent / 100 if c.end_percent is not None else 1.0)
        )
        net = model.controlnet(spec.path)
        if net.union and c.control_type is None:
            raise RequestError(
                f"controlNet.model {c.model!r} is a Union ControlNet: give controlNet.controlType "
                f"(one of {', '.join(CONTROL_TYPES)})",
                parameter="controlNet.controlType",
            )
        if not net.union and c.control_type is not None:
            raise RequestError(
                f"controlNet.controlType applies to Union ControlNets only; {c.model!r} follows one "
                "condition type, so omit it",
                parameter="controlNet.controlType",
            )
        if out and (net.input_hint_block is None) != (out[0].net.input_hint_block is None):
            raise UnsupportedError(
                "XLabs-format ControlNets cannot be combined with InstantX/Union ControlNets in one "
                "request (their residuals are added to the transformer differently); use one family",
                parameter="controlNet.model",
            )
        guide = prepare_guide(c, req)
        out.append(
            Control(
                spec=spec,
                net=net,
                image=guide,
                scale=c.weight * CONTROL_MODE_SCALE[c.mode],
                start=start,
                end=end,
                ref=c,
            )
        )
    return out
