"""Residency: models stay loaded, LRU eviction under the budget, one load per model, shared parts."""

from __future__ import annotations

import shutil
import threading

import pytest
import torch

from daguerre.engine.models.catalog import Catalog
from daguerre.engine.models.resident import ModelManager, resolve_device, resolve_dtype
from daguerre.errors import ModelLoadError


@pytest.fixture
def three_models(tmp_path, tiny_folder):
    paths = []
    for i in range(3):
        dst = tmp_path / f"m{i}"
        shutil.copytree(tiny_folder.model_path, dst)
        paths.append(str(dst))
    return paths


def _manager(tmp_path, budget_gb=None, **kw):
    return ModelManager(catalog=Catalog([]), memory_budget_gb=budget_gb, cache_dir=tmp_path / "cache", **kw)


def test_loaded_models_stay_resident(tmp_path, tiny_folder):
    mm = _manager(tmp_path)
    with mm.lease(str(tiny_folder.model_path)) as a:
        pass
    with mm.lease(str(tiny_folder.model_path)) as b:
        pass
    assert a is b and len(mm.resident()) == 1


def test_lru_eviction_under_the_budget(tmp_path, three_models):
    mm = _manager(tmp_path)
    with mm.lease(three_models[0]) as m:
        one = mm.resident_bytes()
    mm.budget = int(one * 2.5)  # room for two models
    for p in three_models[1:]:
        with mm.lease(p):
            pass
    ids = [m.spec.path.name for m in mm.resident()]
    assert ids == ["m1", "m2"], "the least recently used model is evicted"
    with mm.lease(three_models[1]):
        pass
    with mm.lease(three_models[0]):
        pass
    assert [m.spec.path.name for m in mm.resident()] == ["m1", "m0"]
    assert m.spec.path.name == "m0"


def test_a_model_in_use_is_never_evicted(tmp_path, three_models):
    mm = _manager(tmp_path)
    with mm.lease(three_models[0]):
        one = mm.resident_bytes()
    mm.budget = int(one * 1.5)
    with mm.lease(three_models[0]) as pinned, mm.lease(three_models[1]):
        assert pinned in mm.resident()
    assert len(mm.resident()) >= 1


def test_one_model_is_never_loaded_twice_at_once(tmp_path, tiny_folder, monkeypatch):
    mm = _manager(tmp_path)
    loads = []
    real = mm._load

    def counting(spec):
        loads.append(spec.id)
        return real(spec)

    monkeypatch.setattr(mm, "_load", counting)
    got = []

    def worker():
        with mm.lease(str(tiny_folder.model_path)) as m:
            got.append(m)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 1 and len({id(m) for m in got}) == 1


def test_single_files_share_the_base_encoders(tmp_path, tiny_single):
    second = tmp_path / "second.safetensors"
    shutil.copy(tiny_single.model_path, second)
    mm = ModelManager(catalog=Catalog([], default_base=str(tiny_single.base_path)), cache_dir=tmp_path / "c")
    with mm.lease(str(tiny_single.model_path)) as a, mm.lease(str(second)) as b:
        assert a.pipe.text_encoder_2 is b.pipe.text_encoder_2 and a.pipe.vae is b.pipe.vae
        assert a.pipe.transformer is not b.pipe.transformer
        assert a.checkpoint_hash == b.checkpoint_hash


def test_checkpoint_hash_is_the_file_sha256_and_cached(tmp_path, tiny_single):
    import hashlib

    mm = ModelManager(catalog=Catalog([], default_base=str(tiny_single.base_path)), cache_dir=tmp_path / "c")
    with mm.lease(str(tiny_single.model_path)) as m:
        assert m.checkpoint_hash == hashlib.sha256(tiny_single.model_path.read_bytes()).hexdigest()
    assert (tmp_path / "c" / "hashes.json").exists()


def test_dtype_override_and_cpu_default(tmp_path, tiny_folder):
    assert resolve_device(None).type == "cpu" or torch.cuda.is_available() or torch.backends.mps.is_available()
    assert resolve_dtype(torch.device("cpu")) == torch.float32
    assert resolve_dtype(torch.device("cuda")) == torch.bfloat16
    mm = _manager(tmp_path, dtype="bfloat16")
    with mm.lease(str(tiny_folder.model_path)) as m:
        assert m.pipe.transformer.dtype == torch.bfloat16 and m.pipe.vae.dtype == torch.bfloat16


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_missing_device_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError) as e:
        _manager(tmp_path, device="cuda")
    assert "cuda" in e.value.message


def test_base_without_encoders_is_a_clear_error(tmp_path, tiny_single):
    empty = tmp_path / "emptybase"
    (empty / "scheduler").mkdir(parents=True)
    shutil.copytree(tiny_single.base_path / "scheduler", empty / "scheduler", dirs_exist_ok=True)
    shutil.copytree(tiny_single.base_path / "transformer", empty / "transformer")
    mm = ModelManager(catalog=Catalog([], default_base=str(empty)), cache_dir=tmp_path / "c")
    with pytest.raises(ModelLoadError) as e, mm.lease(str(tiny_single.model_path)):
        pass
    assert "text_encoder" in e.value.message
