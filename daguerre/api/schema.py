"""The Runware `imageInference` task -> GenerationRequest + DeliverySpec (the wire boundary).

Every field of the Runware API's imageInference parameter list is recognised here.
Fields whose feature is not built yet are refused with `unsupportedParameter` naming them,
never accepted and ignored; fields the reference does not list are refused as unknown.
Ranges are checked by `request.validate`, so the CLI and the API share one set of rules; integers sent
as floats (1024.0) are accepted for every integer field (request.INTEGERS, and ttl), nested ones included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image

from daguerre.errors import RequestError, UnsupportedError
from daguerre.jobs.spec import DELIVERY_METHODS, MIN_TTL, OUTPUT_TYPES, DeliverySpec
from daguerre.request import (
    INTEGERS,
    MAX_PULID_IMAGES,
    OUTPUT_FORMATS,
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
    SafetyCheck,
    validate,
)

# Reference fields whose feature is not built yet: refused while present and not empty.
NOT_YET: tuple[str, ...] = ()
# Spellings the SDKs send for the same field.
ALIASES = {"pulid": "puLID", "PuLID": "puLID", "checkNSFW": "checkNsfw"}
KNOWN = {
    "taskType", "taskUUID", "model", "positivePrompt", "negativePrompt", "width", "height", "steps", "scheduler",
    "CFGScale", "trueCFGScale", "seed", "numberResults", "strength", "inputs", "seedImage", "maskImage",
    "outputType", "outputFormat", "outputQuality", "deliveryMethod", "includeCost", "ttl", "safety",
    "advancedFeatures", "checkNsfw", "webhookURL", "uploadEndpoint", "lora", "outpaint", "maskMargin",
    "promptWeighting", "controlNet", "ipAdapters", "enhancePrompt", "character", "acceleratorOptions", "hiresFix",
    "ultralytics", "layerDiffuse", "puLID", "includeProgress", *NOT_YET,
}  # fmt: skip
IMAGE_FIELDS = ("seedImage", "maskImage")

ImageResolver = Callable[[Any, str, bool], Image.Image]  # (value, parameter, is_mask) -> decoded image


def _present(value: Any) -> bool:
    return value not in (None, [], {}, False)


WIRE_INTEGERS = INTEGERS | {"ttl"}


def _whole(value: Any, name: str) -> Any:
    """An integer field's value: integral floats (1024.0, as JavaScript sends numbers) become ints; anything
    else is passed on for validation to refuse."""
    if name in WIRE_INTEGERS and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _int(task: dict, name: str) -> Any:
    return _whole(task.get(name), name)


CharacterLookup = Callable[[str], Any]  # name -> jobs.characters.Character (raises RequestError if unknown)


def parse_image_inference(
    task: dict, resolve_image: ImageResolver, characters: CharacterLookup | None = None
) -> tuple[GenerationRequest, DeliverySpec]:
    """Translate one imageInference task; raises RequestError/UnsupportedError naming the field.

    characters looks up the `character` a task names (this API key's saved characters)."""
    task = {ALIASES.get(k, k): v for k, v in task.items()}
    # 1. Unknown and not-yet-supported fields.
    unknown = sorted(set(task) - KNOWN)
    if unknown:
        raise RequestError(f"unknown field {unknown[0]!r} in imageInference", parameter=unknown[0])
    advanced = task.get("advancedFeatures") or {}
    if not isinstance(advanced, dict):
        raise RequestError("advancedFeatures must be an object", parameter="advancedFeatures")
    for name in NOT_YET:
        if _present(task.get(name)):
            raise UnsupportedError(f"{name} is not supported yet by this server", parameter=name)
    extra_adv = sorted(set(advanced) - {"layerDiffuse"})
    if extra_adv:
        raise RequestError(f"unknown field advancedFeatures.{extra_adv[0]}", parameter="advancedFeatures")
    safety = _parse_safety(task.get("safety"), task.get("checkNsfw"))

    # 2. Inputs: `inputs.seedImage` (reference) or top-level `seedImage` (older SDKs).
    inputs = task.get("inputs") or {}
    if not isinstance(inputs, dict):
        raise RequestError("inputs must be an object with seedImage / maskImage", parameter="inputs")
    extra_inputs = sorted(set(inputs) - set(IMAGE_FIELDS))
    if extra_inputs:
        raise RequestError(f"unknown field inputs.{extra_inputs[0]}", parameter=f"inputs.{extra_inputs[0]}")
    images = {}
    for name in IMAGE_FIELDS:
        if name in inputs and name in task:
            raise RequestError(f"give {name} once: in inputs or at the top level", parameter=name)
        value = inputs.get(name, task.get(name))
        if value is not None:
            if not isinstance(value, str) or not value:
                raise RequestError(f"{name} must be an imageUUID, URL, data URI or base64 string", parameter=name)
            images[name] = resolve_image(value, name, name == "maskImage")

    # 3. Delivery.
    method = task.get("deliveryMethod", "sync")
    if method not in DELIVERY_METHODS:
        raise RequestError(f"deliveryMethod must be 'sync' or 'async', got {method!r}", parameter="deliveryMethod")
    out_types = task.get("outputType", "URL")
    out_types = tuple(out_types) if isinstance(out_types, list) else (out_types,)
    if not out_types or any(t not in OUTPUT_TYPES for t in out_types):
        raise RequestError(
            f"outputType must be one of {', '.join(OUTPUT_TYPES)}, got {task.get('outputType')!r}",
            parameter="outputType",
        )
    ttl = _int(task, "ttl")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < MIN_TTL):
        raise RequestError(f"ttl must be an integer >= {MIN_TTL} seconds, got {ttl!r}", parameter="ttl")
    urls = {}
    for name in ("webhookURL", "uploadEndpoint"):
        value = task.get(name)
        if value is not None and (not isinstance(value, str) or not value.startswith(("http://", "https://"))):
            raise RequestError(f"{name} must be an http(s) URL, got {value!r}", parameter=name)
        urls[name] = value
    include_cost = task.get("includeCost", False)
    if not isinstance(include_cost, bool):
        raise RequestError(f"includeCost must be true or false, got {include_cost!r}", parameter="includeCost")
    include_progress = task.get("includeProgress", False)  # a Daguerre extension (the studio's live previews)
    if not isinstance(include_progress, bool):
        raise RequestError(f"includeProgress must be true or false, got {include_progress!r}",
                           parameter="includeProgress")  # fmt: skip
    # An image with transparency defaults to PNG (JPG, the API's default, has no alpha); an explicit JPG is refused.
    layered = task.get("layerDiffuse") is True or (
        isinstance(task.get("advancedFeatures"), dict) and task["advancedFeatures"].get("layerDiffuse") is True
    )
    fmt = task.get("outputFormat", "PNG" if layered else "JPG")
    fmt = fmt.upper() if isinstance(fmt, str) else fmt
    fmt = "JPG" if fmt == "JPEG" else fmt
    if fmt not in OUTPUT_FORMATS:
        raise RequestError(
            f"outputFormat must be one of {', '.join(OUTPUT_FORMATS)}, got {task.get('outputFormat')!r}",
            parameter="outputFormat",
        )

    # 4. Required core fields, then the shared range checks.
    for name in ("model", "positivePrompt", "width", "height"):
        if task.get(name) is None:
            raise RequestError(f"{name} is required for imageInference", parameter=name)
    model = task["model"]
    if not isinstance(model, str):
        raise RequestError(f"model must be a string (AIR id or name), got {model!r}", parameter="model")
    scheduler = task.get("scheduler", "Default")
    if not isinstance(scheduler, str):
        raise RequestError(f"scheduler must be a string, got {scheduler!r}", parameter="scheduler")
    prompt, seed = task["positivePrompt"], _int(task, "seed")
    character = task.get("character")
    if character is not None:
        if not isinstance(character, str) or not character:
            raise RequestError(f"character must be a saved character's name, got {character!r}", parameter="character")
        if characters is None:
            raise RequestError("characters are not available here", parameter="character")
        if not isinstance(prompt, str):
            raise RequestError("positivePrompt must be text", parameter="positivePrompt")
        prompt, seed = characters(character).resolve(prompt, seed)
    enhance = task.get("enhancePrompt", False)
    req = GenerationRequest(
        accelerator=_parse_accel(task.get("acceleratorOptions")),
        enhance_prompt=enhance,
        character=character,
        safety=safety,
        hires_fix=_parse_hires(task.get("hiresFix")),
        face_fix=_parse_face(task.get("ultralytics")),
        layer_diffuse=_parse_layers(task.get("layerDiffuse"), advanced.get("layerDiffuse")),
        pulid=_parse_pulid(task.get("puLID"), resolve_image),
        loras=_parse_loras(task.get("lora")),
        outpaint=_parse_outpaint(task.get("outpaint")),
        mask_margin=_int(task, "maskMargin"),
        prompt_weighting=_weighting(task.get("promptWeighting")),
        controlnets=_parse_controlnets(task.get("controlNet"), resolve_image),
        ip_adapters=_parse_ip_adapters(task.get("ipAdapters"), resolve_image),
        model=model,
        positive_prompt=prompt,
        negative_prompt=task.get("negativePrompt"),
        width=_int(task, "width"),
        height=_int(task, "height"),
        steps=_int(task, "steps"),
        guidance=task.get("CFGScale"),
        true_cfg_scale=task.get("trueCFGScale"),
        seed=seed,
        number_results=_int(task, "numberResults") if task.get("numberResults") is not None else 1,
        scheduler=scheduler,
        seed_image=images.get("seedImage"),
        mask_image=images.get("maskImage"),
        strength=task.get("strength"),
        output=OutputSpec(format=fmt, quality=95 if task.get("outputQuality") is None else _int(task, "outputQuality")),
    )
    validate(req)
    return req, DeliverySpec(
        protocol="runware",
        method=method,
        output_types=out_types,
        include_cost=include_cost,
        progress=include_progress,
        ttl=ttl,
        webhook_url=urls["webhookURL"],
        upload_endpoint=urls["uploadEndpoint"],
    )


