"""Prompt studio: the enhancer never drops or contradicts user text, lint never crashes, presets are sane."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daguerre.errors import RequestError
from daguerre.prompts.studio import (
    CATEGORIES,
    DEFAULT_NEGATIVE,
    build_prompt,
    covered,
    enhance_prompt,
    enhance_variants,
    library,
    lint,
    non_photo_styles,
    segments,
)

WORDS = st.sampled_from(
    ["portrait", "woman", "man", "at night", "golden hour", "85mm", "lighthouse", "red", "oil painting", "anime",
     "photorealistic", "beautiful", "Kodak Portra", "close-up", "street", "coffee", "neon", "black and white",
     "sneaker", "forest", "(word)1.2", "a", "studio", "macro", "aerial view"]
)  # fmt: skip
PROMPTS = st.one_of(
    st.lists(WORDS, min_size=1, max_size=8).map(", ".join),
    st.text(min_size=1, max_size=200).filter(lambda s: s.strip()),
)


@settings(max_examples=300, deadline=None)
@given(PROMPTS, st.integers(0, 2**32))
def test_enhancer_keeps_user_text_first_and_only_fills_open_categories(prompt, seed):
    e = enhance_prompt(prompt, seed)
    assert e.text.startswith(prompt.strip())  # nothing the user wrote is dropped or reordered
    assert enhance_prompt(prompt, seed) == e  # deterministic for a seed
    user = covered(prompt)
    lib = library()
    for preset_id in e.added:
        assert lib.get(preset_id).category not in user  # never a second lighting, lens, film...
    if non_photo_styles(prompt):
        assert e.text == prompt.strip() and not e.added  # a painting stays a painting
    if e.added and re.search(r"(?<![a-z0-9])(red|neon)(?![a-z])", prompt.lower()):  # a colour word (not "0red")
        assert "black and white" not in e.text[len(prompt.strip()) :]  # no monochrome over stated colour
    added_text = e.text[len(prompt.strip()) :]
    assert len([s for s in segments(added_text)]) == len(e.added) <= len(CATEGORIES)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=400), st.booleans(), st.one_of(st.none(), st.text(max_size=50)))
def test_lint_never_crashes_on_any_string(prompt, true_cfg, negative):
    out = lint(prompt, negative_prompt=negative, true_cfg=true_cfg, default_negative=DEFAULT_NEGATIVE)
    assert all(w.code and w.message for w in out)


def test_lint_findings():
    codes = lambda p, **kw: {w.code for w in lint(p, **kw)}  # noqa: E731
    assert "style_conflict" in codes("photorealistic portrait, oil painting")
    assert "style_conflict" not in codes("oil painting of a harbour")
    many = "a man, cinematic, moody, neon light, 35mm lens, Portra film, low angle shot, dramatic, golden hour"
    assert "overloaded" in codes(many)
    assert "overloaded" not in codes(enhance_prompt("portrait of a woman", 3).text)
    assert "vague_quality" in codes("a beautiful stunning woman")
    assert "vague_quality" not in codes("a beautiful woman, soft window light, 85mm f/1.4")
    assert "no_negative_prompt" in codes("a cat", true_cfg=True)
    assert "no_negative_prompt" not in codes("a cat", true_cfg=True, negative_prompt="blur")


def test_token_windows_are_measured_with_the_models_tokenizers(tiny_folder):
    from transformers import AutoTokenizer

    clip = AutoTokenizer.from_pretrained(tiny_folder.model_path / "tokenizer")
    t5 = AutoTokenizer.from_pretrained(tiny_folder.model_path / "tokenizer_2")
    long = ", ".join(f"detail number {i}" for i in range(60))
    found = {w.code: w.message for w in lint(long, clip_tokenizer=clip, t5_tokenizer=t5, max_sequence_length=64)}
    assert "clip_truncated" in found and "t5_truncated" in found
    t5_ids = t5(long).input_ids
    first_cut = t5.decode(t5_ids[63:-1], skip_special_tokens=True).strip()[:20]
    assert f"the last {len(t5_ids) - 64} are cut, from {first_cut!r}"[:-1] in found["t5_truncated"]  # says what is cut
    assert not lint("a cat", clip_tokenizer=clip, t5_tokenizer=t5, max_sequence_length=64)


def test_builder_follows_the_formula_and_names_bad_presets():
    p = build_prompt(
        "portrait of a man", details=("freckles",), lighting="rembrandt", lens="85mm-f1.4", film="portra-400"
    )
    parts = segments(p)
    assert parts[0] == "portrait of a man" and parts[-1] == "photorealistic RAW photo"
    assert parts[1].startswith("natural freckles") and parts[2].startswith("Rembrandt") and "85mm" in parts[3]
    assert build_prompt("a cat", lighting="lit by a candle", quality=False) == "a cat, lit by a candle"
    with pytest.raises(RequestError) as e:
        build_prompt("a cat", lighting="golden-hour-front")
    assert e.value.parameter == "lighting" and "golden-hour-backlight" in e.value.message


def test_presets_catalogue_is_complete_data():
    lib = library()
    assert set(lib.presets) == set(CATEGORIES)
    for items in lib.presets.values():
        for p in items:
            assert p.text and p.effect and p.best_use and "," not in p.text
    ids = [p.id for items in lib.presets.values() for p in items]
    assert len(ids) == len(set(ids))
    texts = " ".join(p.text for p in lib.presets["lighting"] + lib.presets["lens"] + lib.presets["film"])
    for needle in (
        "Rembrandt",
        "golden hour",
        "85mm f/1.4",
        "35mm f/1.4",
        "135mm f/1.8",
        "Portra 400",
        "Velvia",
        "Ektar",
    ):
        assert needle in texts


def test_variants_are_distinct_and_capped_by_length():
    vs = enhance_variants("portrait of a woman", 0, 3)
    assert len({v.text for v in vs}) == 3
    short = enhance_prompt("portrait of a woman", 0, max_length=60)
    assert len(short.text) <= 60 and short.notes
    assert json.dumps([v.text for v in vs])


def test_default_negative_prompt_with_true_cfg(engine, tiny_folder):
    from daguerre.request import GenerationRequest

    base = dict(model=str(tiny_folder.model_path), positive_prompt="a cat", width=128, height=128, steps=2, seed=1)
    auto = engine.generate(GenerationRequest(**base, true_cfg_scale=3.0)).images[0]
    explicit = engine.generate(GenerationRequest(**base, true_cfg_scale=3.0, negative_prompt=DEFAULT_NEGATIVE)).images[
        0
    ]
    assert (auto.pixels == explicit.pixels).all()
    assert auto.recipe.negative_prompt == DEFAULT_NEGATIVE
    assert any(w.startswith("no_negative_prompt") for w in auto.warnings)


def test_enhance_prompt_flag_in_the_engine_is_seeded_and_recorded(engine, tiny_folder):
    from daguerre.request import GenerationRequest

    req = GenerationRequest(model=str(tiny_folder.model_path), positive_prompt="portrait of a woman", width=128,
                            height=128, steps=2, seed=9, enhance_prompt=True)  # fmt: skip
    img = engine.generate(req).images[0]
    assert img.recipe.positive_prompt == enhance_prompt("portrait of a woman", 9).text
    assert img.recipe.original_prompt == "portrait of a woman"


def test_an_enhanced_prompt_stays_inside_clips_window_and_says_so_once(engine, tiny_folder, capfd):
    from daguerre.prompts.studio import CLIP_WINDOW
    from daguerre.request import GenerationRequest

    with engine.models.lease(str(tiny_folder.model_path)) as model:
        tok = model.pipe.tokenizer

    def tokens(text: str) -> int:
        return len(tok(text, truncation=False, verbose=False).input_ids)

    prompt = "a woman on a bench"
    while tokens(prompt + ", in a garden with a dog") < CLIP_WINDOW - 8:
        prompt += ", in a garden with a dog"
    req = GenerationRequest(model=str(tiny_folder.model_path), positive_prompt=prompt, width=128, height=128,
                            steps=1, seed=3, enhance_prompt=True)  # fmt: skip
    img = engine.generate(req).images[0]
    assert img.recipe.positive_prompt.startswith(prompt) and tokens(img.recipe.positive_prompt) <= CLIP_WINDOW
    said = [w for w in img.warnings if "CLIP" in w or "truncat" in w]
    assert len(said) == 1 and "CLIP" in said[0], img.warnings
    assert "truncated" not in capfd.readouterr().err  # no library message on top of ours
