"""GGUF transformers: found, loaded quantized (the same loader a real city96 FLUX.1 file goes through),
and close to the full-precision model they were made from."""

from __future__ import annotations

import numpy as np
import pytest

from daguerre.errors import ModelLoadError
from daguerre.request import GenerationRequest, LoraRef


@pytest.fixture(scope="module")
def gguf_models(tmp_path_factory):
    from daguerre.testing.tiny import build

    root = tmp_path_factory.mktemp("gguf")
    full = build(root / "full", layout="single-file", seed=0)
    return {
        "full": full,
        "Q8_0": build(root / "q8", layout="single-file", seed=0, gguf="Q8_0"),
        "Q4_0": build(root / "q4", layout="single-file", seed=0, gguf="Q4_0"),
    }


@pytest.fixture(scope="module")
def gguf_engine(settings_factory, gguf_models):
    from daguerre.services import build_engine

    return build_engine(settings_factory(base_model=str(gguf_models["full"].base_path)))


def _gen(engine, path, **kw):
    req = GenerationRequest(model=str(path), positive_prompt="a red barn at dusk", width=128, height=128, steps=2,
                            seed=5, **kw)  # fmt: skip
    return engine.generate(req).images[0]


def _psnr(a, b) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def test_inspect_reads_the_gguf_header(gguf_models):
    from daguerre.engine.models.checkpoints import inspect

    info = inspect(gguf_models["Q8_0"].model_path)
    assert (info.layout, info.kind, info.dtype) == ("bfl", "dev", "Q8_0")


@pytest.mark.parametrize("quant,min_psnr,max_ratio", [("Q8_0", 40, 0.3), ("Q4_0", 20, 0.2)])
def test_quantized_transformer_stays_quantized_and_close(gguf_engine, gguf_models, quant, min_psnr, max_ratio):
    from daguerre.engine.models.resident import module_bytes

    full = _gen(gguf_engine, gguf_models["full"].model_path)
    quantized = _gen(gguf_engine, gguf_models[quant].model_path)
    assert _psnr(quantized.pixels, full.pixels) > min_psnr
    with gguf_engine.models.lease(str(gguf_models[quant].model_path)) as q:
        layers = [m for m in q.pipe.transformer.modules() if type(m).__name__ == "GGUFLinear"]
        assert layers and all(m.weight.quant_type.name == quant for m in layers)
        q_bytes = module_bytes(q.pipe.transformer)
    with gguf_engine.models.lease(str(gguf_models["full"].model_path)) as f:
        assert q_bytes < max_ratio * module_bytes(f.pipe.transformer)  # fp32 reference: 4 bytes a weight


def test_lora_on_a_gguf_model(gguf_engine, gguf_models, tiny_folder, tmp_path):
    from daguerre.testing.loras import build_lora

    lora = build_lora(tmp_path / "style.safetensors", tiny_folder.model_path, "peft", seed=3)  # same architecture
    base = _gen(gguf_engine, gguf_models["Q8_0"].model_path)
    styled = _gen(gguf_engine, gguf_models["Q8_0"].model_path, loras=(LoraRef(str(lora), 1.0),))
    on_full = _gen(gguf_engine, gguf_models["full"].model_path, loras=(LoraRef(str(lora), 1.0),))
    assert np.abs(styled.pixels - base.pixels).max() > 1e-3  # the LoRA acts
    assert _psnr(styled.pixels, on_full.pixels) > 40  # and acts as it does on the full-precision model
    again = _gen(gguf_engine, gguf_models["Q8_0"].model_path)
    np.testing.assert_array_equal(again.pixels, base.pixels)  # and unloads bit for bit


def test_discovered_in_comfyui_folders(gguf_models, tmp_path):
    import shutil

    from daguerre.engine.models.catalog import discover_model_dirs

    unet = tmp_path / "ComfyUI" / "models" / "unet"
    unet.mkdir(parents=True)
    shutil.copy(gguf_models["Q8_0"].model_path, unet / "flux1-dev-Q8_0.gguf")
    (unet / "notes.gguf").write_bytes(b"not a gguf file")
    specs = discover_model_dirs([tmp_path / "ComfyUI"], base=None)
    assert [(s.path.name, s.kind, s.format) for s in specs] == [("flux1-dev-Q8_0.gguf", "dev", "single-file")]


def test_a_broken_gguf_file_is_a_clear_error(tmp_path):
    from daguerre.engine.models.checkpoints import inspect

    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 20)
    with pytest.raises(ModelLoadError, match="broken.gguf"):
        inspect(bad)