def _parse_loras(value: Any) -> tuple[LoraRef, ...]:
    """`lora`: a list of {model, weight (default 1), transformer ("both" only: FLUX has one stage)}."""
    if value is None or value == []:
        return ()
    if not isinstance(value, list):
        raise RequestError("lora must be a list of {model, weight} objects", parameter="lora")
    out = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict) or "model" not in entry:
            raise RequestError(f"lora[{i}] must be an object with a model", parameter="lora")
        extra = sorted(set(entry) - {"model", "weight", "transformer"})
        if extra:
            raise RequestError(f"unknown field lora[{i}].{extra[0]}", parameter=f"lora.{extra[0]}")
        if entry.get("transformer", "both") != "both":
            raise UnsupportedError(
                f"lora[{i}].transformer {entry['transformer']!r}: FLUX.1 has one transformer "
                "stage, so only 'both' applies",
                parameter="lora.transformer",
            )
        if not isinstance(entry["model"], str):
            raise RequestError(f"lora[{i}].model must be a string, got {entry['model']!r}", parameter="lora.model")
        out.append(LoraRef(model=entry["model"], weight=entry.get("weight", 1.0)))
    return tuple(out)


CONTROL_FIELDS = {"model": "model", "guideImage": None, "weight": "weight", "startStep": "start_step",
                  "endStep": "end_step", "startStepPercentage": "start_percent", "endStepPercentage": "end_percent",
                  "controlMode": "mode", "preprocessor": "preprocessor", "lowThresholdCanny": "canny_low",
                  "highThresholdCanny": "canny_high", "controlType": "control_type",
                  "includeHandsAndFaceOpenPose": None}  # fmt: skip


