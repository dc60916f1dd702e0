"""The engine: GenerationRequests in, images with their recipes out, on diffusers' Flux pipelines.

Seeds are diffusers-compatible by construction: image i of a request with seed s gets its
own CPU generator seeded s + i, passed to the pipeline as one generator per image, which is
exactly how diffusers draws per-image noise (and per-image VAE samples for img2img). So image
i equals a plain FluxPipeline call with `torch.Generator("cpu").manual_seed(s + i)`, at any
batch size and on any device. numberResults is run in chunks of `max_batch` images.

A request goes: resolve its defaults for the model (plan.py) -> prepare (adapters, prompts, image
inputs, ControlNets) -> denoise in passes -> finish (paste-back) -> recipe. The concepts live beside
this file: plan, prompting, inputs, controlnet, ip_adapter, preview, schedulers/samplers, stepcache,
profiles, memory, and models/ (files, residency, adapters).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from PIL import Image

from daguerre.engine import controlnet
from daguerre.engine import plan as planning
from daguerre.engine.features import faces as face_features
from daguerre.engine.features import hires, pulid
from daguerre.engine.features import layerdiffuse as layers
from daguerre.engine.features.dbcache import CacheDiT
from daguerre.engine.features.safety import SafetyChecker, Verdict, censor
from daguerre.engine.inputs import image_inputs
from daguerre.engine.ip_adapter import ip_adapter_inputs
from daguerre.engine.models.adapters import set_loras
from daguerre.engine.models.resident import LoadedModel, ModelManager
from daguerre.engine.plan import Plan
from daguerre.engine.preview import CancelToken, ProgressEvent, latent_preview
from daguerre.engine.profiles import request_cache
from daguerre.engine.prompting import encode_prompt
from daguerre.engine.samplers import NOISE_SALT
from daguerre.engine.schedulers import make_scheduler
from daguerre.engine.stepcache import StepCache
from daguerre.errors import Cancelled, DaguerreError, OutOfMemory, UnsupportedError
from daguerre.imaging import encode, to_pil
from daguerre.prompts.studio import DEFAULT_NEGATIVE, lint
from daguerre.recipe import Recipe, pixels_sha256
from daguerre.request import GenerationRequest, OutputSpec, resolve_accel, validate

__all__ = ["CancelToken", "Engine", "GeneratedImage", "GenerationResult", "ProgressEvent"]


@dataclass
class GeneratedImage:
    """One output image with the seed and recipe that made it."""

    index: int  # position within the request
    seed: int
    pixels: np.ndarray  # (H, W, 3) float32 in [0, 1], before 8-bit rounding
    image: Image.Image  # 8-bit RGB (RGBA with layerDiffuse)
    recipe: Recipe
    seconds: float = 0.0  # compute time of its forward pass, shared equally by the images in it
    warnings: tuple[str, ...] = ()  # prompt lint and enhancement notes (never blocking)
    verdict: Verdict | None = None  # the safety check, when the request asked for one
    faces: int | None = None  # faces the face enhancement redrew (None: it was not asked for)
    alpha: np.ndarray | None = None  # (H, W) float32 in [0, 1] with layerDiffuse, else None

    @property
    def nsfw(self) -> bool:
        """The safety checker flagged it (its pixels were then censored as the check's action says)."""
        return self.verdict is not None and self.verdict.flagged

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


class Engine:
    """Runs GenerationRequests on resident models. One request at a time per device."""

    def __init__(
        self,
        *,
        models: ModelManager,
        max_batch: int | None = None,
        default_negative: str = DEFAULT_NEGATIVE,
        safety: SafetyChecker | None = None,
        upscaler: str | None = None,
        face_detector: str = "auto",
    ):
        self.models = models
        self.safety = safety  # the checker requests with `safety` run on their images (None: none configured)
        self.upscaler = upscaler  # hiresFix: true uses it (settings.upscaler); None = the latent upscale
        self.upscalers = hires.Upscalers(models.device)
        self.transparent_vaes = layers.TransparentVAEs(models.device, models.dtype)
        self.identities = pulid.IdentityCache()  # puLID's ID former, EVA tower and face analysis, by path
        self.face_detector = face_detector  # ultralytics: auto | nudenet | haar | a YOLO model (settings.faces)
        self._detector: face_features.Detector | None = None
        self._detector_lock = threading.Lock()
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
        checked: bool = False,
    ) -> GenerationResult:
        """Generate every image of a request; raises Cancelled, OutOfMemory or a DaguerreError.

        max_batch overrides the engine's chunk size for this request (reproduce uses it to
        re-run an image's original chunk). on_image is called with each image as soon as its
        chunk is done, so a server can deliver results one by one. checked: the request was
        validated at the boundary already (a queued job's, resolved: its model defaults, such as
        Fill's guidance 30, may lie outside the ranges a client may send), so it is not checked again.
        """
        t0 = time.perf_counter()
        if not checked:
            validate(req)  # a library caller is the boundary
        self._check_safety(req)
        max_batch = max_batch or self.max_batch
        with self.models.lease(req.model) as model:
            req = planning.resolved(req, self.models.catalog)  # a queued job's request is already resolved
            original = req.positive_prompt
            req, notes = planning.enhanced(req, model)
            try:
                images, chunks = self._run(model, req, t0, on_progress, cancel, preview, max_batch, on_image,
                                           original, notes)  # fmt: skip
            except torch.OutOfMemoryError as e:
                raise _out_of_memory(
                    f"out of device memory for {req.width}x{req.height} x{req.number_results}; "
                    "lower numberResults, the size, or max_batch"
                ) from e
        return GenerationResult(
            images=images,
            seed=req.seed,
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
        if any(x is not None for x in (req.hires_fix, req.face_fix, req.layer_diffuse, req.pulid)):  # run per request
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
        on_progress: Callable[[ProgressEvent], None] | None = None,
        cancel: CancelToken | None = None,
        checked: bool = False,
    ) -> list[GenerationResult | DaguerreError]:
        """Several requests with one batch_key, their images sharing forward passes of up to max_batch.

        Each image equals its solo run (same seed, same noise, same scheduler noise), up to the float
        rounding of larger matrix products. A request that fails its own checks (a bad weighted prompt,
        a prompt past the text encoder) gets its error in its slot and the others go on. on_image is
        called with (position in reqs, image) as each pass finishes. Errors that are not the request's
        (out of memory, a failing pass) are raised: the caller runs the requests alone to tell them apart.
        on_progress, cancel and checked: as for generate (a cancel stops the whole shared pass).
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
                    if not checked:
                        validate(req)
                    self._check_safety(req)
                    req = planning.resolved(req, self.models.catalog)
                    enhanced, notes = planning.enhanced(req, model)
                    prep = self._prepare(model, enhanced, req.positive_prompt, notes)
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
                    for prep, image in self._denoise(model, chunk, t0, on_progress, cancel):
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
        t0: float,
        on_progress,
        cancel: CancelToken | None,
        preview: bool,
        max_batch: int,
        on_image: Callable[[GeneratedImage], None] | None,
        original_prompt: str,
        notes: tuple[str, ...],
    ) -> tuple[list[GeneratedImage], list[int]]:
        prep = self._prepare(model, req, original_prompt, notes)
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
        self, model: LoadedModel, req: GenerationRequest, original_prompt: str, notes: tuple[str, ...]
    ) -> _Prepared:
        """Everything a resolved request needs before denoising: plan, adapters, pipeline, prompts, inputs."""
        # 1. The plan on this model, with a FLUX.1 control model or control LoRA if the request has one.
        plan = planning.plan(model, req, self.default_negative)
        structural, plan = controlnet.structural_control(self.models, model, req, plan)

        # 2. Activate the request's LoRAs (hot-swapped; none = the base model, bit for bit).
        loras = self._resolve_loras(req)
        layer_plan = layers.plan(self, req)  # layerDiffuse: its LoRA joins the request's at weight 1
        extra = [(layer_plan.lora, layer_plan.lora_sha256, 1.0)] if layer_plan is not None else []
        set_loras(
            model,
            [(f"lora_{digest[:16]}", spec.path, w) for spec, digest, w in [*loras, *extra]],
            structural.lora if structural is not None else None,
        )
        lora_recipe = tuple({"model": spec.id, "sha256": digest, "weight": w} for spec, digest, w in loras)

        # 3. Encode the prompts once for every chunk; prepare the image inputs once.
        ip_kwargs, ip_recipe = ip_adapter_inputs(self.models, model, req, plan)
        control = controlnet.controlnets(self.models, model, req, plan)
        pipe = (
            model.controlnet_pipeline(plan.pipeline, [c.net for c in control])
            if control
            else (model.pipeline(plan.pipeline))
        )
        pe, ppe = encode_prompt(pipe, req.positive_prompt, req.prompt_weighting, model.device, plan.max_seq)
        npe = nppe = None
        if plan.negative is not None:
            npe, nppe = encode_prompt(
                pipe, plan.negative, req.prompt_weighting, model.device, plan.max_seq, parameter="negativePrompt"
            )
        image_kwargs, output_type, finish = image_inputs(req, plan)
        if layer_plan is not None and req.seed_image is not None:  # the offset encoder carries the source's alpha
            tvae = self.transparent_vaes.get(layer_plan.vae_path)
            image_kwargs["image"] = layers.encode(pipe, tvae, req.seed_image, req.width, req.height)
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
        hires_plan = hires.plan(self, req)
        pulid_plan = pulid.plan(self, req)  # puLID: the reference photos' ID embeddings
        if pulid_plan is not None:
            warnings += pulid_plan.notes
        face_embeds = face_features.embeddings(pipe, req, plan, (pe, ppe, npe, nppe), model.device)
        control_recipe = tuple(controlnet.recipe_entry(c.ref, c.spec, start=c.start, end=c.end) for c in control)
        if structural is not None:
            control_recipe += (controlnet.recipe_entry(structural.ref, structural.spec, kind=structural.spec.kind),)
        return _Prepared(
            req=req,
            seed=req.seed,
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
            hires=hires_plan,
            layers=layer_plan,
            pulid=pulid_plan,
            face_embeds=face_embeds,
            recipe_extra={
                "hires_fix": hires_plan.recipe() if hires_plan is not None else None,
                "layer_diffuse": layer_plan.recipe() if layer_plan is not None else None,
                "pulid": pulid_plan.recipe if pulid_plan is not None else None,
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
        hp = first.hires
        width, height = hp.first if hp is not None else (req.width, req.height)  # hiresFix: half size first
        kwargs = dict(
            height=height,
            width=width,
            num_inference_steps=plan.steps,
            max_sequence_length=plan.max_seq,
            generator=[torch.Generator("cpu").manual_seed(p.seed + i) for p, i in items],
            output_type="latent" if (hp is not None and hp.upscaler is None) or first.layers else first.output_type,
            callback_on_step_end=self._callback(idx, req, t0, on_progress, cancel, preview),
            **first.image_kwargs,
        )
        cond = self._conditioning(items, plan)
        kwargs.update(cond)
        if plan.strength is not None:
            kwargs["strength"] = plan.strength
        if first.control:
            kwargs.update(controlnet.pipeline_kwargs(first.control, single=len(first.control) == 1))
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
        accel = request_cache(model.applied.profile, req.accelerator)  # turbo: TeaCache by default (resolved)
        if accel.db_cache:  # cache-dit's DBCache (features/dbcache.py); TeaCache is ours (stepcache.py)
            run_steps = plan.steps if plan.strength is None else max(1, int(plan.steps * plan.strength))
            cache = CacheDiT(pipe, resolve_accel(accel), run_steps)
        else:
            cache = StepCache(pipe.transformer, accel, plan.steps, pipe.scheduler.order)
        # puLID's injection wraps outside the step cache, so it sees (and can answer) every transformer call.
        identity = (pulid.Injection(pipe.transformer, order=pipe.scheduler.order, **first.pulid.injection_args)
                    if first.pulid is not None else contextlib.nullcontext())  # fmt: skip
        with torch.inference_mode(), cache if accel.enabled else contextlib.nullcontext(), identity:
            out = pipe(**kwargs).images
        if hp is not None:  # hiresFix's second pass, on the final size
            callback = self._callback(idx, req, t0, on_progress, cancel, False)
            out = hires.refine(model, [(p.seed + i) for p, i in items], req, hp, first.plan, out, cond, callback)
        if first.layers is not None:  # RGBA: the transparent VAE's decoder on the latents
            out = layers.decode(pipe, self.transparent_vaes.get(first.layers.vae_path), out, height, width)
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
            alpha = raw[..., 3] if raw.shape[-1] == 4 else None  # layerDiffuse
            pixels = prep.finish(raw[..., :3])  # (H, W, 3) float32
            picture = to_pil(pixels)
            if alpha is not None:
                picture.putalpha(Image.fromarray((alpha * 255).round().astype("uint8"), "L"))
            image = GeneratedImage(
                index=i,
                seed=prep.seed + i,
                pixels=pixels,
                alpha=alpha,
                image=picture,
                recipe=recipe,
                seconds=per_image,
                warnings=prep.warnings,
            )
            if prep.req.face_fix is not None:
                callback = self._callback((i,), prep.req, t0, on_progress, cancel, False)
                image = face_features.enhance(model, prep, image, self.detector(), callback)
            done.append((prep, image))
        checked = self._checked([im for _, im in done], [p.req for p, _ in done])
        return [(prep, im) for (prep, _), im in zip(done, checked, strict=True)]

    @staticmethod
    def _conditioning(items: list[tuple[_Prepared, int]], plan: Plan) -> dict:
        """The prompt embeddings and guidance of a pass: one request's, repeated by the pipeline, or one row per
        image of several requests."""
        first = items[0][0]
        if all(p is first for p, _ in items):
            pe, ppe, npe, nppe = first.embeds
            cond = {"num_images_per_prompt": len(items)}
        else:
            pe, ppe, npe, nppe = (
                None if first.embeds[k] is None else torch.cat([p.embeds[k] for p, _ in items]) for k in range(4)
            )
            cond = {"num_images_per_prompt": 1}
        cond.update(prompt_embeds=pe, pooled_prompt_embeds=ppe)
        if plan.guidance is not None:
            cond["guidance_scale"] = plan.guidance
        if plan.negative is not None:
            cond.update(negative_prompt_embeds=npe, negative_pooled_prompt_embeds=nppe, true_cfg_scale=plan.true_cfg)
        return cond

    def detector(self) -> face_features.Detector:
        """The face detector of settings.faces, loaded on first use."""
        with self._detector_lock:
            if self._detector is None:
                self._detector = face_features.load_detector(self.face_detector, self.models.catalog,
                                                             self.models.cache_dir)  # fmt: skip
            return self._detector

    @property
    def safety_available(self) -> bool:
        """Whether requests may ask for the safety check (a checker is configured)."""
        return self.safety is not None and self.safety.available

    def _check_safety(self, req: GenerationRequest) -> None:
        if req.safety is not None and not self.safety_available:
            raise UnsupportedError("this server has no safety checker configured (settings safety.checker)",
                                   parameter="safety")  # fmt: skip

    def _checked(self, images: list[GeneratedImage], reqs: list[GenerationRequest]) -> list[GeneratedImage]:
        """The pass's images after the safety check of the requests that asked for it: each flagged one
        censored as its action says, every checked one with its verdict in the result and the recipe."""
        asked = [k for k, r in enumerate(reqs) if r.safety is not None]
        if not asked:
            return images
        out = list(images)
        by_req: dict[int, list[int]] = {}  # one classifier call per request (each may have its own threshold)
        for k in asked:
            by_req.setdefault(id(reqs[k]), []).append(k)
        for ks in by_req.values():
            check = reqs[ks[0]].safety
            verdicts = self.safety.check([images[k].image for k in ks], action=check.action, threshold=check.threshold)
            for k, verdict in zip(ks, verdicts, strict=True):
                im = images[k]
                picture = censor(im.image, verdict.action) if verdict.flagged else im.image
                censored = picture is not im.image
                pixels = np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0 if censored else im.pixels
                alpha = im.alpha if picture.mode == "RGBA" else None  # a blurred RGBA keeps its (blurred) alpha
                if alpha is not None and censored:
                    alpha = np.asarray(picture.getchannel("A"), dtype=np.float32) / 255.0
                out[k] = replace(im, image=picture, pixels=pixels, alpha=alpha, verdict=verdict,
                                 recipe=replace(im.recipe, safety=verdict.recipe()))  # fmt: skip
        return out

    def _resolve_loras(self, req: GenerationRequest) -> list[tuple]:
        """(spec, file sha256, weight) for each requested LoRA (its kind was checked with the request)."""
        out = []
        for ref in req.loras:
            spec = self.models.catalog.get(ref.model, parameter="lora.model")
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
    def _recipe(model: LoadedModel, req: GenerationRequest, seed: int, plan: Plan) -> Recipe:
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


@dataclass
class _Prepared:
    """One request made ready to denoise on a model (Engine._prepare)."""

    req: GenerationRequest
    seed: int  # the request's base seed; image i uses seed + i
    plan: Plan
    pipe: object  # the diffusers pipeline it runs on
    embeds: tuple  # (T5 sequence, CLIP pooled, negative sequence or None, negative pooled or None)
    image_kwargs: dict
    output_type: str
    finish: Callable[[np.ndarray], np.ndarray]
    ip_kwargs: dict
    control: list
    structural: controlnet.Structural | None
    warnings: tuple[str, ...]
    hires: hires.HiresPlan | None
    face_embeds: tuple | None  # the face pass's (sequence, pooled, negative sequence, negative pooled)
    layers: layers.LayerPlan | None  # layerDiffuse, resolved
    pulid: pulid.PulidPlan | None  # puLID: the identity to inject
    recipe_extra: dict  # recipe fields that come from preparation (loras, controlnets, prompts...)
    slot: int = 0  # position in a generate_batch call


def _out_of_memory(message: str) -> OutOfMemory:
    """The request's OutOfMemory error, after giving the failed pass's cached blocks back to the device."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return OutOfMemory(message)
