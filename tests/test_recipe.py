"""Every image carries its recipe; the recipe alone regenerates the same bytes on the same device."""

from __future__ import annotations

import pytest

from daguerre import recipe
from daguerre.errors import RequestError
from daguerre.request import GenerationRequest, OutputSpec


@pytest.mark.parametrize("fmt", ["JPG", "PNG", "WEBP"])
def test_recipe_round_trip_through_every_format(engine, tiny_folder, tmp_path, fmt):
    req = GenerationRequest(
        model=str(tiny_folder.model_path),
        positive_prompt="café portrait, 85mm f/1.4 <b>&",
        negative_prompt="cartoon",
        true_cfg_scale=2.0,
        width=128,
        height=128,
        steps=2,
        seed=31,
        output=OutputSpec(fmt, 80),
    )
    im = engine.generate(req).images[0]
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(im.encode())
    back = recipe.read(path)
    assert back == im.recipe
    assert back.positive_prompt == "café portrait, 85mm f/1.4 <b>&" and back.seed == 31
    assert back.output_format == fmt and back.output_quality == 80 and back.true_cfg_scale == 2.0


def test_png_carries_a1111_parameters_text(engine, tiny_folder):
    import io

    from PIL import Image

    req = GenerationRequest(
        model=str(tiny_folder.model_path),
        positive_prompt="a red car",
        width=128,
        height=128,
        steps=2,
        seed=4,
        output=OutputSpec("PNG", 95),
    )
    data = engine.generate(req).images[0].encode()
    text = Image.open(io.BytesIO(data)).text["parameters"]
    assert text.startswith("a red car\n") and "Seed: 4" in text and "Steps: 2" in text


def test_regenerating_from_the_recipe_gives_identical_bytes(engine, tiny_folder):
    req = GenerationRequest(
        model=str(tiny_folder.model_path),
        positive_prompt="a red car",
        width=128,
        height=128,
        steps=3,
        seed=8,
        number_results=3,
    )
    images = engine.generate(req).images
    for im in images:
        r = im.recipe
        again = engine.generate(recipe.to_request(r), max_batch=r.batch_size).images[r.batch_index]
        assert again.encode() == im.encode()


def test_to_request_needs_the_same_input_images(engine, tiny_folder):
    import numpy as np
    from PIL import Image

    src = Image.fromarray((np.random.RandomState(0).rand(128, 128, 3) * 255).astype("uint8"))
    req = GenerationRequest(
        model=str(tiny_folder.model_path),
        positive_prompt="a red car",
        width=128,
        height=128,
        steps=2,
        seed=1,
        seed_image=src,
        strength=0.5,
    )
    r = engine.generate(req).images[0].recipe
    with pytest.raises(RequestError) as e:
        recipe.to_request(r)
    assert e.value.parameter == "seedImage" and "needs the original" in e.value.message
    with pytest.raises(RequestError) as e:
        recipe.to_request(r, seed_image=src.rotate(90))
    assert "pixel hash differs" in e.value.message
    assert recipe.to_request(r, seed_image=src).strength == 0.5


def test_image_without_recipe(tmp_path):
    from PIL import Image

    path = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(path)
    with pytest.raises(RequestError) as e:
        recipe.read(path)
    assert "no Daguerre recipe" in e.value.message
