"""Speed benchmark: the diffusers baseline and Daguerre's speed profiles on one random-weight model.

    .venv/bin/python bench/speed [--config tiny|mid|full] [--size PX] [--steps N] [--runs N]
                                 [--queue 1,4,16] [--max-batch N] [--memory] [--attention NAME]
                                 [--out bench/results/speed.json] [--smoke]

Not a test: it prints a table and writes JSON. Speed does not depend on weight values, so the
model is built in memory with random weights: `full` is FLUX.1-dev's transformer (19 double + 38
single blocks, 24 heads of 128) and VAE at full size with the tiny text encoders (they run once per
image); `mid` is a CPU-sized model; `tiny` is the test model (--smoke: tiny, 128 px, 2 steps, 1 run).
Default: full on a GPU, mid on the CPU.

Paths, all in one process on the same weights, warm-up excluded, interleaved, median of N runs:
  diffusers       FluxPipeline eager (the baseline)
  exact           the engine with profile exact (compiled on CUDA, dynamic and warmed up at load)
  exact+teacache  exact + acceleratorOptions TeaCache 0.4
  exact+dbcache   exact + first-block DB Cache 0.25, for information
  fast            the engine with profile fast (+ torchao fp8 per-row; CUDA >= 8.9 only, else skipped
                  with the reason the profile gives)
  turbo           fast + TeaCache 0.4 (what profile turbo adds to fast)
  offload-model   with --memory: exact with offload model (parts in CPU RAM, each onloaded to run)
  offload-group   with --memory: exact with offload group (blocks streamed to the GPU)
Columns: seconds per image, speed-up over the baseline, fraction of the compute floor (the model's
FLOPs at the device's peak rate), GPU memory the path needs alone (its model's weights on the GPU +
the run's transient peak; other paths' models stay resident meanwhile), and fidelity against `exact` on the same seed:
relative error of the final latents and pixel PSNR. Throughput: images per minute with 1, 4 and 16
txt2img tasks queued on the server's worker (profile exact), which runs compatible queued tasks in
shared forward passes: once with max_batch 1 (one task per pass) and once with --max-batch (default 4
on a GPU; on the CPU only 1 unless asked, since a CPU step is compute-bound already); and with --processes N
(default 1), the largest queue through N `daguerre worker` processes, as `serve` runs them (bench/workers'
code), against `exact` called directly: the worker thread's CPU penalty is measured away there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

import daguerre  # noqa: F401 - before diffusers: it quiets torchao's import-time warnings
from daguerre.testing.bench import CONFIGS, build_model, disagreements, interleaved

PROMPT = "portrait of a woman in her 30s, soft studio lighting, 85mm f/1.4"
# Dense bf16 rates FLUX-size matmuls reach (the anchors for H100/H200); fp8 doubles them.
GPU_PEAK_TFLOPS = {"H100": 790.0, "H200": 790.0, "A100": 280.0, "L40S": 330.0, "RTX 4090": 150.0}


def flops_per_step(config, size: int, text_tokens: int) -> float:
    """Transformer FLOPs of one step: 2 x tokens x per-token linear weights + 4 x L^2 x D per block.

    Double blocks send image and text tokens through separate weights (12 D^2 per stream: qkv,
    out, 4D MLP); single blocks send all tokens through 3D + 4D in and 5D out (12 D^2 as well).
    For FLUX.1-dev at 1024^2 (4096 + 512 tokens) this gives 59.5 + 14.9 TFLOP.
    """
    d = config.num_attention_heads * config.attention_head_dim
    image_tokens = (size // 16) ** 2
    tokens = image_tokens + text_tokens
    blocks = config.num_layers + config.num_single_layers
    linear = 2 * tokens * 12 * d * d * blocks
    attention = 4 * tokens * tokens * d * blocks
    return float(linear + attention)


def device_peak(device: torch.device) -> tuple[float | None, str]:
    """(peak FLOP/s, how it was obtained)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in GPU_PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12, f"table: {key} bf16 {tflops:g} TFLOP/s"
        return None, f"no peak known for {name}"
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t, reps = time.perf_counter(), 0
    while time.perf_counter() - t < 0.5:
        a @ b
        reps += 1
    rate = 2 * n**3 * reps / (time.perf_counter() - t)
    return rate, f"measured fp32 {n}^3 matmul: {rate / 1e9:.0f} GFLOP/s"


@contextlib.contextmanager
def capture_latents(vae, into: dict):
    """Keep the latents the VAE decodes (the final latents of a run)."""
    original = vae.decode

    def decode(z, *a, **kw):
        into["latents"] = z.detach().float().cpu()
        return original(z, *a, **kw)

    vae.decode = decode
    try:
        yield
    finally:
        del vae.decode