def _parse_controlnets(value: Any, resolve_image: ImageResolver) -> tuple[ControlRef, ...]:
    """`controlNet`: a list of {model, guideImage, weight, startStep/endStep or percentages, controlMode,
    preprocessor ("canny"), lowThresholdCanny, highThresholdCanny}; null values are ignored (SDKs send them)."""
    if value is None or value == []:
        return ()
    if not isinstance(value, list):
        raise RequestError("controlNet must be a list of {model, guideImage, ...} objects", parameter="controlNet")
    out = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise RequestError(f"controlNet[{i}] must be an object", parameter="controlNet")
        entry = {k: v for k, v in entry.items() if v is not None}
        extra = sorted(set(entry) - set(CONTROL_FIELDS))
        if extra:
            raise RequestError(f"unknown field controlNet[{i}].{extra[0]}", parameter=f"controlNet.{extra[0]}")
        for name in ("model", "guideImage"):
            if not isinstance(entry.get(name), str) or not entry[name]:
                raise RequestError(f"controlNet[{i}].{name} is required (a string)", parameter=f"controlNet.{name}")
        kwargs = {CONTROL_FIELDS[k]: _whole(v, f"controlNet.{k}") for k, v in entry.items() if CONTROL_FIELDS[k]}
        guide = resolve_image(entry["guideImage"], "controlNet.guideImage", False)
        out.append(ControlRef(guide_image=guide, **kwargs))
    return tuple(out)


