"""acceleratorOptions: TeaCache and DB Cache skip transformer passes, exactly off at threshold 0, within limits."""

from __future__ import annotations

import numpy as np
import pytest

from daguerre.errors import RequestError
from daguerre.request import AccelOptions, GenerationRequest, validate


class _Counter:
    """Counts full transformer passes: the last single block runs only when a step is computed."""

    def __init__(self, engine, folder):
        with engine.models.lease(str(folder)) as m:
            self.block = m.pipe.transformer.single_transformer_blocks[-1]
        self.n = 0

    def __enter__(self):
        self.h = self.block.register_forward_hook(lambda *a: setattr(self, "n", self.n + 1))
        return self

    def __exit__(self, *exc):
        self.h.remove()


def _gen(engine, folder, accel=AccelOptions(), steps=12, **kw):
    req = GenerationRequest(model=str(folder), positive_prompt="a harbour at dawn", width=128, height=128,
                            steps=steps, seed=21, accelerator=accel, **kw)  # fmt: skip
    return engine.generate(req).images[0]


@pytest.mark.parametrize(
    "accel",
    [AccelOptions(tea_cache=True, tea_cache_distance=0.0), AccelOptions(db_cache=True, db_cache_threshold=0.0)],
)
def test_threshold_zero_is_the_uncached_output_exactly(engine, tiny_folder, accel):
    plain = _gen(engine, tiny_folder.model_path)
    with _Counter(engine, tiny_folder.model_path) as c:
        cached = _gen(engine, tiny_folder.model_path, accel)
    assert np.array_equal(cached.pixels, plain.pixels) and c.n == 12
    assert cached.recipe.accelerator["skipped"] == 0 and cached.recipe.accelerator["computed"] == 12


@pytest.mark.parametrize(
    "accel",
    [AccelOptions(tea_cache=True, tea_cache_distance=1.0), AccelOptions(db_cache=True, db_cache_threshold=1.0)],
)
def test_a_high_threshold_skips_passes_within_the_limits(engine, tiny_folder, accel):
    plain = _gen(engine, tiny_folder.model_path)
    with _Counter(engine, tiny_folder.model_path) as c:
        fast = _gen(engine, tiny_folder.model_path, accel)
    rec = fast.recipe.accelerator
    assert c.n == rec["computed"] < 12 and rec["skipped"] == 12 - rec["computed"]
    assert np.isfinite(fast.pixels).all() and np.abs(fast.pixels - plain.pixels).mean() < 0.1  # close, not equal
    # default cacheMaxConsecutiveSteps 3: never more than 3 skipped passes in a row -> >= 3 of 12 computed
    assert rec["computed"] >= 3


def test_window_and_max_consecutive_are_respected(engine, tiny_folder):
    from daguerre.engine import stepcache as accel_mod
    from daguerre.engine.features import dbcache

    seen = []
    original, original_db = accel_mod.StepCache.__exit__, dbcache.CacheDiT.__exit__

    def spy(self, *exc):
        out = original(self, *exc)
        seen.append(list(self.stats.skipped_steps))
        return out

    def spy_db(self, *exc):
        out = original_db(self, *exc)
        seen.append(list(self.stats.skipped_steps))
        return out

    accel_mod.StepCache.__exit__ = spy
    dbcache.CacheDiT.__exit__ = spy_db
    try:
        opts = AccelOptions(tea_cache=True, tea_cache_distance=1.0, cache_start_step=4, cache_end_step=9,
                            cache_max_consecutive=1)  # fmt: skip
        _gen(engine, tiny_folder.model_path, opts)
        pct = AccelOptions(db_cache=True, db_cache_threshold=1.0, cache_start_percent=50, cache_max_consecutive=2)
        _gen(engine, tiny_folder.model_path, pct)
    finally:
        accel_mod.StepCache.__exit__ = original
        dbcache.CacheDiT.__exit__ = original_db
    window, half = seen
    assert window and all(4 <= s < 9 for s in window)
    assert all(b - a > 1 for a, b in zip(window, window[1:], strict=False))  # never two skipped in a row
    assert half and all(s >= 6 for s in half)
    runs = np.split(np.array(half), np.where(np.diff(half) != 1)[0] + 1)
    assert max(len(r) for r in runs) <= 2


