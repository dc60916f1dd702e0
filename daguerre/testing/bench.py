"""Shared pieces of the benchmarks (`bench/overhead`, `bench/speed`): random-weight models of a chosen size,
interleaved timing with per-run progress, and a check that the runs agree.

Benchmarks are scripts (`python bench/NAME`), so what they share lives here, in the package.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Random-weight FLUX.1-architecture models: transformer blocks, heads, rope axes and VAE widths.
CONFIGS = {
    "tiny": {"double": 1, "single": 2, "heads": 2, "head_dim": 16, "axes": (4, 6, 6), "vae": (8, 16, 16, 16)},
    "mid": {"double": 4, "single": 8, "heads": 4, "head_dim": 64, "axes": (16, 24, 24), "vae": (16, 32, 32, 32)},
    "full": {"double": 19, "single": 38, "heads": 24, "head_dim": 128, "axes": (16, 56, 56),
             "vae": (128, 256, 512, 512)},
}  # fmt: skip
DISAGREE = 0.10  # runs of one path further apart than this (relative to their median) are flagged


def build_model(folder: Path, config: str, seed: int = 0) -> None:
    """A diffusers folder with the tiny builder's tokenizers and encoders and a transformer/VAE of `config`."""
    from daguerre.testing import tiny

    c = CONFIGS[config]
    parts = tiny.build_components(seed=seed, double=c["double"], single=c["single"], heads=c["heads"],
                                  head_dim=c["head_dim"], axes_dims_rope=c["axes"], vae_channels=c["vae"])  # fmt: skip
    tiny.save_folder(parts, folder, with_transformer_weights=True)


def interleaved(
    fns: dict[str, Callable[[], object]], runs: int, *, sync: Callable[[], None] | None = None, log=sys.stderr
) -> dict[str, list[float]]:
    """One warm-up each, then round-robin runs, so drift in machine load hits every path alike. Each run's
    figures are printed to `log` as they come (a long benchmark shows it is alive)."""
    for name, fn in fns.items():
        print(f"warm-up {name}...", file=log, flush=True)
        fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for run in range(runs):
        parts = []
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            if sync is not None:
                sync()
            out[name].append(time.perf_counter() - t)
            parts.append(f"{name} {out[name][-1]:.3f} s")
        print(f"run {run + 1}/{runs}: " + ", ".join(parts), file=log, flush=True)
    return out


def disagreements(times: dict[str, list[float]], tolerance: float = DISAGREE) -> list[str]:
    """A warning for each path whose runs spread wider than `tolerance` of their median: its ratio is noise."""
    out = []
    for name, samples in times.items():
        if len(samples) < 2:
            continue
        med = statistics.median(samples)
        spread = (max(samples) - min(samples)) / med if med else 0.0
        if spread > tolerance:
            out.append(
                f"{name}: runs differ by {spread:.0%} (from {min(samples):.3f} to {max(samples):.3f} s); the "
                f"machine was not steady, so ratios involving it are unreliable: run again with more --runs"
            )
    return out
