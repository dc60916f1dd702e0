"""bench/speed runs end to end on the CPU (a smoke run: tiny model, no timing assertions)."""

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
