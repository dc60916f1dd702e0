"""The Runware wire schema on its own (no server): imageInference tasks -> GenerationRequest + DeliverySpec."""

from __future__ import annotations

import uuid

import pytest
from PIL import Image

from daguerre.api.openapi import tasks_schema
from daguerre.api.schema import parse_image_inference
from daguerre.errors import RequestError, UnsupportedError
from daguerre.jobs.characters import Character
from daguerre.request import INTEGERS


def resolver(seen: list | None = None):
    """Stands in for the intake's resolver: every image value becomes a small image (masks: L)."""

    def resolve(value, parameter, is_mask):
        if seen is not None:
            seen.append((value, parameter, is_mask))
        return Image.new("L" if is_mask else "RGB", (64, 64))

    return resolve


def task(**kw) -> dict:
    t = {"taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": "runware:101@1",
         "positivePrompt": "portrait of a woman, soft light", "width": 1024, "height": 768}  # fmt: skip
    t.update(kw)
    return t


def parse(t, **kw):
    return parse_image_inference(t, resolver(), **kw)


def test_every_field_maps_to_the_request_and_the_delivery():
    req, d = parse(task(steps=20, CFGScale=4.5, seed=7, numberResults=3, scheduler="DPM++ 2M Karras",
                        outputFormat="jpeg", outputQuality=80, outputType=["URL", "base64Data"],
                        deliveryMethod="async", includeCost=True, ttl=120, negativePrompt="blur",
                        trueCFGScale=2.0, lora=[{"model": "style", "weight": 0.5}], promptWeighting="sdembeds",
                        enhancePrompt=True))  # fmt: skip
    assert (req.model, req.width, req.height, req.steps, req.guidance, req.seed) == ("runware:101@1", 1024, 768,
                                                                                     20, 4.5, 7)  # fmt: skip
    assert (req.number_results, req.scheduler, req.negative_prompt, req.true_cfg_scale) == (3, "DPM++ 2M Karras",
                                                                                            "blur", 2.0)  # fmt: skip
    assert req.output.format == "JPG" and req.output.quality == 80 and req.prompt_weighting == "sdEmbeds"
    assert req.loras[0].model == "style" and req.loras[0].weight == 0.5 and req.enhance_prompt
    assert d.protocol == "runware" and d.method == "async" and d.output_types == ("URL", "base64Data")
    assert d.include_cost and d.ttl == 120


def test_images_are_resolved_with_their_parameter_and_mask_flag():
    seen = []
    t = task(inputs={"seedImage": "a", "maskImage": "b"}, strength=0.5, controlNet=[{"model": "cn", "guideImage": "c"}],
             ipAdapters=[{"model": "ip", "guideImages": ["d", "e"]}])  # fmt: skip
    req, _ = parse_image_inference(t, resolver(seen))
    assert seen == [("a", "seedImage", False), ("b", "maskImage", True), ("c", "controlNet.guideImage", False),
                    ("d", "ipAdapters.guideImages", False), ("e", "ipAdapters.guideImages", False)]  # fmt: skip
    assert req.mask_image.mode == "L" and len(req.ip_adapters[0].guide_images) == 2
    with pytest.raises(RequestError, match="once"):
        parse(task(inputs={"seedImage": "a"}, seedImage="a"))


@pytest.mark.parametrize(
    ("fields", "parameter"),
    [
        ({"width": 1024.0, "height": 768.0, "steps": 20.0, "seed": 3.0, "numberResults": 2.0, "outputQuality": 90.0},
         None),
        ({"maskMargin": 32.0, "inputs": {"seedImage": "a", "maskImage": "b"}}, None),
        ({"ttl": 120.0}, None),
        ({"outpaint": {"top": 64.0, "left": 32.0, "right": 32.0, "blur": 4.0}, "seedImage": "a"}, None),
        ({"controlNet": [{"model": "cn", "guideImage": "g", "startStep": 1.0, "endStep": 3.0,
                          "lowThresholdCanny": 50.0, "highThresholdCanny": 150.0}]}, None),
        ({"acceleratorOptions": {"dbCache": True, "dbCacheSkipInterval": 5.0, "cacheMaxConsecutiveSteps": 3.0,
                                 "cacheStartStep": 1.0, "cacheEndStep": 4.0}}, None),
        ({"steps": 20.5}, "steps"),
        ({"acceleratorOptions": {"dbCache": True, "dbCacheSkipInterval": 5.5}},
         "acceleratorOptions.dbCacheSkipInterval"),
        ({"controlNet": [{"model": "cn", "guideImage": "g", "startStep": 1.5}]}, "controlNet.startStep"),
    ],
)  # fmt: skip
def test_integers_sent_as_floats_are_accepted_for_every_integer_field(fields, parameter):
    """Integral floats (what JavaScript sends) are integers wherever an integer is asked for; others are refused."""
    if fields.get("outpaint"):
        fields["width"], fields["height"] = 128, 128  # the 64 px seed image + the extensions
    if parameter is None:
        req, _ = parse(task(**fields))
        assert isinstance(req.width, int) and isinstance(req.accelerator.cache_max_consecutive or 0, int)
    else:
        with pytest.raises(RequestError) as e:
            parse(task(**fields))
        assert e.value.parameter == parameter


