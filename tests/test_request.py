"""Every validation bound: at the edge passes, past it fails with an error naming the parameter and range."""

from __future__ import annotations

from dataclasses import replace

import pytest
from PIL import Image

from daguerre.errors import RequestError
from daguerre.request import GenerationRequest, OutputSpec, validate

BASE = GenerationRequest(model="m", positive_prompt="a cat", width=1024, height=1024)
IMG = Image.new("RGB", (64, 64))

# (field, request-field, good edge values, bad values just past the edges, range text in the message)
NUMERIC = [
    ("width", "width", [128, 2048], [64, 2112], "[128, 2048]"),
    ("height", "height", [128, 2048], [64, 2112], "[128, 2048]"),
    ("steps", "steps", [1, 50], [0, 51], "[1, 50]"),
    ("CFGScale", "guidance", [0, 20, 0.01, 19.99], [-0.01, 20.01], "[0, 20]"),
    ("trueCFGScale", "true_cfg_scale", [0, 20], [-0.01, 20.01], "[0, 20]"),
    ("seed", "seed", [0, 2**63 - 1], [-1, 2**63], "[0, 9.22337e+18]"),
    ("numberResults", "number_results", [1, 20], [0, 21], "[1, 20]"),
]


@pytest.mark.parametrize(("name", "field", "good", "bad", "rng"), NUMERIC, ids=[n[0] for n in NUMERIC])
def test_numeric_bounds(name, field, good, bad, rng):
    for v in good:
        validate(replace(BASE, **{field: v}))
    for v in bad:
        with pytest.raises(RequestError) as e:
            validate(replace(BASE, **{field: v}))
        assert e.value.parameter == name
        assert name in e.value.message and rng in e.value.message and repr(v) in e.value.message


@pytest.mark.parametrize("field", ["width", "height"])
def test_size_must_be_a_multiple_of_64(field):
    with pytest.raises(RequestError) as e:
        validate(replace(BASE, **{field: 1000}))
    assert e.value.parameter == field and "multiple of 64" in e.value.message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("steps", 2.5),
        ("width", "1024"),
        ("seed", True),
        ("numberResults", 1.0),
        ("CFGScale", "high"),
        ("CFGScale", float("nan")),
    ],
)
def test_wrong_types_are_rejected(field, value):
    attr = {"numberResults": "number_results", "CFGScale": "guidance"}.get(field, field)
    with pytest.raises(RequestError) as e:
        validate(replace(BASE, **{attr: value}))
    assert e.value.parameter == field


def test_strength_bounds_with_seed_image():
    for v in (0.01, 1.0, 0.5):
        validate(replace(BASE, seed_image=IMG, strength=v))
    for v in (-0.01, 1.01, 0.0):
        with pytest.raises(RequestError) as e:
            validate(replace(BASE, seed_image=IMG, strength=v))
        assert e.value.parameter == "strength"


def test_strength_without_seed_image_is_an_error():
    with pytest.raises(RequestError) as e:
        validate(replace(BASE, strength=0.5))
    assert e.value.parameter == "strength" and "seedImage" in e.value.message


def test_mask_without_seed_image_is_an_error():
    with pytest.raises(RequestError) as e:
        validate(replace(BASE, mask_image=Image.new("L", (64, 64))))
    assert e.value.parameter == "maskImage"


@pytest.mark.parametrize(
    ("field", "attr"), [("positivePrompt", "positive_prompt"), ("negativePrompt", "negative_prompt")]
)
def test_prompt_length_bounds(field, attr):
    for ok in ("ab", "x" * 3000):
        validate(replace(BASE, **{attr: ok}))
    for bad in ("a", "x" * 3001, "   "):
        with pytest.raises(RequestError) as e:
            validate(replace(BASE, **{attr: bad}))
        assert e.value.parameter == field
    with pytest.raises(RequestError):
        validate(replace(BASE, **{attr: 42}))


def test_output_quality_bounds_and_formats():
    for q in (20, 99):
        validate(replace(BASE, output=OutputSpec("JPG", q)))
    for q in (19, 100):
        with pytest.raises(RequestError) as e:
            validate(replace(BASE, output=OutputSpec("JPG", q)))
        assert e.value.parameter == "outputQuality" and "[20, 99]" in e.value.message
    for f in ("PNG", "WEBP", "JPG"):
        validate(replace(BASE, output=OutputSpec(f, 95)))
    with pytest.raises(RequestError) as e:
        validate(replace(BASE, output=OutputSpec("GIF", 95)))
    assert e.value.parameter == "outputFormat" and "JPG, PNG, WEBP" in e.value.message


def test_model_is_required():
    with pytest.raises(RequestError) as e:
        validate(replace(BASE, model=" "))
    assert e.value.parameter == "model"


def test_scheduler_names():
    from daguerre.request import SCHEDULER_NAMES as REFERENCE_NAMES

    assert len(REFERENCE_NAMES) == 75
    for name in REFERENCE_NAMES:
        validate(replace(BASE, scheduler=name))
    with pytest.raises(RequestError) as e:
        validate(replace(BASE, scheduler="Eulr"))
    assert e.value.parameter == "scheduler" and "Euler" in e.value.message
    with pytest.raises(RequestError) as e:
        validate(replace(BASE, scheduler="DPM++ 2M Karas"))
    assert "closest valid names: DPM++ 2M Karras" in e.value.message


@pytest.mark.parametrize("bad", ["a cat\x00", "a\x1b[31m red cat", "cat \ud800"])
@pytest.mark.parametrize("field", ["positive_prompt", "negative_prompt"])
def test_control_characters_in_prompts_are_refused(field, bad):
    req = GenerationRequest(model="m", **{"positive_prompt": "a cat", field: bad})
    with pytest.raises(RequestError) as e:
        validate(req)
    assert e.value.parameter == ("positivePrompt" if field == "positive_prompt" else "negativePrompt")
    assert "control character" in e.value.message


def test_tabs_and_newlines_are_fine_in_prompts():
    validate(GenerationRequest(model="m", positive_prompt="a cat,\n\tsoft light\r\n"))
