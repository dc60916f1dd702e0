"""The JSON Schema of POST /v1 for /openapi.json, built from the tables `validate` uses (request.RANGES,
INTEGERS, SCHEDULERS...) and the schema's field lists, so every field shows its type and range."""

from __future__ import annotations

from daguerre.api.schema import NOT_YET
from daguerre.jobs.spec import DELIVERY_METHODS, MIN_TTL, OUTPUT_TYPES
from daguerre.request import INTEGERS, OUTPUT_FORMATS, SAFETY_ACTIONS


def tasks_schema() -> dict:
    """JSON Schema of the POST /v1 body."""
    from daguerre.request import (
        CONTROL_MODES,
        CONTROL_TYPES,
        MAX_CONTROLNETS,
        MAX_IP_ADAPTERS,
        MAX_LORAS,
        MAX_PULID_IMAGES,
        PREPROCESSORS,
        PROMPT_CHARS,
        PROMPT_WEIGHTINGS,
        RANGES,
        SCHEDULER_NAMES,
        SIZE_STEP,
    )

    def num(name: str) -> dict:
        lo, hi = RANGES[name]
        return {"type": "integer" if name in INTEGERS else "number", "minimum": lo, "maximum": hi}

    def nested(prefix: str, fields_: dict) -> dict:
        """Properties of a nested object: the ranged ones from RANGES, the rest as given."""
        return {k: num(f"{prefix}.{k}") if f"{prefix}.{k}" in RANGES else v for k, v in fields_.items()}

    image = {"type": "string", "description": "imageUUID, http(s) URL, data URI or base64"}
    prompt = {"type": "string", "minLength": PROMPT_CHARS[0], "maxLength": PROMPT_CHARS[1]}
    model = {"type": "string", "description": "a catalog id (AIR), short name or alias"}
    control = nested(
        "controlNet",
        {
            "model": model,
            "guideImage": image,
            "weight": {},
            "startStep": {},
            "endStep": {},
            "startStepPercentage": {},
            "endStepPercentage": {},
            "controlMode": {"enum": list(CONTROL_MODES)},
            "preprocessor": {"enum": list(PREPROCESSORS)},
            "lowThresholdCanny": {},
            "highThresholdCanny": {},
            "controlType": {"enum": list(CONTROL_TYPES), "description": "Union ControlNets only"},
            "includeHandsAndFaceOpenPose": {"type": "boolean"},
        },
    )
    accel = nested(
        "acceleratorOptions",
        {
            "teaCache": {"type": "boolean"},
            "teaCacheDistance": {},
            "dbCache": {"type": "boolean"},
            "dbCacheThreshold": {},
            "dbCacheSkipInterval": {},
            "cacheStartStep": {},
            "cacheEndStep": {},
            "cacheStartStepPercentage": {},
            "cacheEndStepPercentage": {},
            "cacheMaxConsecutiveSteps": {},
        },
    )
    inference = {
        "type": "object",
        "required": ["taskType", "taskUUID", "model", "positivePrompt", "width", "height"],
        "properties": {
            "taskType": {"const": "imageInference"},
            "taskUUID": {"type": "string", "format": "uuid"},
            "model": model,
            "positivePrompt": prompt,
            "negativePrompt": prompt,
            "width": {**num("width"), "multipleOf": SIZE_STEP},
            "height": {**num("height"), "multipleOf": SIZE_STEP},
            **{name: num(name) for name in ("steps", "CFGScale", "trueCFGScale", "seed", "numberResults",
                                            "strength", "outputQuality", "maskMargin")},
            "scheduler": {"type": "string", "enum": list(SCHEDULER_NAMES)},
            "inputs": {"type": "object", "properties": {"seedImage": image, "maskImage": image}},
            "seedImage": image,
            "maskImage": image,
            "outputType": {
                "oneOf": [{"enum": list(OUTPUT_TYPES)}, {"type": "array", "items": {"enum": list(OUTPUT_TYPES)}}]
            },
            "outputFormat": {"enum": list(OUTPUT_FORMATS)},
            "deliveryMethod": {"enum": list(DELIVERY_METHODS)},
            "ttl": {"type": "integer", "minimum": MIN_TTL},
            "includeCost": {"type": "boolean"},
            "webhookURL": {"type": "string", "format": "uri"},
            "uploadEndpoint": {"type": "string", "format": "uri"},
            "safety": {"type": "object", "properties": {
                "checkContent": {"type": "boolean"}, "mode": {"enum": ["none", "fast", "full"]},
                "action": {"enum": list(SAFETY_ACTIONS)}, "threshold": {"type": "number", "minimum": 0, "maximum": 1}}},
            "checkNsfw": {"type": "boolean"},
            "promptWeighting": {"enum": list(PROMPT_WEIGHTINGS)},
            "outpaint": {"type": "object", "properties": nested("outpaint", dict.fromkeys(
                ("top", "bottom", "left", "right", "blur"), {}))},
            "lora": {"type": "array", "maxItems": MAX_LORAS, "items": {
                "type": "object", "required": ["model"],
                "properties": {"model": model, "weight": num("lora.weight"), "transformer": {"const": "both"}}}},
            "controlNet": {"type": "array", "maxItems": MAX_CONTROLNETS, "items": {
                "type": "object", "required": ["model", "guideImage"], "properties": control}},
            "ipAdapters": {"type": "array", "maxItems": MAX_IP_ADAPTERS, "items": {
                "type": "object", "required": ["model"],
                "properties": {"model": model, "guideImages": {"type": "array", "items": image}, "guideImage": image,
                               "weight": num("ipAdapters.weight")}}},
            "enhancePrompt": {"type": "boolean"},
            "character": {"type": "string", "description": "a saved character's name (this API key's)"},
            "acceleratorOptions": {"type": "object", "properties": accel},
            "hiresFix": {"oneOf": [{"type": "boolean"}, {"type": "object", "required": ["model"], "properties": {
                "model": {"type": "string", "description": "an upscaler id (runware:504@1...) or 'latent'"},
                **nested("hiresFix", {"steps": {}, "strength": {}})}}]},
            "ultralytics": {"type": "object", "properties": {
                **nested("ultralytics", dict.fromkeys(("CFGScale", "confidence", "inpaintSize", "maskBlur",
                                                       "maskPadding", "steps", "strength"), {})),
                "positivePrompt": prompt, "negativePrompt": prompt}},
            "layerDiffuse": {"type": "boolean", "description": "RGBA output (PNG by default, or WEBP; JPG refused)"},
            "advancedFeatures": {"type": "object", "properties": {"layerDiffuse": {"type": "boolean"}}},
            "puLID": {"type": "object", "required": ["images"], "properties": {
                "images": {"type": "array", "minItems": 1, "maxItems": MAX_PULID_IMAGES, "items": image},
                **nested("puLID", dict.fromkeys(("idWeight", "CFGStartStep", "CFGStartStepPercentage",
                                                 "trueCFGScale"), {}))}},
            **{name: {"description": "not supported yet: refused with unsupportedParameter"} for name in NOT_YET},
        },
    }  # fmt: skip
    simple = {
        "authentication": {"apiKey": {"type": "string"}, "connectionSessionUUID": {"type": "string"}},
        "ping": {"ping": {"type": "boolean"}},
        "getResponse": {"taskUUID": {"type": "string", "format": "uuid"}},
        "imageUpload": {"taskUUID": {"type": "string", "format": "uuid"}, "image": image},
        "promptEnhance": {"taskUUID": {"type": "string", "format": "uuid"}, "prompt": {"type": "string"},
                          "promptMaxLength": {"type": "integer", "minimum": 12, "maximum": 400},
                          "promptVersions": {"type": "integer", "minimum": 1, "maximum": 5},
                          "seed": {"type": "integer", "minimum": 0}, "includeCost": {"type": "boolean"}},
    }  # fmt: skip
    others = [
        {"type": "object", "required": ["taskType"], "properties": {"taskType": {"const": t}, **props}}
        for t, props in simple.items()
    ]
    return {"type": "array", "minItems": 1, "items": {"oneOf": [inference, *others]}}
