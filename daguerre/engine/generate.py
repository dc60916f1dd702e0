"""The generation workflows (txt2img, img2img, inpaint) on diffusers' Flux pipelines.

Seeds are diffusers-compatible by construction: image i of a request with seed s gets its
own CPU generator seeded s + i, passed to the pipeline as one generator per image, which is
exactly how diffusers draws per-image noise (and per-image VAE samples for img2img). So image
i equals a plain FluxPipeline call with `torch.Generator("cpu").manual_seed(s + i)`, at any
batch size and on any device. numberResults is run in chunks of `max_batch` images.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from PIL import Image

from daguerre.engine.accel import StepCache
from daguerre.engine.compose import composite, feather_alpha, outpaint_canvas
from daguerre.engine.models import (
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    MAX_SEQUENCE_LENGTH,
    LoadedModel,
    ModelManager,
    set_ip_adapters,
    set_loras,
)
from daguerre.engine.profiles import request_cache
from daguerre.engine.samplers import NOISE_SALT
from daguerre.engine.schedulers import make_scheduler
from daguerre.engine.weighting import encode as weighted_encode
from daguerre.errors import Cancelled, DaguerreError, OutOfMemory, RequestError, UnsupportedError
from daguerre.imaging import encode, to_pil
from daguerre.prompts.studio import CLIP_WINDOW, DEFAULT_NEGATIVE, enhance_prompt, lint
from daguerre.prompts.weighting import parse as parse_prompt
from daguerre.recipe import Recipe, pixels_sha256
from daguerre.request import CONTROL_TYPES, DEFAULT_STRENGTH, GenerationRequest, OutputSpec, validate

# FLUX.1 latent -> RGB projection for previews: ComfyUI's published factors for the 16-channel
# FLUX VAE latent (comfy/latent_formats.py, class Flux), applied to the scaled latent.
FLUX_LATENT_RGB = torch.tensor(
    [
        [-0.0346, 0.0244, 0.0681],
        [0.0034, 0.0210, 0.0687],
        [0.0275, -0.0668, -0.0433],
        [-0.0174, 0.0160, 0.0617],
        [0.0859, 0.0721, 0.0329],
        [0.0004, 0.0383, 0.0115],
        [0.0405, 0.0861, 0.0915],
        [-0.0236, -0.0185, -0.0259],
        [-0.0245, 0.0250, 0.1180],
        [0.1008, 0.0755, -0.0421],
        [-0.0515, 0.0201, 0.0011],
        [0.0428, -0.0012, -0.0036],
        [0.0817, 0.0765, 0.0749],
        [-0.1264, -0.0522, -0.1103],
        [-0.0280, -0.0881, -0.0499],
        [-0.1262, -0.0982, -0.0778],
    ]
)  # (16, 3)
FLUX_LATENT_RGB_BIAS = torch.tensor([-0.0329, -0.0718, -0.0851])  # (3,)


@dataclass(frozen=True)
class ProgressEvent:
    """One denoising step done, for the images of the current chunk."""

    step: int  # 1-based step within this chunk's run
    total: int  # denoising steps this chunk runs (img2img: about steps * strength)
    elapsed: float  # seconds since the request started
    images: tuple[int, ...]  # indices (0-based, within the request) of the images this step advanced
    preview: Image.Image | None = None  # cheap latent->RGB preview of the chunk's first image (1/8 size)


class CancelToken:
    """Set from any thread; the engine stops at the next step boundary with Cancelled."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@dataclass
class GeneratedImage:
    """One output image with the seed and recipe that made it."""

    index: int  # position within the request
    seed: int
    pixels: np.ndarray  # (H, W, 3) float32 in [0, 1], before 8-bit rounding
    image: Image.Image  # 8-bit RGB
    recipe: Recipe
    seconds: float = 0.0  # compute time of its forward pass, shared equally by the images in it
    warnings: tuple[str, ...] = ()  # prompt lint and enhancement notes (never blocking)

    def encode(self, output: OutputSpec | None = None) -> bytes:
        output = output or OutputSpec(self.recipe.output_format, self.recipe.output_quality)
        return encode(
            self.image,
            fmt=output.format,
            quality=output.quality,
            recipe_json=self.recipe.to_json(),
            parameters_text=self.recipe.parameters_text(),
        )


