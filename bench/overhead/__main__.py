"""Overhead benchmark: Daguerre's engine vs the bare diffusers FluxPipeline, same weights, one process.

    .venv/bin/python bench/overhead [--steps 8] [--size 512] [--runs 5] [--out bench/results/overhead.json]

A mid-size random FLUX.1-architecture model (4 double + 8 single blocks, 4 heads of 64, real
8x VAE) is built in memory. Warm-up runs are excluded; medians of N runs are compared:
  single:  one image, engine vs `FluxPipeline(prompt, generator=Generator("cpu").manual_seed(s))`
  batch:   numberResults=4 in one request (default chunking: 1 image per pass on the CPU, 4 on a GPU)
           vs the same four images as four single requests (seeds s..s+3); and, for information,
           4 images forced into one pass
Targets: engine/diffusers <= 1.02; batch per image <= single per image. Not a test: no asserts.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import torch

import daguerre  # noqa: F401 - first: it quiets torchao's and transformers' import-time notes

PROMPT = "portrait of a woman in her 30s, soft studio lighting, 85mm f/1.4"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=8, help="denoising steps per image (default 8)")
    p.add_argument("--size", type=int, default=512, help="image width and height in pixels (default 512)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per path after one warm-up; medians are "
                   "compared (default 5; use more on a busy machine)")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("bench/results/overhead.json"), help="where the JSON goes")
    a = p.parse_args(argv)

    from diffusers import FluxPipeline

    from daguerre.config import Settings
    from daguerre.logs import quiet_libraries
    from daguerre.request import GenerationRequest
    from daguerre.services import build_engine
    from daguerre.testing.bench import build_model, disagreements, interleaved

    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "midsize"
        print(f"building the mid-size random model; {a.runs} runs of 5 paths at {a.size} px, {a.steps} steps",
              file=sys.stderr, flush=True)  # fmt: skip
        build_model(folder, "mid")
        engine = build_engine(Settings(discover=False, cache_dir=Path(tmp) / "cache"))
        with engine.models.lease(str(folder)) as model:  # the same loaded weights for both paths
            pipe = FluxPipeline(**model.pipe.components)
            pipe.set_progress_bar_config(disable=True)
            device = model.device

            def bare():
                pipe(
                    PROMPT,
                    height=a.size,
                    width=a.size,
                    num_inference_steps=a.steps,
                    guidance_scale=3.5,
                    generator=torch.Generator("cpu").manual_seed(1),
                    output_type="pil",
                )

            def ours(n=1, max_batch=None, seed=1):
                req = GenerationRequest(
                    model=str(folder),
                    positive_prompt=PROMPT,
                    width=a.size,
                    height=a.size,
                    steps=a.steps,
                    seed=seed,
                    number_results=n,
                )
                engine.generate(req, max_batch=max_batch)

            def singles4():  # the same four images as numberResults=4, as four requests
                for i in range(4):
                    ours(seed=1 + i)

            # All paths in one round-robin, so drift in machine load hits each alike.
            times = interleaved(
                {
                    "diffusers": bare,
                    "daguerre": ours,
                    "singles4": singles4,
                    "batch4": lambda: ours(4),
                    "batch4_forced": lambda: ours(4, 4),
                },
                a.runs,
            )

    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "benchmark": "overhead",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": "4 double + 8 single blocks, 4x64 heads, random",
        "size": a.size,
        "steps": a.steps,
        "runs": a.runs,
        "seconds_median": med,
        "engine_over_diffusers": med["daguerre"] / med["diffusers"],
        "default_max_batch": engine.max_batch,
        "batch4_per_image_over_single": med["batch4"] / med["singles4"],
        "batch4_forced_per_image_over_single": med["batch4_forced"] / med["singles4"],
        "samples": times,
    }
    print(f"{'path':<34}{'s/image (median)':>18}{'ratio':>10}")
    print(f"{'diffusers FluxPipeline':<34}{med['diffusers']:>18.3f}{1.0:>10.3f}")
    print(f"{'daguerre engine':<34}{med['daguerre']:>18.3f}{result['engine_over_diffusers']:>10.3f}")
    print(
        f"{'daguerre numberResults=4 / image':<34}{med['batch4'] / 4:>18.3f}"
        f"{result['batch4_per_image_over_single']:>10.3f}  (vs 4 single requests, same seeds; "
        f"{engine.max_batch} per pass)"
    )
    print(
        f"{'  same, 4 forced into one pass':<34}{med['batch4_forced'] / 4:>18.3f}"
        f"{result['batch4_forced_per_image_over_single']:>10.3f}"
    )
    warnings = disagreements(times)
    result["warnings"] = warnings
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