ACCEL_FIELDS = {"teaCache": "tea_cache", "teaCacheDistance": "tea_cache_distance", "dbCache": "db_cache",
                "dbCacheThreshold": "db_cache_threshold", "dbCacheSkipInterval": "db_cache_skip_interval",
                "cacheStartStep": "cache_start_step", "cacheEndStep": "cache_end_step",
                "cacheStartStepPercentage": "cache_start_percent", "cacheEndStepPercentage": "cache_end_percent",
                "cacheMaxConsecutiveSteps": "cache_max_consecutive"}  # fmt: skip


def _parse_accel(value: Any) -> AccelOptions:
    """`acceleratorOptions`: teaCache/teaCacheDistance or dbCache/dbCacheThreshold/dbCacheSkipInterval, with the
    cache window (cacheStartStep/EndStep or percentages) and cacheMaxConsecutiveSteps; nulls are ignored."""
    if value is None:
        return AccelOptions()
    if not isinstance(value, dict):
        raise RequestError("acceleratorOptions must be an object", parameter="acceleratorOptions")
    value = {k: v for k, v in value.items() if v is not None}
    extra = sorted(set(value) - set(ACCEL_FIELDS))
    if extra:
        raise RequestError(f"unknown field acceleratorOptions.{extra[0]}", parameter=f"acceleratorOptions.{extra[0]}")
    return AccelOptions(**{ACCEL_FIELDS[k]: _whole(v, f"acceleratorOptions.{k}") for k, v in value.items()})


def _parse_ip_adapters(value: Any, resolve_image: ImageResolver) -> tuple[IpAdapterRef, ...]:
    """`ipAdapters`: a list of {model, guideImages: [image, ...] (or one guideImage), weight}."""
    if value is None or value == []:
        return ()
    if not isinstance(value, list):
        raise RequestError("ipAdapters must be a list of {model, guideImages, weight} objects", parameter="ipAdapters")
    out = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise RequestError(f"ipAdapters[{i}] must be an object", parameter="ipAdapters")
        entry = {k: v for k, v in entry.items() if v is not None}
        extra = sorted(set(entry) - {"model", "guideImages", "guideImage", "weight"})
        if extra:
            raise RequestError(f"unknown field ipAdapters[{i}].{extra[0]}", parameter=f"ipAdapters.{extra[0]}")
        if not isinstance(entry.get("model"), str) or not entry["model"]:
            raise RequestError(f"ipAdapters[{i}].model is required (a string)", parameter="ipAdapters.model")
        images = entry.get("guideImages", [entry["guideImage"]] if "guideImage" in entry else [])
        if not isinstance(images, list) or not images or not all(isinstance(x, str) and x for x in images):
            raise RequestError(
                f"ipAdapters[{i}].guideImages must be a non-empty list of images", parameter="ipAdapters.guideImages"
            )
        guides = tuple(resolve_image(x, "ipAdapters.guideImages", False) for x in images)
        out.append(IpAdapterRef(model=entry["model"], guide_images=guides, weight=entry.get("weight", 1.0)))
    return tuple(out)


