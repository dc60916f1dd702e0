"""The worker processes `daguerre serve` runs on its own machine: one per device, restarted when one dies.

Each is `daguerre worker` with the server's settings (a JSON file in the data folder), so the API process
never loads a model. A worker that exits while the pool is running is started again after a pause that
doubles (1 s up to 30 s) while it keeps dying within a minute of its start, so a worker that cannot start
(a broken model file, a lost GPU) does not spin. `stop` asks every worker to drain (SIGTERM: the running job
finishes, no new one is taken) and kills the ones still running at the deadline; their jobs come back to the
queue for the next start.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)
QUICK_DEATH_S = 60.0  # a worker that dies sooner than this after its start backs off before the next


@dataclass
class _Slot:
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    backoff: float = 1.0
    restarts: int = 0
    due: float = 0.0  # when to start it again (after a death)
    history: list[int] = field(default_factory=list)  # exit codes


class WorkerPool:
    def __init__(self, workers: dict[str, list[str]], *, env: dict[str, str] | None = None):
        """`workers`: name -> the command line that runs it."""
        self._slots = [_Slot(name, argv) for name, argv in workers.items()]
        self._env = env
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._slots)

    def start(self) -> None:
        for slot in self._slots:
            self._spawn(slot)
        self._thread = threading.Thread(target=self._watch, name="daguerre-pool", daemon=True)
        self._thread.start()

    def status(self) -> list[dict]:
        """Each worker process: name, pid, alive, restarts, last exit codes."""
        with self._lock:
            return [{"name": s.name, "pid": s.proc.pid if s.proc else None,
                     "alive": s.proc is not None and s.proc.poll() is None, "restarts": s.restarts,
                     "exits": s.history[-5:]} for s in self._slots]  # fmt: skip

    def stop(self, timeout: float) -> bool:
        """Drain every worker (SIGTERM), wait up to `timeout`, kill the rest. True if all finished in time."""
        self._stopping.set()
        with self._lock:
            procs = [s.proc for s in self._slots if s.proc is not None and s.proc.poll() is None]
        for p in procs:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        clean = True
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                clean = False
                log.warning("worker pid %d did not finish its job within %.0f s: killed; the job is re-queued",
                            p.pid, timeout)  # fmt: skip
                p.kill()
                p.wait()
        if self._thread is not None:
            self._thread.join(2)
        return clean

    def _spawn(self, slot: _Slot) -> None:
        slot.proc = subprocess.Popen(slot.argv, env=self._env, start_new_session=False)
        slot.started = time.monotonic()
        log.info("worker %s started (pid %d)", slot.name, slot.proc.pid)

    def _watch(self) -> None:
        while not self._stopping.wait(0.5):
            now = time.monotonic()
            with self._lock:
                for slot in self._slots:
                    if slot.proc is None:
                        if now >= slot.due:
                            self._spawn(slot)
                        continue
                    code = slot.proc.poll()
                    if code is None:
                        continue
                    slot.history.append(code)
                    quick = now - slot.started < QUICK_DEATH_S
                    slot.backoff = min(30.0, slot.backoff * 2) if quick else 1.0
                    wait = slot.backoff if quick else 0.0
                    log.error("worker %s (pid %d) exited with %s; starting it again in %.0f s", slot.name,
                              slot.proc.pid, _exit_text(code), wait)  # fmt: skip
                    slot.proc, slot.due, slot.restarts = None, now + wait, slot.restarts + 1


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def child_env(workers: int = 1, device: str | None = None) -> dict[str, str]:
    """The environment for worker processes: this one's, with Python's output unbuffered (logs in order), and
    on the CPU each of `workers` processes given its share of the cores (OMP_NUM_THREADS, which torch reads):
    processes that each use every core slow each other down far more than they add."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if device == "cpu" and workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    return env
