"""Request planning: what a request resolves to on a model, before anything is loaded or run.

`resolved` fills in the defaults that depend on the model's kind (request.resolve, with the catalog saying
what the model and its control entries are); the API calls it at submission, without loading a model, and
the engine again (a resolved request resolves to itself). `plan` turns a resolved request into what the
pipelines take. `enhanced` runs the prompt studio's enhancer with the model's own CLIP tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from daguerre.engine.models.catalog import Catalog
from daguerre.errors import DaguerreError, RequestError
from daguerre.prompts.studio import CLIP_WINDOW, enhance_prompt
from daguerre.request import (
    HIRES_LATENT,
    LAYER_DIFFUSE_LORA,
    LAYER_DIFFUSE_VAE,
    MAX_SEQUENCE_LENGTH,
    GenerationRequest,
    resolve,
)

if TYPE_CHECKING:
    from daguerre.engine.models.resident import LoadedModel

STRUCTURAL = ("control", "controllora")  # controlNet entries that are FLUX.1 control models or control LoRAs


@dataclass(frozen=True)
class Plan:
    """What a resolved request runs as on a given model."""

    pipeline: str  # txt2img | img2img | inpaint | fill | kontext (control-* once a control model applies)
    steps: int
    guidance: float | None  # None: the model has no guidance input
    max_seq: int  # T5 tokens
    strength: float | None  # None without a seed image
    true_cfg: float | None  # None: true CFG off
    negative: str | None  # the unconditional prompt when true CFG is on


def control_kind(req: GenerationRequest, catalog: Catalog) -> str | None:
    """ "control-depth" or "control" when a controlNet entry is a FLUX.1 control model or control LoRA (their
    distilled guidance differs by condition: Depth's name says depth), else None."""
    for c in req.controlnets:
        spec = catalog.get(c.model, parameter="controlNet.model")
        if spec.kind in STRUCTURAL:
            return "control-depth" if "depth" in spec.name.lower() else "control"
    return None


# What each adapter field takes: (the catalog kinds it accepts, what the error calls them).
ADAPTER_KINDS = {
    "lora.model": (("lora",), "a LoRA"),
    "controlNet.model": (("controlnet", *STRUCTURAL), "a FLUX.1 ControlNet"),
    "ipAdapters.model": (("ipadapter",), "a FLUX.1 IP-Adapter"),
    "hiresFix.model": (("upscaler",), "an upscaler"),
    "layerDiffuse.lora": (("lora",), "a LoRA (the FLUX LayerDiffuse LoRA)"),
    "layerDiffuse.vae": (("transparentvae",), "a transparent VAE (TransparentVAE.pth)"),
}


def check_kinds(req: GenerationRequest, catalog: Catalog) -> None:
    """Each lora, controlNet and ipAdapters entry names a model of its kind (the API checks at submission, the
    engine when it resolves: one rule, one message)."""
    refs = [*(("lora.model", x.model) for x in req.loras), *(("controlNet.model", x.model) for x in req.controlnets),
            *(("ipAdapters.model", x.model) for x in req.ip_adapters)]  # fmt: skip
    if req.hires_fix is not None and req.hires_fix.model not in (None, HIRES_LATENT):
        refs.append(("hiresFix.model", req.hires_fix.model))
    if (ld := req.layer_diffuse) is not None:  # the reference's ids unless the request named others
        refs += [("layerDiffuse.lora", ld.lora or LAYER_DIFFUSE_LORA),
                 ("layerDiffuse.vae", ld.vae or LAYER_DIFFUSE_VAE)]  # fmt: skip
    if req.pulid is not None:  # its three files are the catalog's own choice (features/pulid.py)
        from daguerre.engine.features.pulid import identity_specs

        identity_specs(catalog)
    for parameter, ref in refs:
        kinds, what = ADAPTER_KINDS[parameter]
        try:
            spec = catalog.get(ref, parameter=parameter)
        except DaguerreError as e:
            if parameter.startswith("layerDiffuse.") and ref in (LAYER_DIFFUSE_LORA, LAYER_DIFFUSE_VAE):
                e.message = (f"{e.message}. layerDiffuse needs {what} under this id: see docs/models.md, "
                             '"LayerDiffuse files"')  # fmt: skip
                e.args = (e.message,)
            raise
        if spec.kind not in kinds:
            raise RequestError(f"{parameter} {ref!r} is a {spec.kind} model, not {what}", parameter=parameter)


def resolved(req: GenerationRequest, catalog: Catalog) -> GenerationRequest:
    """The request with its model's defaults filled in (steps, guidance, strength, seed, step-cache values),
    once every model it names is of the kind its field takes."""
    spec = catalog.get(req.model)
    check_kinds(req, catalog)
    return resolve(req, spec.kind, name=spec.name, control=control_kind(req, catalog))


def plan(model: LoadedModel, req: GenerationRequest, default_negative: str = "") -> Plan:
    """A resolved request on a loaded model: its pipeline, and what true CFG runs against."""
    kind = model.kind
    # True CFG follows the reference API: the negative prompt only acts when guidance is on
    # (trueCFGScale > 1); with no negative prompt, the unconditional branch is the configured default
    # photoreal negative prompt (settings.default_negative_prompt; "" = the empty prompt).
    true_cfg = req.true_cfg_scale if (req.true_cfg_scale or 0) > 1 else None
    workflow = req.workflow
    pipeline = {"fill": "fill", "kontext": "kontext"}.get(kind, "inpaint" if workflow == "outpaint" else workflow)
    return Plan(
        pipeline=pipeline,
        steps=req.steps,
        guidance=req.guidance if model.pipe.transformer.config.guidance_embeds else None,
        max_seq=MAX_SEQUENCE_LENGTH[kind],
        strength=req.strength,
        true_cfg=true_cfg,
        negative=(req.negative_prompt or default_negative or "") if true_cfg else None,
    )


def enhanced(req: GenerationRequest, model: LoadedModel) -> tuple[GenerationRequest, tuple[str, ...]]:
    """The request with its prompt enhanced when it asks (deterministic per seed, so a seed reproduces the
    prompt too), and the notes to report. Additions stop before CLIP's token window: the pooled embedding
    would not see them."""
    if not req.enhance_prompt:
        return req, ()
    tokenizer = model.pipe.tokenizer

    def fits(text: str) -> bool:
        return len(tokenizer(text, truncation=False, verbose=False).input_ids) <= CLIP_WINDOW

    out = enhance_prompt(req.positive_prompt, req.seed, fits=fits)
    return replace(req, positive_prompt=out.text), tuple(f"enhance_prompt: {n}" for n in out.notes)
