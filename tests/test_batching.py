"""Cross-request batching: compatible requests share forward passes and still make their solo images."""

from __future__ import annotations

import io
import time
import uuid

import numpy as np
import pytest
from PIL import Image

from daguerre.errors import DaguerreError
from daguerre.request import GenerationRequest, LoraRef, OutputSpec


@pytest.fixture(scope="module")
def batch_engine(settings_factory, tiny_single):
    from daguerre.services import build_engine

    return build_engine(settings_factory(base_model=str(tiny_single.base_path), max_batch=4))


def _req(model, prompt="a red barn at dusk", **kw) -> GenerationRequest:
    kw.setdefault("width", 128)
    kw.setdefault("height", 128)
    kw.setdefault("steps", 2)
    return GenerationRequest(model=model, positive_prompt=prompt, **kw)


class CallCounter:
    """Counts transformer forward passes (one per denoising step per pass)."""

    def __init__(self, engine, model):
        with engine.models.lease(model) as m:
            self.transformer = m.pipe.transformer
        self.calls = 0

    def __enter__(self):
        self.handle = self.transformer.register_forward_pre_hook(lambda *_: setattr(self, "calls", self.calls + 1))
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_shared_passes_make_the_solo_images_with_fewer_transformer_calls(batch_engine, tiny_single):
    model = str(tiny_single.model_path)
    reqs = [
        _req(model, "a red barn at dusk", seed=11),
        _req(model, "portrait of an old fisherman, overcast light", seed=500, number_results=2),
        _req(model, "a glass of water on a wooden table", seed=3, output=OutputSpec("PNG", 95)),
    ]
    keys = {batch_engine.batch_key(r) for r in reqs}
    assert len(keys) == 1 and None not in keys

    with CallCounter(batch_engine, model) as solo_count:
        solo = [batch_engine.generate(r) for r in reqs]
    seen: list[tuple[int, int]] = []
    with CallCounter(batch_engine, model) as shared_count:
        outcomes = batch_engine.generate_batch(reqs, on_image=lambda k, im: seen.append((k, im.index)))

    assert solo_count.calls == 2 * 3  # 2 steps for each of the 3 requests
    assert shared_count.calls == 2  # 4 images in one pass of 2 steps
    assert sorted(seen) == [(0, 0), (1, 0), (1, 1), (2, 0)]
    for alone, shared in zip(solo, outcomes, strict=True):
        assert not isinstance(shared, Exception)
        assert [im.seed for im in shared.images] == [im.seed for im in alone.images]
        for a, b in zip(alone.images, shared.images, strict=True):
            np.testing.assert_allclose(b.pixels, a.pixels, atol=2e-5)
    # The recipe re-runs the image's own chunk of its own request.
    r = outcomes[1].images[1].recipe
    assert (r.batch_size, r.batch_index, r.seed) == (2, 1, 501)
    assert outcomes[0].images[0].recipe.positive_prompt == "a red barn at dusk"


def test_a_request_that_fails_its_own_checks_does_not_fail_the_others(batch_engine, tiny_single):
    model = str(tiny_single.model_path)
    good = _req(model, seed=1)
    bad = _req(model, "a (broken:1.2 prompt", seed=2, prompt_weighting="compel")
    outcomes = batch_engine.generate_batch([good, bad])
    assert isinstance(outcomes[1], DaguerreError) and outcomes[1].parameter == "positivePrompt"
    alone = batch_engine.generate(good)
    np.testing.assert_allclose(outcomes[0].images[0].pixels, alone.images[0].pixels, atol=2e-5)


def test_what_keeps_a_request_alone(batch_engine, tiny_single):
    from daguerre.request import AccelOptions

    model = str(tiny_single.model_path)
    base = batch_engine.batch_key(_req(model))
    assert base is not None
    assert batch_engine.batch_key(_req(model, prompt="other", seed=9, number_results=3)) == base
    assert batch_engine.batch_key(_req(model, width=192)) != base
    assert batch_engine.batch_key(_req(model, steps=3)) != base
    assert batch_engine.batch_key(_req(model, loras=(LoraRef("x.safetensors", 0.5),))) != base
    img = Image.new("RGB", (128, 128))
    assert batch_engine.batch_key(_req(model, seed_image=img)) is None
    assert batch_engine.batch_key(_req(model, accelerator=AccelOptions(tea_cache=True))) is None
    with pytest.raises(ValueError):
        batch_engine.generate_batch([_req(model), _req(model, width=192)])


def test_worker_runs_compatible_queued_jobs_together(batch_engine, tiny_single, tmp_path):
    from daguerre.engine.plan import resolved
    from daguerre.jobs import spec as specs
    from daguerre.jobs.queue import SQLiteQueue
    from daguerre.jobs.service import JobService
    from daguerre.jobs.store import SQLiteJobStore
    from daguerre.jobs.worker import Worker
    from daguerre.request import OutputSpec
    from daguerre.storage import LocalResultStore

    model = str(tiny_single.model_path)
    jobs = JobService(
        store=SQLiteJobStore(tmp_path / "jobs.sqlite3"), queue=SQLiteQueue(tmp_path / "jobs.sqlite3", maxsize=20)
    )

    def task(**kw):
        base = {"model": model, "width": 128, "height": 128, "steps": 2, "positive_prompt": "a lighthouse on a cliff",
                "output": OutputSpec(format="PNG")}  # fmt: skip
        req = resolved(GenerationRequest(**{**base, **kw}), batch_engine.models.catalog)
        return specs.new("anonymous", str(uuid.uuid4()), req)

    tasks = [
        task(seed=1),
        task(seed=2, positive_prompt="a bowl of lemons", number_results=2),
        task(seed=3, width=192),  # another size: runs alone
        task(seed=4, positive_prompt="a (broken:1.2 prompt", prompt_weighting="compel"),  # fails in the group
        task(seed=5),  # no room left in the pass: runs alone
    ]
    for t in tasks:
        jobs.submit(t)
    batches: list[int] = []
    original = batch_engine.generate_batch

    def spy(reqs, **kw):
        batches.append(len(reqs))
        return original(reqs, **kw)

    batch_engine.generate_batch = spy
    results = LocalResultStore(tmp_path / "images")
    worker = Worker(engine=batch_engine, jobs=jobs, results=results, default_ttl=3600)
    try:
        worker.start()
        deadline = time.time() + 120
        while time.time() < deadline and not all(jobs.get(*t.key).done for t in tasks):
            time.sleep(0.1)
    finally:
        worker.stop(30)
        del batch_engine.generate_batch
    done = [jobs.get(*t.key) for t in tasks]
    assert [j.status for j in done] == ["success", "success", "success", "error", "success"]
    assert done[3].error["parameter"] == "positivePrompt"
    assert batches == [3]  # jobs 1, 2 (two images) and 4 shared one pass (max_batch 4); 3 and 5 ran alone
    assert [len(j.results) for j in done] == [1, 2, 1, 0, 1]
    # The shared-pass image is the image the job makes alone.
    solo = batch_engine.generate(_req(model, "a bowl of lemons", seed=2, number_results=2))
    stored = results.get(done[1].results[1]["imageUUID"], "anonymous")
    got = np.asarray(Image.open(io.BytesIO(stored[1])).convert("RGB"), dtype=np.int16)
    want = np.asarray(solo.images[1].image, dtype=np.int16)
    assert np.abs(got - want).max() <= 1