@dataclass
class GenerationResult:
    images: list[GeneratedImage]
    seed: int  # the request's base seed (random if it was not given)
    model_id: str
    seconds: float = 0.0
    chunks: list[int] = field(default_factory=list)  # images per forward pass, in order
    warnings: tuple[str, ...] = ()  # prompt lint and enhancement notes (never blocking)


def latent_preview(latents: torch.Tensor, pipe, height: int, width: int) -> Image.Image:
    """Preview of the first image from packed FLUX latents (B, L, 64): 1/8 size, no VAE."""
    x = pipe._unpack_latents(latents[:1].float().cpu(), height, width, pipe.vae_scale_factor)  # (1, 16, h, w)
    rgb = torch.einsum("bchw,cr->bhwr", x, FLUX_LATENT_RGB) + FLUX_LATENT_RGB_BIAS  # (1, h, w, 3)
    return Image.fromarray(((rgb[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy(), "RGB")


class Engine:
    """Runs GenerationRequests on resident models. One request at a time per device."""

    def __init__(self, *, models: ModelManager, max_batch: int | None = None, default_negative: str = DEFAULT_NEGATIVE):
        self.models = models
        # The unconditional prompt of true CFG when a request gives none (settings.default_negative_prompt).
        self.default_negative = default_negative
        # Batching fills a GPU; on the CPU a step is already compute-bound (measured in bench/overhead).
        self.max_batch = max_batch or (1 if models.device.type == "cpu" else 4)

    def generate(
        self,
        req: GenerationRequest,
        *,
        on_progress: Callable[[ProgressEvent], None] | None = None,
        cancel: CancelToken | None = None,
        preview: bool = False,
        max_batch: int | None = None,
        on_image: Callable[[GeneratedImage], None] | None = None,
    ) -> GenerationResult:
        """Generate every image of a request; raises Cancelled, OutOfMemory or a DaguerreError.

        max_batch overrides the engine's chunk size for this request (reproduce uses it to
        re-run an image's original chunk). on_image is called with each image as soon as its
        chunk is done, so a server can deliver results one by one.
        """
        t0 = time.perf_counter()
        validate(req)
        max_batch = max_batch or self.max_batch
        seed = req.seed if req.seed is not None else secrets.randbelow(2**32)
        original = req.positive_prompt
        with self.models.lease(req.model) as model:
            req, notes = _enhanced(req, seed, model)
            try:
                images, chunks = self._run(
                    model, req, seed, t0, on_progress, cancel, preview, max_batch, on_image, original, notes
                )
            except torch.OutOfMemoryError as e:
                raise _out_of_memory(
                    f"out of device memory for {req.width}x{req.height} x{req.number_results}; "
                    "lower numberResults, the size, or max_batch"
                ) from e
        return GenerationResult(
            images=images,
            seed=seed,
            model_id=model.spec.id,
            seconds=time.perf_counter() - t0,
            chunks=chunks,
            warnings=images[0].warnings if images else (),
        )

    def batch_key(self, req: GenerationRequest) -> tuple | None:
        """Requests with the same key can share forward passes (generate_batch); None: it runs alone.

        Shared passes are for plain text-to-image on one model with one plan (size, steps, guidance,
        true CFG, sampler, LoRAs): prompts, negative prompts, seeds, numberResults and output formats
        may differ. Image inputs, ControlNets, IP-Adapters and step caching (whose skip decisions are
        taken for a whole batch) keep a request alone, and so does an engine with max_batch 1.
        """
        if self.max_batch < 2 or req.workflow != "txt2img" or req.accelerator.enabled:
            return None
        if req.seed_image is not None or req.mask_image is not None or req.controlnets or req.ip_adapters:
            return None
        try:
            profile = self.models.catalog.get(req.model).profile or self.models.profile
        except DaguerreError:
            return None  # an unknown model fails when the request runs
        if request_cache(profile, req.accelerator).enabled:  # turbo caches by default
            return None
        loras = tuple((ref.model, ref.weight) for ref in req.loras)
        return (req.model, req.width, req.height, req.steps, req.guidance, req.true_cfg_scale, req.scheduler, loras)

    def generate_batch(
        self,
        reqs: list[GenerationRequest],
        *,
        on_image: Callable[[int, GeneratedImage], None] | None = None,
    ) -> list[GenerationResult | DaguerreError]:
        """Several requests with one batch_key, their images sharing forward passes of up to max_batch.

        Each image equals its solo run (same seed, same noise, same scheduler noise), up to the float
        rounding of larger matrix products. A request that fails its own checks (a bad weighted prompt,
        a prompt past the text encoder) gets its error in its slot and the others go on. on_image is
        called with (position in reqs, image) as each pass finishes. Errors that are not the request's
        (out of memory, a failing pass) are raised: the caller runs the requests alone to tell them apart.
        """
        if len({self.batch_key(r) for r in reqs} | {None}) != 2:
            raise ValueError("generate_batch needs requests with one shared batch_key")
        t0 = time.perf_counter()
        outcomes: list[GenerationResult | DaguerreError | None] = [None] * len(reqs)
        images: list[list[GeneratedImage]] = [[] for _ in reqs]
        with self.models.lease(reqs[0].model) as model:
            preps: list[_Prepared] = []
            for k, req in enumerate(reqs):
                try:
                    validate(req)
                    seed = req.seed if req.seed is not None else secrets.randbelow(2**32)
                    enhanced, notes = _enhanced(req, seed, model)
                    prep = self._prepare(model, enhanced, seed, req.positive_prompt, notes)
                except DaguerreError as e:
                    outcomes[k] = e
                    continue
                prep.slot = k
                preps.append(prep)
            items = [(p, i) for p in preps for i in range(p.req.number_results)]
            chunks: list[list[int]] = [[] for _ in reqs]
            try:
                for start in range(0, len(items), self.max_batch):
                    chunk = items[start : start + self.max_batch]
                    for prep, image in self._denoise(model, chunk, t0):
                        images[prep.slot].append(image)
                        if on_image is not None:
                            on_image(prep.slot, image)
                    for prep in {id(p): p for p, _ in chunk}.values():
                        chunks[prep.slot].append(len(chunk))
            except torch.OutOfMemoryError as e:
                raise _out_of_memory(f"out of device memory for a shared pass of {len(items)} images") from e
        for prep in preps:
            got = images[prep.slot]
            outcomes[prep.slot] = GenerationResult(
                images=got,
                seed=prep.seed,
                model_id=model.spec.id,
                seconds=time.perf_counter() - t0,
                chunks=chunks[prep.slot],
                warnings=got[0].warnings if got else (),
            )
        return outcomes

    def _run(
        self,
        model: LoadedModel,
        req: GenerationRequest,
        seed: int,
        t0: float,
        on_progress,
        cancel: CancelToken | None,
        preview: bool,
        max_batch: int,
        on_image: Callable[[GeneratedImage], None] | None,
        original_prompt: str,
        notes: tuple[str, ...],
    ) -> tuple[list[GeneratedImage], list[int]]:
        prep = self._prepare(model, req, seed, original_prompt, notes)
        images: list[GeneratedImage] = []
        chunks = []
        for start in range(0, req.number_results, max_batch):
            items = [(prep, i) for i in range(start, min(start + max_batch, req.number_results))]
            for _, image in self._denoise(model, items, t0, on_progress, cancel, preview):
                images.append(image)
                if on_image is not None:
                    on_image(image)
            chunks.append(len(items))
        return images, chunks

    def _prepare(
        self, model: LoadedModel, req: GenerationRequest, seed: int, original_prompt: str, notes: tuple[str, ...]
    ) -> _Prepared:
        """Everything a request needs before denoising: plan, adapters, pipeline, encoded prompts, inputs."""
        # 1. Resolve model-dependent defaults and check what depends on the model's kind.
        plan = _plan(model, req, self.default_negative)
        structural, plan = self._structural_control(model, req, plan)

        # 2. Activate the request's LoRAs (hot-swapped; none = the base model, bit for bit).
        loras = self._resolve_loras(req)
        set_loras(
            model,
            [(f"lora_{digest[:16]}", spec.path, w) for spec, digest, w in loras],
            structural.lora if structural is not None else None,
        )
        lora_recipe = tuple({"model": spec.id, "sha256": digest, "weight": w} for spec, digest, w in loras)

        # 3. Encode the prompts once for every chunk; prepare the image inputs once.
        ip_kwargs, ip_recipe = self._ip_adapters(model, req, plan)
        control = self._resolve_controlnets(model, req, plan)
        pipe = (
            model.controlnet_pipeline(plan.pipeline, [c.net for c in control])
            if control
            else (model.pipeline(plan.pipeline))
        )
        pe, ppe = _encode(pipe, req.positive_prompt, req.prompt_weighting, model.device, plan.max_seq)
        npe = nppe = None
        if plan.negative is not None:
            npe, nppe = _encode(
                pipe, plan.negative, req.prompt_weighting, model.device, plan.max_seq, parameter="negativePrompt"
            )
        image_kwargs, output_type, finish = _image_inputs(req, plan)
        warnings = notes + tuple(
            str(w)
            for w in lint(
                req.positive_prompt,
                negative_prompt=req.negative_prompt,
                true_cfg=plan.true_cfg is not None,
                default_negative=plan.negative if not req.negative_prompt else None,
                clip_tokenizer=pipe.tokenizer,
                t5_tokenizer=pipe.tokenizer_2,
                max_sequence_length=plan.max_seq,
            )
        )
        control_recipe = tuple(_control_entry(c.ref, c.spec, start=c.start, end=c.end) for c in control)
        if structural is not None:
            control_recipe += (_control_entry(structural.ref, structural.spec, kind=structural.spec.kind),)
        return _Prepared(
            req=req,
            seed=seed,
            plan=plan,
            pipe=pipe,
            embeds=(pe, ppe, npe, nppe),
            image_kwargs=image_kwargs,
            output_type=output_type,
            finish=finish,
            ip_kwargs=ip_kwargs,
            control=control,
            structural=structural,
            warnings=warnings,
            recipe_extra={
                "loras": lora_recipe,
                "controlnets": control_recipe,
                "ip_adapters": ip_recipe,
                "negative_prompt": plan.negative if plan.negative is not None else req.negative_prompt,
                "original_prompt": original_prompt if original_prompt != req.positive_prompt else None,
                "character": req.character,
            },
        )

    def _denoise(
        self,
        model: LoadedModel,
        items: list[tuple[_Prepared, int]],
        t0: float,
        on_progress=None,
        cancel: CancelToken | None = None,
        preview: bool = False,
    ) -> list[tuple[_Prepared, GeneratedImage]]:
        """One forward pass over `items` (prepared request, image index): one request's chunk, or images of
        several requests with the same plan (generate_batch). Every image keeps its own generator (seed +
        index), so it equals its solo run."""
        first = items[0][0]
        req, plan, pipe = first.req, first.plan, first.pipe
        idx = tuple(i for _, i in items)
        kwargs = dict(
            height=req.height,
            width=req.width,
            num_inference_steps=plan.steps,
            max_sequence_length=plan.max_seq,
            generator=[torch.Generator("cpu").manual_seed(p.seed + i) for p, i in items],
            output_type=first.output_type,
            callback_on_step_end=self._callback(idx, req, t0, on_progress, cancel, preview),
            **first.image_kwargs,
        )
        if all(p is first for p, _ in items):  # one request: its embeddings, repeated by the pipeline
            pe, ppe, npe, nppe = first.embeds
            kwargs["num_images_per_prompt"] = len(items)
        else:  # several requests: one row of embeddings per image
            pe, ppe, npe, nppe = (
                None if first.embeds[k] is None else torch.cat([p.embeds[k] for p, _ in items]) for k in range(4)
            )
            kwargs["num_images_per_prompt"] = 1
        kwargs.update(prompt_embeds=pe, pooled_prompt_embeds=ppe)
        if plan.guidance is not None:
            kwargs["guidance_scale"] = plan.guidance
        if plan.negative is not None:
            kwargs.update(negative_prompt_embeds=npe, negative_pooled_prompt_embeds=nppe, true_cfg_scale=plan.true_cfg)
        if plan.strength is not None:
            kwargs["strength"] = plan.strength
        if first.control:
            kwargs.update(_control_kwargs(first.control, single=len(first.control) == 1))
        if first.structural is not None:
            kwargs["control_image"] = first.structural.image
        kwargs.update(first.ip_kwargs)
        if plan.pipeline == "kontext":  # Kontext would rescale the output to 1 MP otherwise
            kwargs["max_area"] = req.width * req.height
        if cancel is not None and cancel.cancelled:
            raise Cancelled("generation cancelled before it started")
        # A fresh scheduler per pass; stochastic samplers draw their per-step noise per image from a
        # generator seeded (image seed + NOISE_SALT), so a seed reproduces at any batch size.
        noise_gens = [torch.Generator("cpu").manual_seed((p.seed + i + NOISE_SALT) % 2**64) for p, i in items]
        pipe.scheduler = make_scheduler(req.scheduler, dict(model.pipe.scheduler.config), model.kind, noise_gens)
        t_chunk = time.perf_counter()
        accel = request_cache(model.applied.profile, req.accelerator)  # turbo: TeaCache by default
        cache = StepCache(pipe.transformer, accel, plan.steps, pipe.scheduler.order)
        with torch.inference_mode(), cache if accel.enabled else contextlib.nullcontext():
            out = pipe(**kwargs).images
        accel_recipe = None
        if accel.enabled:
            accel_recipe = {
                **{k: v for k, v in asdict(accel).items() if v not in (None, False)},
                "computed": cache.stats.computed,
                "skipped": cache.stats.skipped,
            }
        if first.output_type == "pil":  # mask-crop inpainting pastes back in PIL
            out = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in out]
        per_image = (time.perf_counter() - t_chunk) / len(items)
        # 5. Finish (paste back), attach each image's recipe, hand it on.
        done = []
        for (prep, i), raw in zip(items, out, strict=True):
            own = [k for p, k in items if p is prep]  # this request's images in the pass (reproduce re-runs them)
            recipe = replace(
                self._recipe(model, prep.req, prep.seed + i, prep.plan),
                batch_size=len(own),
                batch_index=own.index(i),
                accelerator=accel_recipe,
                **prep.recipe_extra,
            )
            pixels = prep.finish(raw)  # (H, W, 3) float32
            image = GeneratedImage(
                index=i,
                seed=prep.seed + i,
                pixels=pixels,
                image=to_pil(pixels),
                recipe=recipe,
                seconds=per_image,
                warnings=prep.warnings,
            )
            done.append((prep, image))
        return done

    def _structural_control(self, model: LoadedModel, req: GenerationRequest, plan: _Plan):
        """(the FLUX.1 control checkpoint or BFL control LoRA entry, updated plan), or (None, plan).

        FLUX.1 Canny/Depth models take the control image's latents as extra input channels
        (FluxControlPipeline*): a full control checkpoint is the request's model, a control LoRA
        widens a dev model's input layer. Either is given as a controlNet entry with its guide.
        """
        entries = [(c, self.models.catalog.get(c.model, parameter="controlNet.model")) for c in req.controlnets]
        found = [(c, s) for c, s in entries if s.kind in ("control", "controllora")]
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
        guide = _prepare_guide(c, req)
        lora = None
        if spec.kind == "controllora":
            lora = (f"control_{self.models.hashes.sha256([spec.path])[:16]}", spec.path, c.weight)
        guidance = plan.guidance
        if req.guidance is None:
            guidance = DEFAULT_GUIDANCE["control-depth" if "depth" in spec.name.lower() else "control"]
        plan = replace(plan, pipeline=f"control-{plan.pipeline}", guidance=guidance)
        return _Structural(spec=spec, image=guide, lora=lora, ref=c), plan

    def _resolve_controlnets(self, model: LoadedModel, req: GenerationRequest, plan: _Plan) -> list[_Control]:
        """Each requested ControlNet with its folder, prepared guide image and active step window."""
        out = []
        # A weight-0 ControlNet adds nothing, so it is not run: that keeps "weight 0 = no ControlNet"
        # exact (diffusers' ControlNet pipeline would otherwise draw its guide latent from the same
        # generators first, shifting the noise).
        for c in (c for c in req.controlnets if c.weight != 0):
            spec = self.models.catalog.get(c.model, parameter="controlNet.model")
            if spec.kind in ("control", "controllora"):
                continue  # handled by _structural_control
            if model.kind not in ("dev", "schnell") or req.workflow == "outpaint" or req.mask_margin:
                raise UnsupportedError(
                    f"controlNet works with dev/schnell models for txt2img, img2img and inpaint (not with "
                    f"{model.kind} models, outpaint or maskMargin yet)",
                    parameter="controlNet",
                )
            if spec.kind != "controlnet":
                raise RequestError(
                    f"controlNet.model {c.model!r} is a {spec.kind} model, not a FLUX.1 ControlNet",
                    parameter="controlNet.model",
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
            guide = _prepare_guide(c, req)
            out.append(
                _Control(
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

    def _ip_adapters(self, model: LoadedModel, req: GenerationRequest, plan: _Plan) -> tuple[dict, tuple]:
        """Load the request's IP-Adapters (or unload all) and embed their guide images once.

        Several guide images for one adapter are averaged in CLIP image-embedding space. Returns the
        pipeline arguments and the recipe entries.
        """
        specs = []
        for ip in req.ip_adapters:
            spec = self.models.catalog.get(ip.model, parameter="ipAdapters.model")
            if spec.kind != "ipadapter":
                raise RequestError(
                    f"ipAdapters.model {ip.model!r} is a {spec.kind} model, not a FLUX.1 IP-Adapter",
                    parameter="ipAdapters.model",
                )
            specs.append(spec)
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
                "sha256": self.models.hashes.sha256([s.path]),
                "weight": ip.weight,
                "guide_sha256": [pixels_sha256(g) for g in ip.guide_images],
            }
            for s, ip in zip(specs, req.ip_adapters, strict=True)
        )
        return kwargs, recipe

    def _resolve_loras(self, req: GenerationRequest) -> list[tuple]:
        """(spec, file sha256, weight) for each requested LoRA; the catalog must know it as a LoRA."""
        out = []
        for ref in req.loras:
            spec = self.models.catalog.get(ref.model, parameter="lora.model")
            if spec.kind != "lora":
                raise RequestError(
                    f"lora.model {ref.model!r} is a {spec.kind} model, not a LoRA", parameter="lora.model"
                )
            out.append((spec, self.models.hashes.sha256([spec.path]), ref.weight))
        return out

    @staticmethod
    def _callback(idx, req: GenerationRequest, t0: float, on_progress, cancel: CancelToken | None, preview: bool):
        def callback(pipe, i, t, kw):
            if on_progress is not None:
                pv = latent_preview(kw["latents"], pipe, req.height, req.width) if preview else None
                on_progress(
                    ProgressEvent(
                        step=i + 1, total=pipe.num_timesteps, elapsed=time.perf_counter() - t0, images=idx, preview=pv
                    )
                )
            if cancel is not None and cancel.cancelled:
                raise Cancelled(f"generation cancelled after step {i + 1}")
            return {}

        return callback

    @staticmethod
    def _recipe(model: LoadedModel, req: GenerationRequest, seed: int, plan: _Plan) -> Recipe:
        return Recipe(
            model=model.spec.id,
            model_hash=model.checkpoint_hash,
            workflow=req.workflow,
            positive_prompt=req.positive_prompt,
            negative_prompt=req.negative_prompt,
            seed=seed,
            steps=plan.steps,
            scheduler=req.scheduler,
            guidance=plan.guidance,
            true_cfg_scale=plan.true_cfg,
            width=req.width,
            height=req.height,
            strength=plan.strength,
            seed_image_sha256=pixels_sha256(req.seed_image) if req.seed_image is not None else None,
            mask_image_sha256=pixels_sha256(req.mask_image) if req.mask_image is not None else None,
            output_format=req.output.format,
            output_quality=req.output.quality,
            device=model.device.type,
            dtype=str(model.dtype).removeprefix("torch."),
            outpaint=asdict(req.outpaint) if req.outpaint is not None else None,
            mask_margin=req.mask_margin,
            prompt_weighting=req.prompt_weighting,
        )


@dataclass(frozen=True)
class _Plan:
    """What a request resolves to on a given model."""

    pipeline: str  # txt2img | img2img | inpaint | fill
    steps: int
    guidance: float | None  # None: the model has no guidance input
    max_seq: int  # T5 tokens
    strength: float | None  # None without a seed image
    true_cfg: float | None  # None: true CFG off
    negative: str | None  # the unconditional prompt when true CFG is on


@dataclass
class _Prepared:
    """One request made ready to denoise on a model (Engine._prepare)."""

    req: GenerationRequest
    seed: int  # the request's base seed; image i uses seed + i
    plan: _Plan
    pipe: object  # the diffusers pipeline it runs on
    embeds: tuple  # (T5 sequence, CLIP pooled, negative sequence or None, negative pooled or None)
    image_kwargs: dict
    output_type: str
    finish: Callable[[np.ndarray], np.ndarray]
    ip_kwargs: dict
    control: list
    structural: _Structural | None
    warnings: tuple[str, ...]
    recipe_extra: dict  # recipe fields that come from preparation (loras, controlnets, prompts...)
    slot: int = 0  # position in a generate_batch call


# controlMode -> factor on the ControlNet's conditioning scale: FLUX's distilled guidance has no
# separate unconditional pass to bias, so "who leads" is expressed in how strongly the ControlNet
# residuals are added. balanced: the weight as given; prompt: half; controlnet: one and a half.
CONTROL_MODE_SCALE = {"balanced": 1.0, "prompt": 0.5, "controlnet": 1.5}


@dataclass(frozen=True)
class _Structural:
    """A FLUX.1 control checkpoint or control LoRA for this request, with its prepared guide."""

    spec: object  # the control model's or control LoRA's ModelSpec
    image: Image.Image  # guide at the output size, preprocessed
    lora: tuple | None  # (adapter name, file, weight) for a control LoRA
    ref: object  # the ControlRef as requested


@dataclass(frozen=True)
class _Control:
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


def _prepare_guide(c, req: GenerationRequest) -> Image.Image:
    """A controlNet entry's guide at the output size, through its preprocessor."""
    guide = c.guide_image.convert("RGB").resize((req.width, req.height), Image.Resampling.LANCZOS)
    return canny(guide, c.canny_low, c.canny_high) if c.preprocessor == "canny" else guide


def _control_entry(ref, spec, **extra) -> dict:
    """A controlNet entry as the recipe records it: the request's fields, the model id, the guide's hash."""
    fields_ = {k: v for k, v in asdict(ref).items() if k not in ("guide_image", "model")}
    return {**fields_, "model": spec.id, **extra, "guide_sha256": pixels_sha256(ref.guide_image)}


def canny(image: Image.Image, low: int, high: int) -> Image.Image:
    """Canny edges (OpenCV) of an RGB image, as a 3-channel white-on-black control image."""
    import cv2

    edges = cv2.Canny(np.asarray(image.convert("L")), low, high)  # (H, W) uint8
    return Image.fromarray(np.stack([edges] * 3, axis=-1), "RGB")


def _control_kwargs(control: list[_Control], *, single: bool) -> dict:
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


def _out_of_memory(message: str) -> OutOfMemory:
    """The request's OutOfMemory error, after giving the failed pass's cached blocks back to the device."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return OutOfMemory(message)


def _enhanced(req: GenerationRequest, seed: int, model: LoadedModel) -> tuple[GenerationRequest, tuple[str, ...]]:
    """The request with its prompt enhanced when it asks (deterministic per seed, so a seed reproduces the
    prompt too), and the notes to report. Additions stop before CLIP's token window: the pooled embedding
    would not see them."""
    if not req.enhance_prompt:
        return req, ()
    tokenizer = model.pipe.tokenizer

    def fits(text: str) -> bool:
        return len(tokenizer(text, truncation=False, verbose=False).input_ids) <= CLIP_WINDOW

    enhanced = enhance_prompt(req.positive_prompt, seed, fits=fits)
    return replace(req, positive_prompt=enhanced.text), tuple(f"enhance_prompt: {n}" for n in enhanced.notes)


def _plan(model: LoadedModel, req: GenerationRequest, default_negative: str = "") -> _Plan:
    """Model-dependent defaults and the checks that need the model's kind."""
    kind = model.kind
    workflow = req.workflow
    if kind not in ("dev", "schnell", "fill", "kontext", "control"):
        raise RequestError(
            f"model {model.spec.name} is a {kind} model, not a FLUX.1 base model (dev, schnell, fill, kontext "
            "or control)",
            parameter="model",
        )
    if kind == "control" and workflow == "outpaint":
        raise UnsupportedError(
            f"outpaint is not supported with FLUX.1 control model {model.spec.name}", parameter="model"
        )
    if kind == "kontext" and workflow not in ("txt2img", "img2img"):
        raise UnsupportedError(
            f"model {model.spec.name} is a FLUX.1 Kontext model: it edits a seedImage used as a reference "
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
            f"model {model.spec.name} is a FLUX.1 Fill model: it inpaints and outpaints (give a "
            "seedImage with a maskImage or outpaint)",
            parameter="model",
        )
    has_guidance = bool(model.pipe.transformer.config.guidance_embeds)
    if req.guidance is not None and not has_guidance:
        raise RequestError(
            f"CFGScale: {model.spec.name} is a schnell-type model with no guidance input, so CFGScale would "
            "have no effect; omit it (or use trueCFGScale with a negativePrompt for real CFG)",
            parameter="CFGScale",
        )
    # True CFG follows the reference API: the negative prompt only acts when guidance is on
    # (trueCFGScale > 1); with no negative prompt, the unconditional branch is the configured default
    # photoreal negative prompt (settings.default_negative_prompt; "" = the empty prompt).
    true_cfg = req.true_cfg_scale if (req.true_cfg_scale or 0) > 1 else None
    if true_cfg is not None and kind == "fill":
        raise UnsupportedError("trueCFGScale is not supported with FLUX.1 Fill models", parameter="trueCFGScale")
    strength = None
    if req.seed_image is not None and kind != "kontext":
        default = 1.0 if workflow == "outpaint" or kind == "fill" else DEFAULT_STRENGTH
        strength = req.strength if req.strength is not None else default
    guidance = None
    if has_guidance:
        guidance = req.guidance if req.guidance is not None else DEFAULT_GUIDANCE[kind]
    pipeline = {"fill": "fill", "kontext": "kontext"}.get(kind, "inpaint" if workflow == "outpaint" else workflow)
    return _Plan(
        pipeline=pipeline,
        steps=req.steps or DEFAULT_STEPS[kind],
        guidance=guidance,
        max_seq=MAX_SEQUENCE_LENGTH[kind],
        strength=strength,
        true_cfg=true_cfg,
        negative=(req.negative_prompt or default_negative or "") if true_cfg else None,
    )


def _encode(pipe, text: str, syntax: str | None, device, max_seq: int, parameter: str = "positivePrompt"):
    """(T5 sequence, CLIP pooled) embeddings: the pipeline's own encoding, or weighted per `syntax`."""
    with torch.inference_mode():
        if syntax is None or not text:
            pe, ppe, _ = pipe.encode_prompt(
                prompt=text, prompt_2=None, device=device, num_images_per_prompt=1, max_sequence_length=max_seq
            )
            return pe, ppe
        return weighted_encode(pipe, parse_prompt(text, syntax, parameter), device=device, max_sequence_length=max_seq)


MASK_FEATHER = 4  # px of inward feather when a mask crop is pasted back


def _image_inputs(req: GenerationRequest, plan: _Plan) -> tuple[dict, str, Callable[[np.ndarray], np.ndarray]]:
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
