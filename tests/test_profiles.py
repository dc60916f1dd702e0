"""Speed profiles: exact compiles (dynamic, warmed up) without changing images; fp8 profiles refuse off-GPU."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from daguerre.engine.profiles import TURBO_CACHE, request_cache
from daguerre.errors import ModelLoadError
from daguerre.request import AccelOptions, GenerationRequest, LoraRef


def _manager(settings_factory, tmp_path, **kw):
    from daguerre.engine.models.catalog import Catalog
    from daguerre.engine.models.resident import ModelManager

    s = settings_factory()
    return ModelManager(catalog=Catalog.from_settings(s), cache_dir=tmp_path / "cache", **kw)


def _req(folder, size=128, **kw):
    return GenerationRequest(model=str(folder), positive_prompt="a red door", width=size, height=size, steps=2,
                             seed=4, **kw)  # fmt: skip


@pytest.mark.parametrize("profile", ["fast", "turbo"])
def test_fp8_profiles_refuse_where_fp8_cannot_run(settings_factory, tiny_folder, tmp_path, profile):
    from daguerre.engine.engine import Engine

    engine = Engine(models=_manager(settings_factory, tmp_path, profile=profile))
    with pytest.raises(ModelLoadError) as e:
        engine.generate(_req(tiny_folder.model_path))
    assert f"profile {profile!r}" in e.value.message and "not a CUDA GPU" in e.value.message
    assert e.value.parameter == "profile"


def test_turbo_caches_requests_that_do_not_say_otherwise():
    own = AccelOptions(db_cache=True, db_cache_threshold=0.1)
    assert request_cache("turbo", AccelOptions()) == TURBO_CACHE
    assert request_cache("turbo", own) == own
    assert request_cache("exact", AccelOptions()) == AccelOptions()


@pytest.mark.skipif(
    not (shutil.which("g++") or shutil.which("c++")), reason="torch.compile on the CPU needs a C++ compiler (g++)"
)
def test_compiled_exact_profile_equals_eager_at_every_size_without_recompiling(
    engine, settings_factory, tiny_folder, tmp_path
):
    """Compiled at load with dynamic shapes and warmed up at two sizes: later sizes reuse the graph,
    images match the eager engine, and LoRA hot-swap still works on the compiled transformer."""
    from torch._dynamo.utils import counters

    from daguerre.engine.engine import Engine
    from daguerre.testing.loras import build_lora

    compiled = Engine(models=_manager(settings_factory, tmp_path, compile_=True))
    with compiled.models.lease(str(tiny_folder.model_path)) as m:
        assert m.applied.compiled and not m.applied.fp8
    graphs = counters["stats"]["unique_graphs"]
    for size in (128, 192, 384):
        a = compiled.generate(_req(tiny_folder.model_path, size)).images[0]
        b = engine.generate(_req(tiny_folder.model_path, size)).images[0]
        assert np.abs(a.pixels - b.pixels).max() <= 1e-4, size
    assert counters["stats"]["unique_graphs"] == graphs  # no recompilation for new sizes
    lora = build_lora(tmp_path / "style.safetensors", tiny_folder.model_path, "peft", seed=3)
    a = compiled.generate(_req(tiny_folder.model_path, loras=(LoraRef(str(lora), 0.8),))).images[0]
    b = engine.generate(_req(tiny_folder.model_path, loras=(LoraRef(str(lora), 0.8),))).images[0]
    assert np.abs(a.pixels - b.pixels).max() <= 1e-4
    base = compiled.generate(_req(tiny_folder.model_path)).images[0]
    assert np.abs(base.pixels - engine.generate(_req(tiny_folder.model_path)).images[0].pixels).max() <= 1e-4
    off = AccelOptions(tea_cache=True, tea_cache_distance=0.0)  # step caching wraps the compiled blocks
    cached = compiled.generate(_req(tiny_folder.model_path, accelerator=off)).images[0]
    assert np.abs(cached.pixels - base.pixels).max() <= 1e-6


def test_serve_preloads_before_ready_and_reports_failures(make_server):
    import httpx

    with make_server(preload=["daguerre:tiny@1", "no-such-model"]) as s:
        for _ in range(100):
            r = httpx.get(s.url.replace("/v1", "/health/ready"))
            if r.status_code == 200:
                break
            assert r.json()["status"] == "starting"
            import time

            time.sleep(0.1)
        body = r.json()
        assert r.status_code == 200 and body["models"][0]["resident"] is True
        assert body["models"][0]["profile"] == "exact" and body["models"][0]["compiled"] is False
        assert body["preload_errors"][0]["model"] == "no-such-model"


def test_attention_backend_choice(settings_factory, tiny_folder, tmp_path):
    import torch
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    from daguerre.engine.engine import Engine
    from daguerre.engine.profiles import attention_backend
    from daguerre.errors import RequestError

    cpu = torch.device("cpu")
    assert attention_backend("auto", cpu) == "native"
    with pytest.raises(ModelLoadError, match="needs a CUDA GPU"):
        attention_backend("_native_cudnn", cpu)
    with pytest.raises(RequestError, match="downloads its kernels"):
        attention_backend("flash_hub", cpu)
    with pytest.raises(RequestError, match="one of .*_native_cudnn") as e:
        _manager(settings_factory, tmp_path, attention="fastest")  # refused when the manager starts
    assert e.value.parameter == "attention"

    # A forced backend reaches every attention processor of the transformer, gives the same image,
    # and leaves diffusers' process-wide default alone (other pipelines keep theirs).
    before = _AttentionBackendRegistry._active_backend
    plain = Engine(models=_manager(settings_factory, tmp_path))
    math = Engine(models=_manager(settings_factory, tmp_path, attention="_native_math"))
    a = plain.generate(_req(tiny_folder.model_path)).images[0].pixels
    b = math.generate(_req(tiny_folder.model_path)).images[0].pixels
    np.testing.assert_allclose(b, a, atol=1e-5)
    with math.models.lease(str(tiny_folder.model_path)) as m:
        assert m.applied.attention == "_native_math"
        procs = [mod.processor for mod in m.pipe.transformer.modules() if hasattr(mod, "processor")]
        assert procs and all(p._attention_backend.value == "_native_math" for p in procs)
    assert _AttentionBackendRegistry._active_backend == before
