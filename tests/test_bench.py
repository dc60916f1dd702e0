"""bench/speed runs end to end on the CPU (a smoke run: tiny model, no timing assertions); the benchmarks'
shared helpers; bench/overhead's options explain themselves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_speed_benchmark_smoke(tmp_path):
    out = tmp_path / "speed.json"
    root = Path(__file__).parents[1]
    args = ["bench/speed", "--smoke", "--max-batch", "2", "--memory", "--out", str(out)]
    r = subprocess.run([sys.executable, *args], cwd=root, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(out.read_text())
    rows = {row["path"]: row for row in data["rows"]}
    assert {"diffusers", "exact", "exact+teacache", "exact+dbcache", "fast", "turbo"} <= set(rows)
    assert all(rows[p]["s_per_image"] > 0 and rows[p]["speedup"] > 0 for p in ("diffusers", "exact", "exact+teacache"))
    assert "psnr_db" in rows["exact+teacache"] and "latent_rel_error" in rows["exact+teacache"]
    assert data["transformer_tflop_per_image"] > 0 and "skipped" in rows["fast"]["note"]
    # --memory adds the offload modes, which say why they cannot run on the CPU.
    assert all("skipped" in rows[p]["note"] and "CUDA" in rows[p]["note"] for p in ("offload-model", "offload-group"))
    assert "s/img" in r.stdout  # the table is printed
    # Throughput goes through the worker, with one task per pass and with shared passes.
    assert set(data["throughput_images_per_minute"]) == {"1 queued, max_batch 1", "1 queued, max_batch 2"}
    assert all(ipm > 0 for ipm in data["throughput_images_per_minute"].values())


def test_every_benchmark_option_has_help_text():
    root = Path(__file__).parents[1]
    for bench in ("bench/overhead", "bench/speed"):
        r = subprocess.run([sys.executable, bench, "--help"], cwd=root, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        for i, ln in enumerate(lines):
            if not ln.strip().startswith("--"):
                continue
            following = lines[i + 1] if i + 1 < len(lines) else ""
            described = len(ln.split()) > 2 or (following.startswith(" " * 8) and not following.strip().startswith("-"))
            assert described, f"{bench}: {ln.strip()} has no help text"
        assert "Failed to load" not in r.stderr and "Enum subclass" not in r.stderr  # torchao's import noise


def test_runs_that_disagree_are_flagged_and_steady_ones_are_not():
    from daguerre.testing.bench import disagreements, interleaved

    assert disagreements({"steady": [1.0, 1.02, 0.99]}) == []
    [warning] = disagreements({"steady": [1.0, 1.01], "noisy": [1.0, 5.0, 1.1]})
    assert warning.startswith("noisy:") and "unreliable" in warning
    import io

    log = io.StringIO()
    times = interleaved({"a": lambda: None, "b": lambda: None}, 2, log=log)
    assert [len(v) for v in times.values()] == [2, 2] and "run 2/2: a " in log.getvalue()
