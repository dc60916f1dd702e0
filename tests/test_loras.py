"""LoRA: every format equals the hand-merged weights, hot-swap keeps the base exact, errors are clear."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from daguerre.errors import ModelLoadError, RequestError, UnsupportedError
from daguerre.request import GenerationRequest, LoraRef
from daguerre.testing.loras import build_lora, merged_state_dict

TOL = 1e-4


@pytest.fixture(scope="module")
def lora_files(tiny_folder, tmp_path_factory):
    d = tmp_path_factory.mktemp("loras")
    return {
        fmt: build_lora(d / f"{fmt}.safetensors", tiny_folder.model_path, fmt, seed=i + 1)
        for i, fmt in enumerate(("peft", "kohya", "xlabs"))
    }


def _gen(engine, folder, loras=(), seed=1):
    req = GenerationRequest(
        model=str(folder),
        positive_prompt="portrait, soft light",
        width=128,
        height=128,
        steps=2,
        seed=seed,
        loras=tuple(loras),
    )
    return engine.generate(req).images[0]


def _reference(pipe, state_dict, seed=1):
    original = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    pipe.transformer.load_state_dict(state_dict)
    try:
        return pipe(
            "portrait, soft light",
            width=128,
            height=128,
            num_inference_steps=2,
            output_type="np",
            generator=torch.Generator("cpu").manual_seed(seed),
        ).images[0]
    finally:
        pipe.transformer.load_state_dict(original)


@pytest.mark.parametrize("fmt", ["peft", "kohya", "xlabs"])
def test_each_format_equals_the_merged_weights(engine, tiny_folder, reference_pipes, lora_files, fmt):
    out = _gen(engine, tiny_folder.model_path, [LoraRef(str(lora_files[fmt]), 0.7)])
    want = _reference(
        reference_pipes["txt2img"], merged_state_dict(tiny_folder.model_path, [(lora_files[fmt], fmt, 0.7)])
    )
    assert np.abs(out.pixels - want).max() <= TOL
    base = _gen(engine, tiny_folder.model_path)
    assert np.abs(out.pixels - base.pixels).max() > 1e-3, "the LoRA must change the image"
    assert out.recipe.loras[0]["weight"] == 0.7 and len(out.recipe.loras[0]["sha256"]) == 64


def test_several_at_once_with_their_own_weights(engine, tiny_folder, reference_pipes, lora_files):
    loras = [LoraRef(str(lora_files["kohya"]), 1.5), LoraRef(str(lora_files["peft"]), -0.5)]
    out = _gen(engine, tiny_folder.model_path, loras)
    merged = merged_state_dict(
        tiny_folder.model_path, [(lora_files["kohya"], "kohya", 1.5), (lora_files["peft"], "peft", -0.5)]
    )
    assert np.abs(out.pixels - _reference(reference_pipes["txt2img"], merged)).max() <= TOL


def test_weight_zero_and_unloading_give_the_base_bit_for_bit(engine, tiny_folder, lora_files):
    base = _gen(engine, tiny_folder.model_path, seed=5)
    zero = _gen(engine, tiny_folder.model_path, [LoraRef(str(lora_files["xlabs"]), 0.0)], seed=5)
    after = _gen(engine, tiny_folder.model_path, seed=5)
    assert np.array_equal(zero.pixels, base.pixels) and np.array_equal(after.pixels, base.pixels)


def test_hot_swap_needs_no_reload_and_sets_do_not_leak(engine, tiny_folder, lora_files, monkeypatch):
    a = [LoraRef(str(lora_files["peft"]), 1.0)]
    b = [LoraRef(str(lora_files["kohya"]), 0.8)]
    alone_a = _gen(engine, tiny_folder.model_path, a, seed=7)
    alone_b = _gen(engine, tiny_folder.model_path, b, seed=7)
    loads = []
    monkeypatch.setattr(engine.models, "_load", lambda spec: loads.append(spec) or pytest.fail("base reloaded"))
    for _ in range(2):
        assert np.array_equal(_gen(engine, tiny_folder.model_path, a, seed=7).pixels, alone_a.pixels)
        assert np.array_equal(_gen(engine, tiny_folder.model_path, b, seed=7).pixels, alone_b.pixels)
    assert loads == []


def test_adapter_cache_is_bounded(engine, tiny_folder, tmp_path):
    with engine.models.lease(str(tiny_folder.model_path)) as model:
        model.max_adapters = 2
    try:
        for i in range(4):
            path = build_lora(tmp_path / f"x{i}.safetensors", tiny_folder.model_path, "peft", seed=10 + i)
            _gen(engine, tiny_folder.model_path, [LoraRef(str(path), 1.0)])
        assert len(model.adapters) == 2
        assert set(model.pipe.transformer.peft_config) == set(model.adapters)
    finally:
        model.max_adapters = 8


def test_kohya_text_encoder_layers_apply_to_clip(engine, tiny_folder, reference_pipes, tmp_path):
    from daguerre.testing.loras import merged_clip_state_dict

    path = build_lora(tmp_path / "te.safetensors", tiny_folder.model_path, "kohya", seed=7, text_encoder=True)
    before = _gen(engine, tiny_folder.model_path)
    out = _gen(engine, tiny_folder.model_path, [LoraRef(str(path), 0.6)])
    pipe = reference_pipes["txt2img"]
    clip = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    pipe.text_encoder.load_state_dict(merged_clip_state_dict(tiny_folder.model_path, path, 0.6))
    try:
        want = _reference(pipe, merged_state_dict(tiny_folder.model_path, [(path, "kohya", 0.6)]))
        pipe.text_encoder.load_state_dict(clip)
        transformer_only = _reference(pipe, merged_state_dict(tiny_folder.model_path, [(path, "kohya", 0.6)]))
    finally:
        pipe.text_encoder.load_state_dict(clip)
    assert np.abs(out.pixels - want).max() <= TOL
    assert np.abs(out.pixels - transformer_only).max() > 1e-4  # the CLIP layers really act
    assert np.array_equal(_gen(engine, tiny_folder.model_path).pixels, before.pixels)


def test_lora_errors(engine, tiny_folder, tmp_path):
    bad = tmp_path / "bad.safetensors"
    save_file({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(2, 2)}, bad)  # an SDXL-style LoRA
    te = tmp_path / "te.safetensors"
    save_file(
        {
            "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(2, 32),
            "lora_te2_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight": torch.zeros(2, 2),
        },
        te,
    )
    ckpt = tmp_path / "x.ckpt"
    ckpt.write_bytes(b"pickle")
    cases = [
        (bad, ModelLoadError, "not for FLUX.1"),
        (te, UnsupportedError, "T5"),
        (ckpt, ModelLoadError, "pickle"),
    ]
    for path, error, needle in cases:
        with pytest.raises(error) as e:
            _gen(engine, tiny_folder.model_path, [LoraRef(str(path), 1.0)])
        assert needle in e.value.message
    with pytest.raises(RequestError) as e:
        _gen(engine, tiny_folder.model_path, [LoraRef(str(tiny_folder.model_path), 1.0)])
    assert "not a LoRA" in e.value.message
    with pytest.raises(RequestError) as e:
        _gen(engine, tiny_folder.model_path, [LoraRef("x.safetensors", 4.01)])
    assert e.value.parameter == "lora.weight" and "[-4, 4]" in e.value.message
    with pytest.raises(RequestError) as e:
        _gen(engine, tiny_folder.model_path, [LoraRef("a", 1), LoraRef("a", 2)])
    assert "twice" in e.value.message


def test_lora_as_base_model_is_refused(engine, lora_files):
    with pytest.raises(RequestError) as e:
        _gen(engine, lora_files["peft"])
    assert "is a LoRA" in e.value.message