# --memory: profile exact with an offload mode (docs/api.md "Memory modes"; CUDA only). The t5 modes
# are not benchmarked here: the benchmark model has the tiny text encoders.
MEMORY_PATHS = {
    "offload-model": {"offload": "model"},
    "offload-group": {"offload": "group"},
}


def gpu_resident_bytes(modules) -> int:
    """Bytes of these modules' parameters and buffers that sit on a CUDA device now (shared ones once)."""
    from daguerre.engine.models.resident import tensor_bytes

    seen, total = set(), 0
    for module in modules:
        for t in (*module.parameters(), *module.buffers()):
            if id(t) not in seen and t.device.type == "cuda":
                seen.add(id(t))
                total += tensor_bytes(t)
    return total


def _bench_workers():
    """bench/workers' module (its worker-process throughput run), loaded from its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_workers", Path(__file__).parents[1] / "workers" / "__main__.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def worker_throughput(engine, model: str, n: int, *, size: int, steps: int, tmp: Path) -> float:
    """Images per minute for `n` txt2img tasks queued at once, through the server's worker (which runs
    compatible queued tasks in shared forward passes, up to the engine's max_batch images)."""
    import uuid

    from daguerre.engine.plan import resolved
    from daguerre.jobs import spec as specs
    from daguerre.jobs.queue import SQLiteQueue
    from daguerre.jobs.service import JobService
    from daguerre.jobs.store import SQLiteJobStore
    from daguerre.jobs.worker import Worker
    from daguerre.request import GenerationRequest
    from daguerre.storage import LocalResultStore

    run = tmp / f"queue-{uuid.uuid4().hex[:8]}"
    run.mkdir()
    jobs = JobService(
        store=SQLiteJobStore(run / "jobs.sqlite3"), queue=SQLiteQueue(run / "jobs.sqlite3", maxsize=max(n, 1))
    )
    requests = [
        resolved(GenerationRequest(model=model, width=size, height=size, steps=steps, seed=100 + i,
                                   positive_prompt=f"{PROMPT}, variation {i}"), engine.models.catalog)
        for i in range(n)
    ]  # fmt: skip
    tasks = [specs.new("bench", str(uuid.uuid4()), req) for req in requests]
    import threading

    left, all_done = [n], threading.Event()

    def on_event(job, event, result):  # told when a job ends (no polling to steal CPU)
        if event == "completed":
            left[0] -= 1
            if left[0] == 0:
                all_done.set()

    worker = Worker(engine=engine, jobs=jobs, results=LocalResultStore(run / "images"), default_ttl=3600,
                    on_event=on_event)  # fmt: skip
    for task in tasks:
        jobs.submit(task)
    t = time.perf_counter()
    worker.start()
    try:
        all_done.wait(3600)
    finally:
        worker.stop(60)
    seconds = time.perf_counter() - t
    failed = [j.error for j in (jobs.get(*task.key) for task in tasks) if j.status != "success"]
    if failed:
        raise RuntimeError(f"throughput run failed: {failed[0]}")
    return 60 * n / seconds


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--config",
        choices=tuple(CONFIGS),
        default=None,
        help="random model size: tiny, mid or full (FLUX.1-dev) [full on a GPU, mid on the CPU]",
    )
    p.add_argument("--size", type=int, default=None, help="image side in pixels [1024 full, 256 mid, 128 tiny]")
    p.add_argument("--steps", type=int, default=None, help="denoising steps [28 full, 8 otherwise]")
    p.add_argument("--runs", type=int, default=3, help="timed runs per path after one warm-up [3]")
    p.add_argument("--queue", default="1,4,16", help="queued requests for the throughput rows ('' skips them)")
    p.add_argument("--out", type=Path, default=Path("bench/results/speed.json"), help="where the JSON goes")
    p.add_argument("--smoke", action="store_true", help="tiny model, 128 px, 2 steps, 1 run: checks it runs")
    p.add_argument("--attention", default="auto",
                   help="attention backend of the engine paths (settings `attention`) [auto]")  # fmt: skip
    p.add_argument("--memory", action="store_true",
                   help="add the offload modes (exact with offload model / group) as paths; CUDA only")  # fmt: skip
    p.add_argument("--max-batch", type=int, default=None,
                   help="throughput rows: compare max_batch 1 with this [4 on a GPU, 1 on the CPU]")  # fmt: skip
    p.add_argument("--processes", type=int, default=1,
                   help="throughput through this many worker processes (0 skips it; --smoke: 0) [1]")  # fmt: skip
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="force torch.compile on or off for the engine paths [default: CUDA only]")  # fmt: skip
    a = p.parse_args(argv)

    from diffusers import FluxPipeline

    from daguerre.config import Settings
    from daguerre.engine.engine import Engine
    from daguerre.errors import DaguerreError
    from daguerre.logs import quiet_libraries
    from daguerre.request import AccelOptions, GenerationRequest, HiresFix
    from daguerre.services import build_engine

    quiet_libraries()

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    config = "tiny" if a.smoke else a.config or ("full" if cuda else "mid")
    size = 128 if a.smoke else a.size or (1024 if config == "full" else 256 if config == "mid" else 128)
    steps = 2 if a.smoke else a.steps or (28 if config == "full" else 8)
    runs = 1 if a.smoke else a.runs
    queue = [1] if a.smoke else [int(x) for x in a.queue.split(",") if x]
    dtype = torch.bfloat16 if cuda else torch.float32

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        build_model(folder, config)
        settings = Settings(discover=False, cache_dir=Path(tmp) / "cache", device=device.type,
                            dtype="bfloat16" if cuda else "float32")  # fmt: skip

        def engine_for(profile: str, **memory) -> Engine:
            update = {"profile": profile, "compile": a.compile, "attention": a.attention, **memory}
            return build_engine(settings.model_copy(update=update))

        base = FluxPipeline.from_pretrained(folder, dtype=dtype).to(device)
        base.set_progress_bar_config(disable=True)
        text_tokens = 512
        notes: dict[str, str] = {}
        engines = {}
        for profile in ("exact", "fast"):  # turbo = the fast engine + TeaCache 0.4 (what turbo adds)
            t = time.perf_counter()
            try:
                engines[profile] = engine_for(profile)
                with engines[profile].models.lease(str(folder)) as model:
                    applied = model.applied
                what = "compiled (dynamic, warmed up)" if applied.compiled else "eager (compile off)"
                fp8 = ", fp8 per-row" if applied.fp8 else ""
                notes[profile] = f"{what}{fp8}, attention {applied.attention}; load {time.perf_counter() - t:.0f} s"
            except DaguerreError as e:
                engines.pop(profile, None)
                notes[profile] = notes["turbo"] = f"skipped: {e.message}"
        memory_paths = {}  # path name -> its engine (exact with a memory mode), with --memory
        for name, memory in MEMORY_PATHS.items() if a.memory else ():
            t = time.perf_counter()
            try:
                memory_paths[name] = engine_for("exact", **memory)
                with memory_paths[name].models.lease(str(folder)):
                    pass
                what = ", ".join(f"{k} {v}" for k, v in memory.items())
                notes[name] = f"{what}; load {time.perf_counter() - t:.0f} s"
            except DaguerreError as e:
                memory_paths.pop(name, None)
                notes[name] = f"skipped: {e.message}"
        engines.update(memory_paths)
        with engines["exact"].models.lease(str(folder)) as model:
            transformer = model.pipe.transformer

        def request(seed: int = 7, **kw):
            return GenerationRequest(
                model=str(folder), positive_prompt=PROMPT, width=size, height=size, steps=steps, seed=seed, **kw
            )

        def diffusers_run():
            base(PROMPT, width=size, height=size, num_inference_steps=steps, max_sequence_length=text_tokens,
                 generator=torch.Generator("cpu").manual_seed(7), output_type="np")  # fmt: skip

        outputs: dict[str, dict] = {}

        def engine_run(name, profile, **kw):
            engine = engines[profile]
            with engine.models.lease(str(folder)) as m:
                decoder = m.pipe.vae

            def run():
                into: dict = {}
                with capture_latents(decoder, into):
                    img = engine.generate(request(**kw)).images[0]
                outputs[name] = {"pixels": img.pixels, "latents": into["latents"]}

            return run

        teacache = AccelOptions(tea_cache=True, tea_cache_distance=0.4)
        paths = {
            "diffusers": diffusers_run,
            "exact": engine_run("exact", "exact"),
            "exact+teacache": engine_run("exact+teacache", "exact", accelerator=teacache),
            # cache-dit's DBCache at its FLUX.1-dev default (0.08) and at the reference API's 0.25
            "exact+dbcache": engine_run("exact+dbcache", "exact", accelerator=AccelOptions(db_cache=True)),
            "exact+dbcache .25": engine_run(
                "exact+dbcache .25", "exact", accelerator=AccelOptions(db_cache=True, db_cache_threshold=0.25)
            ),
            # hiresFix to the same final size: a half-size first pass, latent 2x, img2img at strength 0.6
            "exact+hiresfix": engine_run("exact+hiresfix", "exact", hires_fix=HiresFix(model="latent")),
        }
        notes["exact+hiresfix"] = "same final size; no PSNR meaning (a different picture by design)"
        if "fast" in engines:
            paths["fast"] = engine_run("fast", "fast")
            paths["turbo"] = engine_run("turbo", "fast", accelerator=teacache)
            notes["turbo"] = "fast + TeaCache 0.4"
        for name in memory_paths:
            paths[name] = engine_run(name, name)
        times = interleaved(paths, runs, sync=torch.cuda.synchronize if cuda else None)
        peaks = {}
        if cuda:  # what each path needs alone: its model's weights on the GPU + the run's transient peak
            for name, fn in paths.items():
                if name == "diffusers":
                    modules = [base.transformer, base.text_encoder, base.text_encoder_2, base.vae]
                else:
                    owner = name if name in engines else ("fast" if name == "turbo" else "exact")
                    with engines[owner].models.lease(str(folder)) as m:
                        modules = m.modules
                torch.cuda.synchronize()
                before = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                fn()
                transient = torch.cuda.max_memory_allocated() - before
                peaks[name] = (gpu_resident_bytes(modules) + transient) / 2**30
        throughput = {}
        batches = sorted({1, a.max_batch or (4 if cuda else 1)})
        for max_batch in batches:
            engines["exact"].max_batch = max_batch
            for n in queue:
                throughput[f"{n} queued, max_batch {max_batch}"] = worker_throughput(
                    engines["exact"], str(folder), n, size=size, steps=steps, tmp=Path(tmp)
                )
        processes = 0 if a.smoke else a.processes
        if processes and queue:
            workers = _bench_workers()
            n = max(queue)
            data = Path(tmp) / "processes"
            seconds = workers.worker_processes(workers._settings(folder, data), processes, n, size, steps)
            throughput[f"{n} queued, {processes} worker process{'es' if processes > 1 else ''}"] = 60 * n / seconds

    flops = flops_per_step(transformer.config, size, text_tokens) * steps
    peak, peak_how = device_peak(device)
    base_s = statistics.median(times["diffusers"])
    ref = outputs.get("exact")
    rows = []
    for name, ts in times.items():
        s = statistics.median(ts)
        row = {"path": name, "s_per_image": s, "speedup": base_s / s, "note": notes.get(name, "")}
        if peak:
            rate = peak * (2 if name in ("fast", "turbo") else 1)
            row["compute_floor_fraction"] = (flops / rate) / s
        if name in peaks:
            row["peak_gib"] = peaks[name]
        if ref is not None and name in outputs and name != "exact":
            o = outputs[name]
            row["latent_rel_error"] = float((o["latents"] - ref["latents"]).norm() / ref["latents"].norm())
            row["psnr_db"] = psnr(o["pixels"], ref["pixels"])
        rows.append(row)
    for name in ("fast", "turbo", *(MEMORY_PATHS if a.memory else ())):
        if name not in times:
            rows.append({"path": name, "note": notes[name]})

    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "config": config,
        "size": size,
        "steps": steps,
        "runs": runs,
        "dtype": str(dtype).removeprefix("torch."),
        "transformer_tflop_per_image": flops / 1e12,
        "peak": peak_how,
        "rows": rows,
        "throughput_images_per_minute": throughput,
        "python": sys.version.split()[0],
        "warnings": disagreements(times),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(f"{result['device']} | {config} model | {size}px | {steps} steps | median of {runs} | {peak_how}")
    print(f"{'path':18} {'s/img':>8} {'x base':>7} {'floor':>6} {'GiB':>6} {'lat err':>8} {'PSNR':>6}  note")
    for r in rows:
        if "s_per_image" not in r:
            print(f"{r['path']:18} {'-':>8} {'-':>7} {'-':>6} {'-':>6} {'-':>8} {'-':>6}  {r['note']}")
            continue
        floor = f"{r['compute_floor_fraction']:.0%}" if "compute_floor_fraction" in r else "-"
        gib = f"{r['peak_gib']:.1f}" if "peak_gib" in r else "-"
        err = f"{r['latent_rel_error']:.2e}" if "latent_rel_error" in r else "-"
        ps = f"{r['psnr_db']:.1f}" if "psnr_db" in r else "-"
        speed = f"{r['s_per_image']:8.3f} {r['speedup']:7.2f}"
        print(f"{r['path']:18} {speed} {floor:>6} {gib:>6} {err:>8} {ps:>6}  {r['note']}")
    direct = 60 / statistics.median(times["exact"])
    for what, ipm in throughput.items():
        print(f"throughput, {what:>26}: {ipm:6.1f} images/min ({ipm / direct:.2f}x exact called directly)")
    for w in result["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