def _weighting(value: Any) -> str | None:
    """promptWeighting: "compel" or "sdEmbeds" (the SDKs also send "sdembeds")."""
    if value is None:
        return None
    names = {"compel": "compel", "sdembeds": "sdEmbeds"}
    if not isinstance(value, str) or value.lower() not in names:
        raise RequestError(
            f"promptWeighting must be 'compel' or 'sdEmbeds', got {value!r}", parameter="promptWeighting"
        )
    return names[value.lower()]


def _parse_outpaint(value: Any) -> Outpaint | None:
    """`outpaint`: {top, bottom, left, right} pixels (missing sides are 0), optional blur (seam feather px)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RequestError("outpaint must be an object {top, bottom, left, right}", parameter="outpaint")
    extra = sorted(set(value) - {"top", "bottom", "left", "right", "blur"})
    if extra:
        raise RequestError(f"unknown field outpaint.{extra[0]}", parameter=f"outpaint.{extra[0]}")
    sides = {k: _whole(v, f"outpaint.{k}") for k, v in value.items() if v is not None}
    return Outpaint(**sides)


def _parse_safety(value, check_nsfw) -> SafetyCheck | None:
    """`safety: {checkContent, mode, action, threshold}` (action and threshold are Daguerre extensions; mode
    "none" turns the check off, any other mode runs the same check) and the older `checkNsfw: true`."""
    if check_nsfw is not None and not isinstance(check_nsfw, bool):
        raise RequestError(f"checkNsfw must be true or false, got {check_nsfw!r}", parameter="checkNsfw")
    if value is None:
        return SafetyCheck() if check_nsfw else None
    if not isinstance(value, dict):
        raise RequestError('safety must be an object like {"checkContent": true}', parameter="safety")
    unknown = sorted(set(value) - {"checkContent", "mode", "action", "threshold"})
    if unknown:
        raise RequestError(f"unknown field safety.{unknown[0]}", parameter=f"safety.{unknown[0]}")
    check = value.get("checkContent", False)
    if not isinstance(check, bool):
        raise RequestError(f"safety.checkContent must be true or false, got {check!r}", parameter="safety.checkContent")
    mode = value.get("mode")
    if mode is not None and mode not in ("none", "fast", "full"):
        raise RequestError(f"safety.mode must be none, fast or full, got {mode!r}", parameter="safety.mode")
    if not (check or check_nsfw) or mode == "none":
        return None
    return SafetyCheck(action=value.get("action"), threshold=value.get("threshold"))


PULID_FIELDS = {"images": "images", "idWeight": "id_weight", "CFGStartStep": "cfg_start_step",
                "CFGStartStepPercentage": "cfg_start_percentage", "trueCFGScale": "true_cfg_scale"}  # fmt: skip
# The reference spells the step fields both ways (CFGstartStep in its property list, CFGStartStep in its example).
PULID_ALIASES = {"CFGstartStep": "CFGStartStep", "CFGstartStepPercentage": "CFGStartStepPercentage"}


def _parse_pulid(value: Any, resolve_image: ImageResolver) -> PuLID | None:
    """`puLID`: {images: [image, ...], idWeight, CFGStartStep | CFGStartStepPercentage, trueCFGScale}."""
    if value is None or value == {}:
        return None
    if not isinstance(value, dict):
        raise RequestError("puLID must be an object {images, idWeight, CFGStartStep, trueCFGScale}", parameter="puLID")
    value = {PULID_ALIASES.get(k, k): v for k, v in value.items() if v is not None}
    extra = sorted(set(value) - set(PULID_FIELDS))
    if extra:
        raise RequestError(f"unknown field puLID.{extra[0]}", parameter=f"puLID.{extra[0]}")
    images = value.get("images")
    if not isinstance(images, list) or not images or not all(isinstance(x, str) and x for x in images):
        raise RequestError("puLID.images must be a non-empty list of images (UUID, URL, data URI or base64)",
                           parameter="puLID.images")  # fmt: skip
    if len(images) > MAX_PULID_IMAGES:
        raise RequestError(f"puLID.images holds at most {MAX_PULID_IMAGES} reference photos, got {len(images)}",
                           parameter="puLID.images")  # fmt: skip
    fields = {PULID_FIELDS[k]: _whole(v, f"puLID.{k}") for k, v in value.items() if k != "images"}
    return PuLID(images=tuple(resolve_image(x, "puLID.images", False) for x in images), **fields)


def _parse_layers(top, advanced) -> LayerDiffuse | None:
    """layerDiffuse (top level, as the SDKs send it) or advancedFeatures.layerDiffuse (the reference's example)."""
    for name, value in (("layerDiffuse", top), ("advancedFeatures.layerDiffuse", advanced)):
        if value is not None and not isinstance(value, bool):
            raise RequestError(f"{name} must be true or false, got {value!r}", parameter=name)
    return LayerDiffuse() if top or advanced else None


def _parse_hires(value) -> HiresFix | None:
    """`hiresFix: true` (the server's default upscaler) or `{model, steps, strength}` (model required there, as
    the reference says; "latent" names the latent upscale)."""
    if value is None or value is False:
        return None
    if value is True:
        return HiresFix()
    if not isinstance(value, dict):
        raise RequestError("hiresFix must be true or an object {model, steps, strength}", parameter="hiresFix")
    unknown = sorted(set(value) - {"model", "steps", "strength"})
    if unknown:
        raise RequestError(f"unknown field hiresFix.{unknown[0]}", parameter=f"hiresFix.{unknown[0]}")
    if value.get("model") is None:
        raise RequestError(
            "hiresFix.model is required in the object form (an upscaler id, e.g. runware:504@1, or 'latent'); "
            "hiresFix: true uses the server's default",
            parameter="hiresFix.model",
        )
    steps = _whole(value.get("steps"), "hiresFix.steps")
    return HiresFix(model=value["model"], steps=steps, strength=value.get("strength"))


FACE_FIELDS = {"CFGScale": "cfg_scale", "confidence": "confidence", "inpaintSize": "inpaint_size",
               "maskBlur": "mask_blur", "maskPadding": "mask_padding", "positivePrompt": "positive_prompt",
               "negativePrompt": "negative_prompt", "steps": "steps", "strength": "strength"}  # fmt: skip


def _parse_face(value) -> FaceFix | None:
    """`ultralytics: {CFGScale, confidence, inpaintSize, maskBlur, maskPadding, positivePrompt, negativePrompt,
    steps, strength}` (an empty object: the reference's defaults)."""
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise RequestError("ultralytics must be an object (its fields: " + ", ".join(FACE_FIELDS) + ")",
                           parameter="ultralytics")  # fmt: skip
    unknown = sorted(set(value) - set(FACE_FIELDS))
    if unknown:
        raise RequestError(f"unknown field ultralytics.{unknown[0]}", parameter=f"ultralytics.{unknown[0]}")
    integers = ("inpaintSize", "maskBlur", "maskPadding", "steps")
    return FaceFix(**{attr: (_whole(value.get(name), f"ultralytics.{name}") if name in integers else value.get(name))
                      for name, attr in FACE_FIELDS.items()})  # fmt: skip