@pytest.mark.parametrize(
    ("accel", "parameter"),
    [
        (AccelOptions(tea_cache=True, db_cache=True), "acceleratorOptions.dbCache"),
        (AccelOptions(tea_cache_distance=0.3), "acceleratorOptions.teaCacheDistance"),
        (AccelOptions(db_cache=True, tea_cache_distance=0.3), "acceleratorOptions.teaCacheDistance"),
        (AccelOptions(tea_cache=True, tea_cache_distance=1.5), "acceleratorOptions.teaCacheDistance"),
        (AccelOptions(tea_cache=True, cache_max_consecutive=6), "acceleratorOptions.cacheMaxConsecutiveSteps"),
        (AccelOptions(tea_cache=True, cache_start_step=5, cache_end_step=5), "acceleratorOptions.cacheStartStep"),
        (AccelOptions(tea_cache=True, cache_start_step=1, cache_start_percent=10), "acceleratorOptions.cacheStartStep"),
        (AccelOptions(tea_cache=True, cache_end_step=40), "acceleratorOptions.cacheEndStep"),
        (AccelOptions(cache_end_step=4), "acceleratorOptions"),
        (AccelOptions(db_cache=True, db_cache_skip_interval=0), "acceleratorOptions.dbCacheSkipInterval"),
    ],
)
def test_invalid_options_name_the_fields(accel, parameter):
    with pytest.raises(RequestError) as e:
        validate(GenerationRequest(model="m", positive_prompt="ab", width=128, height=128, steps=20, accelerator=accel))
    assert e.value.parameter == parameter


def test_accelerator_options_through_the_api(make_server):
    import httpx

    from tests.conftest import inference_task

    with make_server() as s:
        t = inference_task(steps=8, acceleratorOptions={"teaCache": True, "teaCacheDistance": 0.6,
                                                        "cacheStartStepPercentage": 25})  # fmt: skip
        r = httpx.post(s.url, json=[t], timeout=120)
        assert r.status_code == 200, r.text
        bad = httpx.post(s.url, json=[inference_task(acceleratorOptions={"teaCache": True, "dbCache": True})])
        assert bad.status_code == 400 and bad.json()["errors"][0]["parameter"] == "acceleratorOptions.dbCache"


def test_db_cache_is_cache_dit_and_skips_the_blocks_after_the_probe(engine, tiny_folder):
    """cache-dit's DBCache (F8B0, at most the double blocks there are: 1 here): every step runs the first block,
    a cached step runs nothing else. Counted on the blocks themselves, and judged by PSNR against no cache."""
    with engine.models.lease(str(tiny_folder.model_path)) as m:
        t = m.pipe.transformer
        blocks = [*t.transformer_blocks, *t.single_transformer_blocks]
    runs = [0] * len(blocks)
    hooks = [b.register_forward_pre_hook(lambda *a, k=k: runs.__setitem__(k, runs[k] + 1))
             for k, b in enumerate(blocks)]  # fmt: skip
    try:
        plain = _gen(engine, tiny_folder.model_path)
        runs[:] = [0] * len(blocks)
        fast = _gen(engine, tiny_folder.model_path, AccelOptions(db_cache=True, db_cache_threshold=1.0))
    finally:
        for h in hooks:
            h.remove()
    rec = fast.recipe.accelerator
    assert rec["skipped"] > 0 and runs[0] == 12 and all(r == rec["computed"] for r in runs[1:])
    mse = float(np.mean((fast.pixels - plain.pixels) ** 2))
    assert 10 * np.log10(1 / mse) > 15  # close to the uncached image (random weights are the worst case)
    assert rec["db_cache_threshold"] == 1.0 and rec["db_cache_skip_interval"] == 5
    # cache-dit patches the transformer and reorders its submodules; afterwards it is the model as before
    # (diffusers' set_ip_adapter_scale walks the processors in submodule order: double blocks first).
    assert "forward" not in t.__dict__ and list(t._modules)[4:6] == ["transformer_blocks", "single_transformer_blocks"]
    assert np.array_equal(_gen(engine, tiny_folder.model_path).pixels, plain.pixels)
