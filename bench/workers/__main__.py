"""Throughput benchmark: the engine called directly vs the worker as a thread vs 1, 2, 3 worker processes.

    .venv/bin/python bench/workers [--config mid|tiny|full] [--size PX] [--steps N] [--tasks N]
                                   [--workers 1,2,3] [--out bench/results/workers.json]

Not a test: it prints a table and writes JSON. One random-weight model on disk (daguerre.testing.bench),
`--tasks` txt2img tasks of one size (different seeds, max_batch 1: one task per forward pass), timed from
the first submission to the last image stored:
  engine direct    Engine.generate in this process, one task after another (no queue, no store)
  worker thread    the worker loop as a thread of this process (what `serve` ran before worker processes)
  N processes      N `daguerre worker` processes on the embedded SQLite queue (what `serve` runs now), started
                   and preloaded before the clock starts; the tasks are submitted by this process
Images per minute and the ratio to the engine called directly.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import daguerre  # noqa: F401 - quiets torchao's import-time warnings
from daguerre.testing.bench import build_model

PROMPT = "portrait of a woman in her 30s, soft studio lighting, 85mm f/1.4"


def _settings(folder: Path, data: Path):
    from daguerre.config import ServerSettings, Settings

    return Settings(discover=False, max_batch=1, cache_dir=data / "cache",
                    models={"bench": {"id": "daguerre:bench@1", "path": str(folder)}},
                    server=ServerSettings(data_dir=data, max_queue=10_000))  # fmt: skip


def _specs(settings, n: int, size: int, steps: int):
    from daguerre.engine.plan import resolved
    from daguerre.jobs import spec as specs
    from daguerre.request import GenerationRequest
    from daguerre.services import build_catalog

    catalog = build_catalog(settings)
    return [specs.new("bench", str(uuid.uuid4()), resolved(GenerationRequest(
        model="daguerre:bench@1", width=size, height=size, steps=steps, seed=100 + i,
        positive_prompt=f"{PROMPT}, variation {i}"), catalog)) for i in range(n)]  # fmt: skip


def engine_direct(settings, n, size, steps) -> float:
    from daguerre.services import build_engine

    engine = build_engine(settings)
    reqs = [s.request for s in _specs(settings, n + 1, size, steps)]
    engine.generate(reqs[0])  # warm-up (load)
    t = time.perf_counter()
    for r in reqs[1:]:
        engine.generate(r)
    return time.perf_counter() - t


def _wait_done(jobs, specs, timeout: float = 3600) -> None:
    deadline = time.time() + timeout
    pending = list(specs)
    while pending and time.time() < deadline:
        pending = [s for s in pending if not jobs.get(*s.key).done]
        time.sleep(0.05)
    failed = [jobs.get(*s.key).error for s in specs if jobs.get(*s.key).status != "success"]
    if failed:
        raise RuntimeError(f"throughput run failed: {failed[0]}")


def worker_thread(settings, n, size, steps) -> float:
    from daguerre.services import build_server

    services = build_server(settings)
    warm = _specs(settings, 1, size, steps)
    services.worker.start()
    try:
        services.jobs.submit(warm[0])
        _wait_done(services.jobs, warm)
        specs = _specs(settings, n, size, steps)
        t = time.perf_counter()
        for s in specs:
            services.jobs.submit(s)
        _wait_done(services.jobs, specs)
        return time.perf_counter() - t
    finally:
        services.worker.stop(60)
        services.close()


def worker_processes(settings, count: int, n, size, steps) -> float:
    from daguerre.jobs.service import JobService
    from daguerre.services import build_backends

    settings.server.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.server.data_dir / "settings.json"
    path.write_text(settings.model_dump_json())
    from daguerre.jobs.pool import child_env

    env = child_env(count, "cpu")  # as serve starts them: the CPU's threads shared out between the processes
    procs = [subprocess.Popen([sys.executable, "-m", "daguerre", "worker", "--settings-file", str(path),
                               "--name", f"bench-{i}", "--preload", "daguerre:bench@1"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(count)]  # fmt: skip
    store, queue, feed, _outbox = build_backends(settings)
    jobs = JobService(store=store, queue=queue, feed=feed)
    try:
        deadline = time.time() + 600
        while sum(w["ready"] for w in store.workers()) < count and time.time() < deadline:
            time.sleep(0.2)
        warm = _specs(settings, count, size, steps)  # one warm-up job per worker (first-call costs)
        for s in warm:
            jobs.submit(s)
        _wait_done(jobs, warm)
        specs = _specs(settings, n, size, steps)
        t = time.perf_counter()
        for s in specs:
            jobs.submit(s)
        _wait_done(jobs, specs)
        return time.perf_counter() - t
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(120)
        store.close()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="bench/workers", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="mid", choices=["tiny", "mid", "full"])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--tasks", type=int, default=12)
    p.add_argument("--workers", default="1,2,3")
    p.add_argument("--out", type=Path, default=Path("bench/results/workers.json"))
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tmp = Path(tempfile.mkdtemp(prefix="daguerre-bench-workers-"))
    folder = tmp / "model"
    build_model(folder, a.config)
    rows: dict[str, float] = {}

    def run(name: str, fn) -> None:
        data = tmp / uuid.uuid4().hex[:8]
        seconds = fn(_settings(folder, data))
        rows[name] = 60 * a.tasks / seconds
        print(f"  {name:<16} {rows[name]:8.1f} images/min", flush=True)

    print(f"{a.config} model, {a.size} px, {a.steps} steps, {a.tasks} tasks, {os.cpu_count()} CPUs", flush=True)
    run("engine direct", lambda s: engine_direct(s, a.tasks, a.size, a.steps))
    run("worker thread", lambda s: worker_thread(s, a.tasks, a.size, a.steps))
    for count in [int(x) for x in a.workers.split(",") if x]:
        run(f"{count} process{'es' if count > 1 else ''}",
            lambda s, c=count: worker_processes(s, c, a.tasks, a.size, a.steps))  # fmt: skip
    base = rows["engine direct"]
    print(f"\n{'path':<16} {'images/min':>10} {'vs direct':>10}")
    for name, v in rows.items():
        print(f"{name:<16} {v:10.1f} {v / base:9.2f}x")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"date": datetime.now(UTC).isoformat(timespec="seconds"),
                                 "machine": platform.platform(), "cpus": os.cpu_count(), "config": a.config,
                                 "size": a.size, "steps": a.steps, "tasks": a.tasks, "images_per_minute": rows},
                                indent=2))  # fmt: skip
    print(f"wrote {a.out}")


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
