"""Prompt weighting: parser properties (hypothesis), the reference examples, and the encoding semantics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daguerre import recipe
from daguerre.errors import RequestError
from daguerre.prompts.weighting import Blend, Conjunction, Fragment, Weighted, parse_compel, parse_sd
from daguerre.request import GenerationRequest

WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)


@given(st.text(max_size=80))
@settings(max_examples=400, deadline=None)
def test_parsers_never_crash(text):
    for parse in (parse_compel, parse_sd):
        try:
            parse(text)
        except RequestError as e:
            assert "column" in e.message and e.parameter == "positivePrompt"


@given(
    st.text(
        alphabet=st.characters(blacklist_characters='()[]+-\\:"', blacklist_categories=("Cs",)), min_size=1, max_size=60
    )
)
@settings(max_examples=200, deadline=None)
def test_plain_text_is_one_fragment_of_weight_one(text):
    for parse in (parse_compel, parse_sd):
        assert parse(text) == Weighted((Fragment(text, 1.0),))


@given(st.lists(st.tuples(WORD, st.integers(-3, 3)), min_size=1, max_size=6))
@settings(max_examples=200, deadline=None)
def test_compel_suffixes_keep_the_text_and_set_the_weights(words):
    text = " ".join(w + ("+" * n if n > 0 else "-" * -n) for w, n in words)
    parsed = parse_compel(text)
    assert parsed.text == " ".join(w for w, _ in words), "no user text is dropped or changed"
    weights = {f.text.strip(): f.weight for f in parsed.fragments if f.text.strip()}
    for w, n in words:
        if w in weights and sum(1 for x, _ in words if x == w) == 1:
            assert weights[w] == pytest.approx((1.1 if n > 0 else 0.9) ** abs(n))


@given(st.lists(st.tuples(WORD, st.integers(0, 3), st.sampled_from("([")), min_size=1, max_size=5))
@settings(max_examples=200, deadline=None)
def test_sd_nesting_multiplies(groups):
    text = ", ".join(o * n + w + {"(": ")", "[": "]"}[o] * n for w, n, o in groups)
    parsed = parse_sd(text)
    assert parsed.text == ", ".join(w for w, _, _ in groups)
    for f in parsed.fragments:
        match = [(n, o) for w, n, o in groups if w == f.text]
        if len(match) == 1:
            n, o = match[0]
            assert f.weight == pytest.approx(1.1**n if o == "(" else 1.1**-n)


def test_reference_examples():
    assert parse_compel("small+ dog, pixar style").fragments[0] == Fragment("small", pytest.approx(1.1))
    assert parse_compel("small dog, (pixar style)-").fragments[-1] == Fragment("pixar style", pytest.approx(0.9))
    assert parse_compel("small+++ dog").fragments[0].weight == pytest.approx(1.331)
    nested = parse_compel("(small+ dog)++, pixar style").fragments
    assert [f.weight for f in nested] == pytest.approx([1.1**3, 1.21, 1.0])
    assert parse_compel("small dog, (pixar)1.2 style").fragments[1] == Fragment("pixar", 1.2)
    blend = parse_compel('("small dog", "robot").blend(1, 0.8)')
    assert isinstance(blend, Blend) and blend.weights == (1.0, 0.8) and blend.prompts[1].text == "robot"
    conj = parse_compel('("small dog", "pixar style").and()')
    assert isinstance(conj, Conjunction) and [p.text for p in conj.prompts] == ["small dog", "pixar style"]
    assert parse_sd("(small) dog").fragments[0].weight == pytest.approx(1.1)
    assert parse_sd("small dog, [pixar style]").fragments[-1].weight == pytest.approx(1 / 1.1)
    assert parse_sd("(small:2.5) dog").fragments[0] == Fragment("small", 2.5)
    assert parse_sd("(small dog:1.5), pixar style").fragments[0] == Fragment("small dog", 1.5)
    assert parse_compel(r"a \(b\)").text == "a (b)" and parse_sd(r"a \[b\]").text == "a [b]"


@pytest.mark.parametrize(
    ("parse", "text", "column"),
    [
        (parse_compel, "a (b c", 3),
        (parse_compel, "a b)", 4),
        (parse_sd, "x [y)", 5),
        (parse_sd, "((a)", 1),
        (parse_compel, '("a", "b").blend(1)', 17),
        (parse_compel, '("a", b).and()', 2),
    ],
)
def test_malformed_syntax_points_at_the_column(parse, text, column):
    with pytest.raises(RequestError) as e:
        parse(text)
    assert f"column {column}" in e.value.message


def _gen(engine, folder, prompt, weighting=None, seed=3, **kw):
    req = GenerationRequest(
        model=str(folder),
        positive_prompt=prompt,
        width=128,
        height=128,
        steps=2,
        seed=seed,
        prompt_weighting=weighting,
        **kw,
    )
    return engine.generate(req).images[0].pixels


def test_plain_prompt_with_weighting_on_equals_plain_text(engine, tiny_folder):
    plain = _gen(engine, tiny_folder.model_path, "a red car on a street")
    for syntax in ("compel", "sdEmbeds"):
        assert np.array_equal(_gen(engine, tiny_folder.model_path, "a red car on a street", syntax), plain)


def test_weights_change_the_image_and_both_syntaxes_agree(engine, tiny_folder):
    plain = _gen(engine, tiny_folder.model_path, "a red car on a street")
    compel = _gen(engine, tiny_folder.model_path, "a (red)1.5 car on a street", "compel")
    sd = _gen(engine, tiny_folder.model_path, "a (red:1.5) car on a street", "sdEmbeds")
    # One token at x1.5 on random tiny weights: small, but far above float noise (~1e-6).
    assert np.abs(compel - plain).max() > 1e-4
    assert np.array_equal(compel, sd)


def test_blend_with_zero_weight_is_the_first_prompt(engine, tiny_folder):
    alone = _gen(engine, tiny_folder.model_path, "a red car")
    blend = _gen(engine, tiny_folder.model_path, '("a red car", "a cat on a table").blend(1, 0)', "compel")
    assert np.abs(alone - blend).max() <= 1e-4
    half = _gen(engine, tiny_folder.model_path, '("a red car", "a cat on a table").blend(1, 1)', "compel")
    assert np.abs(alone - half).max() > 1e-3
    conj = _gen(engine, tiny_folder.model_path, '("a red car", "studio light").and()', "compel")
    assert conj.shape == (128, 128, 3) and np.isfinite(conj).all()


def test_weighting_is_recorded_and_reproduces(engine, tiny_folder):
    req = GenerationRequest(
        model=str(tiny_folder.model_path),
        positive_prompt="a (red:1.4) car",
        width=128,
        height=128,
        steps=2,
        seed=9,
        prompt_weighting="sdEmbeds",
    )
    first = engine.generate(req).images[0]
    assert first.recipe.prompt_weighting == "sdEmbeds"
    again = engine.generate(recipe.to_request(first.recipe)).images[0]
    assert again.encode() == first.encode()


def test_weighted_negative_prompt_and_errors(engine, tiny_folder):
    out = _gen(
        engine,
        tiny_folder.model_path,
        "a red car",
        "sdEmbeds",
        negative_prompt="(blurry:1.3), cartoon",
        true_cfg_scale=2.0,
    )
    assert np.isfinite(out).all()
    with pytest.raises(RequestError) as e:
        _gen(engine, tiny_folder.model_path, "a (red car", "compel")
    assert e.value.parameter == "positivePrompt" and "column 3" in e.value.message
    with pytest.raises(RequestError) as e:
        _gen(engine, tiny_folder.model_path, "a car", "sdEmbeds", negative_prompt="[blurry)", true_cfg_scale=2.0)
    assert e.value.parameter == "negativePrompt"