def test_every_integer_field_is_one_the_schema_converts():
    """The integer list is the one the validator and /openapi.json use: a new integer field is covered by all."""
    props = tasks_schema()["items"]["oneOf"][0]["properties"]
    nested = {"controlNet": props["controlNet"]["items"]["properties"],
              "acceleratorOptions": props["acceleratorOptions"]["properties"],
              "outpaint": props["outpaint"]["properties"],
              "hiresFix": props["hiresFix"]["oneOf"][1]["properties"],
              "ultralytics": props["ultralytics"]["properties"], "puLID": props["puLID"]["properties"]}  # fmt: skip
    for name in INTEGERS:
        head, _, tail = name.partition(".")
        prop = nested[head][tail] if tail else props[name]
        assert prop["type"] == "integer" and "minimum" in prop and "maximum" in prop, name


def test_openapi_shows_a_type_for_every_field():
    props = tasks_schema()["items"]["oneOf"][0]["properties"]
    for name in ("controlNet", "acceleratorOptions"):
        inner = props[name]["items"]["properties"] if name == "controlNet" else props[name]["properties"]
        assert all(v for v in inner.values()), {k for k, v in inner.items() if not v}
    assert props["scheduler"]["enum"] and len(props["scheduler"]["enum"]) == 75
    assert props["acceleratorOptions"]["properties"]["teaCacheDistance"] == {"type": "number", "minimum": 0,
                                                                             "maximum": 1}  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "error", "parameter"),
    [
        ({"colour": "red"}, RequestError, "colour"),
        ({"hiresFix": {"steps": 3}}, RequestError, "hiresFix.model"),
        ({"hiresFix": {"model": "x", "colour": 1}}, RequestError, "hiresFix.colour"),
        ({"ultralytics": {"maskPadding": 30}}, RequestError, "ultralytics.maskPadding"),
        ({"ultralytics": "yes"}, RequestError, "ultralytics"),
        ({"pulid": {"x": 1}}, RequestError, "puLID.x"),
        ({"puLID": {"images": []}}, RequestError, "puLID.images"),
        ({"puLID": {"images": ["a"], "CFGStartStep": 1.5}}, RequestError, "puLID.CFGStartStep"),
        ({"advancedFeatures": {"layerDiffuse": 1}}, RequestError, "advancedFeatures.layerDiffuse"),
        ({"layerDiffuse": True, "outputFormat": "JPEG"}, RequestError, "outputFormat"),
        ({"safety": {"checkContent": "yes"}}, RequestError, "safety.checkContent"),
        ({"safety": {"checkContent": True, "mode": "strict"}}, RequestError, "safety.mode"),
        ({"safety": {"checkContent": True, "blur": 1}}, RequestError, "safety.blur"),
        ({"safety": {"checkContent": True, "threshold": 2}}, RequestError, "safety.threshold"),
        ({"safety": {"checkContent": True, "action": "smudge"}}, RequestError, "safety.action"),
        ({"outputType": "file"}, RequestError, "outputType"),
        ({"deliveryMethod": "later"}, RequestError, "deliveryMethod"),
        ({"ttl": 10}, RequestError, "ttl"),
        ({"webhookURL": "ftp://x"}, RequestError, "webhookURL"),
        ({"outputFormat": "gif"}, RequestError, "outputFormat"),
        ({"model": 7}, RequestError, "model"),
        ({"lora": [{"model": "x", "transformer": "high"}]}, UnsupportedError, "lora.transformer"),
        ({"controlNet": [{"model": "x"}]}, RequestError, "controlNet.guideImage"),
        ({"acceleratorOptions": {"teaCache": True, "dbCache": True}}, RequestError, "acceleratorOptions.dbCache"),
        ({"width": None}, RequestError, "width"),
    ],
)
def test_bad_tasks_name_the_field(fields, error, parameter):
    with pytest.raises(error) as e:
        parse(task(**fields))
    assert e.value.parameter == parameter


def test_a_character_is_applied_at_parse_time_and_locks_the_seed():
    saved = Character("anna", "30-year-old woman, dark wavy hair", 42)
    req, _ = parse(task(character="anna", positivePrompt="coffee shop window"), characters=lambda name: saved)
    assert req.positive_prompt.startswith("30-year-old woman, dark wavy hair") and req.seed == 42
    with pytest.raises(RequestError) as e:
        parse(task(character="anna", seed=7), characters=lambda name: saved)
    assert e.value.parameter == "seed"
