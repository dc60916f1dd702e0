"""Many processes on one Redis, as an operator runs them (docs/deploy.md), and everything that can go wrong.

Two API nodes (`serve --workers 2` and `serve --workers 0`) and a third worker started on its own
(`daguerre worker`), all on one redis-server with AOF on, results in one shared folder. Four clients send 60
tasks through both nodes; meanwhile a busy worker is SIGKILLed (serve's pool starts it again), Redis is
restarted, the lone worker is sent SIGTERM while busy (it finishes its job and exits 0), and one poison task
crashes every worker that takes it. Every task must end with its images exactly once, under the imageUUIDs it
was promised; the poison task must end in the dead-letter stream with taskCrashedWorker. Every task also has a
webhook whose receiver refuses each message's first try, so retries are owed in the store's outbox all along:
each image's webhook must be acknowledged exactly once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.slow
POISON = "POISON-PILL"
TASKS, CLIENTS = 60, 4


class Redis:
    """redis-server on 127.0.0.1 with AOF, restartable on the same port and folder."""

    def __init__(self, folder: Path):
        self.exe = shutil.which("redis-server")
        self.folder, self.port = folder, free_port()
        folder.mkdir()
        self.proc = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "yes", "--dir", str(self.folder)],
                                     stdout=subprocess.DEVNULL)  # fmt: skip
        import redis

        client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        self.proc.terminate()  # a clean shutdown: the AOF is flushed
        self.proc.wait(10)


class Hooks:
    """A webhook receiver on 127.0.0.1: answers 500 to each webhook-id's first try, 200 after; counts the 200s."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.tries: dict[str, int] = {}
        self.acked: dict[str, list[str]] = {}  # webhook-id -> imageUUIDs of each acknowledged delivery
        lock, outer = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                wid = self.headers["webhook-id"]
                with lock:
                    outer.tries[wid] = outer.tries.get(wid, 0) + 1
                    ok = outer.tries[wid] > 1
                    if ok:
                        outer.acked.setdefault(wid, []).extend(d["imageUUID"] for d in body.get("data", []))
                self.send_response(200 if ok else 500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _env(tmp: Path) -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", DAGUERRE_CACHE_DIR=str(tmp / "cache"),
                DAGUERRE_FAULT_CRASH_PROMPT=POISON, PYTHONUNBUFFERED="1")  # fmt: skip


def _spawn(args: list[str], tmp: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "daguerre", *args], cwd=tmp, env=_env(tmp),
                            stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def _ready(url: str, deadline: float) -> None:
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not become ready")


def _post(url: str, body: list, deadline: float) -> dict:
    """POST like a client that retries: on a lost connection or 503 (Redis restarting), the same body again."""
    while True:
        try:
            r = httpx.post(f"{url}/v1", json=body, timeout=30)
            if r.status_code != 503:
                assert r.status_code == 200, r.text
                return r.json()
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            raise AssertionError("the API did not answer in time")
        time.sleep(0.3)


def _workers(url: str) -> list[dict]:
    try:
        return httpx.get(f"{url}/health/ready", timeout=5).json().get("workers", [])
    except (httpx.HTTPError, ValueError):
        return []


def test_cluster_loses_nothing_and_makes_nothing_twice(tmp_path, tiny_folder):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (CI installs it)")
    pytest.importorskip("redis")
    redis = Redis(tmp_path / "redis")
    redis.start()
    procs: list[subprocess.Popen] = []
    try:
        config = tmp_path / "daguerre.toml"
        config.write_text(
            f'discover = false\nmax_batch = 2\ndevice = "cpu"\n'
            f'[models.tiny]\nid = "daguerre:tiny@1"\npath = "{tiny_folder.model_path}"\n'
            f'[server]\nredis_url = "redis://127.0.0.1:{redis.port}/0"\ndata_dir = "{tmp_path / "data"}"\n'
            "visibility_timeout_s = 2\nmax_deliveries = 2\nmax_queue = 500\ndrain_timeout_s = 60\n"
            "outbound_allow_loopback = true\nwebhook_retry_schedule = [1, 2, 4, 8]\n"
        )
        ports = [free_port(), free_port()]
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        logs = tmp_path / "logs"
        logs.mkdir()
        procs.append(_spawn(["serve", "--config", str(config), "--port", str(ports[0]), "--workers", "2"], tmp_path,
                            logs / "api-a.log"))  # fmt: skip
        procs.append(_spawn(["serve", "--config", str(config), "--port", str(ports[1]), "--workers", "0"], tmp_path,
                            logs / "api-b.log"))  # fmt: skip
        lone_log = logs / "lone.log"
        lone = _spawn(["worker", "--config", str(config), "--name", "lone"], tmp_path, lone_log)
        hooks = Hooks()
        procs.append(lone)
        t_start = time.time()
        for url in urls:
            _ready(url, time.time() + 180)
        deadline = time.time() + 300

        # 60 tasks from four clients through both nodes (and, later, one poison task).
        poison = {"taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": "daguerre:tiny@1",
                  "positivePrompt": f"{POISON} a cat", "width": 128, "height": 128, "steps": 3,
                  "deliveryMethod": "async"}  # fmt: skip
        promised: dict[str, list[str]] = {}
        done: dict[str, dict] = {}
        lock = threading.Lock()

        def client(c: int) -> None:
            mine = []
            for i in range(TASKS // CLIENTS):
                task = {"taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": "daguerre:tiny@1",
                        "positivePrompt": f"client {c} photo {i}", "width": 128, "height": 128, "steps": 3,
                        "numberResults": 1 + (i % 3 == 0), "deliveryMethod": "async",
                        "webhookURL": hooks.url}  # fmt: skip
                url = urls[(c + i) % 2]
                _post(url, [task], deadline)
                got = _post(url, [{"taskType": "getResponse", "taskUUID": task["taskUUID"]}], deadline)
                uuids = [d["imageUUID"] for d in got["data"]]
                with lock:
                    promised[task["taskUUID"]] = uuids
                mine.append((task["taskUUID"], url, task["numberResults"]))
            for task_uuid, url, n in mine:  # poll each to its end
                while True:
                    got = _post(url, [{"taskType": "getResponse", "taskUUID": task_uuid}], deadline)
                    items = got.get("data", [])
                    if got.get("errors") or (len(items) == n and all(d.get("status") == "success" for d in items)):
                        with lock:
                            done[task_uuid] = got
                        break
                    time.sleep(0.2)

        threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(CLIENTS)]
        for t in threads:
            t.start()

        def finished() -> int:
            with lock:
                return len(done)

        def wait_for(n: int) -> None:
            while finished() < n and time.time() < deadline:
                time.sleep(0.1)

        # 1. SIGKILL a busy pool worker mid-job; serve starts it again.
        wait_for(0)
        victim = None
        while victim is None and time.time() < deadline:
            victim = next((w for w in _workers(urls[0]) if w["busy"] and w["id"] != "lone"), None)
            time.sleep(0.05)
        os.kill(victim["pid"], signal.SIGKILL)
        t_kill = time.time()
        back = None
        while back is None and time.time() < deadline:
            back = next((w for w in _workers(urls[0]) if w["id"] == victim["id"] and w["pid"] != victim["pid"]
                         and w["ready"]), None)  # fmt: skip
            time.sleep(0.2)
        worker_recovery = time.time() - t_kill

        # 2. Restart Redis mid-run (AOF on).
        wait_for(15)
        assert finished() < TASKS
        redis.stop()
        time.sleep(1.0)
        redis.start()
        t_redis = time.time()

        # 3. SIGTERM the lone worker while it is busy: it finishes its job and exits 0.

        def lone_has_worked() -> bool:
            return any('"task ' in line and " success in " in line for line in lone_log.read_text().splitlines())

        give_up = time.time() + 60
        while time.time() < give_up and not (lone_has_worked() and any(w["id"] == "lone" and w["busy"]
                                                                        for w in _workers(urls[1]))):  # fmt: skip
            time.sleep(0.02)
        assert finished() < TASKS, "the lone worker was never seen busy while work remained"
        lone.send_signal(signal.SIGTERM)
        assert lone.wait(60) == 0
        last = [json.loads(line) for line in lone_log.read_text().splitlines() if line.startswith("{")]
        ended = [e["message"] for e in last if e["message"].startswith("task ")][-1]
        assert ended.split()[2] == "success", ended  # its last job finished (not dropped at the signal)

        # 4. A poison task: it crashes every worker that takes it (only the pool's now, which start again).
        _post(urls[1], [poison], deadline)

        for t in threads:
            t.join(max(1.0, deadline - time.time()))
        redis_recovery = time.time() - t_redis
        assert len(done) == TASKS, f"{len(done)} of {TASKS} tasks finished"

        # Every task: its images, exactly once, under the imageUUIDs promised before it ran.
        duplicates = lost = images = 0
        seen: set[str] = set()
        for task_uuid, got in done.items():
            assert not got.get("errors"), got
            made = [d["imageUUID"] for d in got["data"]]
            images += len(made)
            duplicates += len(made) - len(set(made)) + len(seen & set(made))
            seen |= set(made)
            lost += len(set(promised[task_uuid]) - set(made))
            assert sorted(made) == sorted(promised[task_uuid])
            for d in got["data"]:
                assert httpx.get(d["imageURL"], timeout=10).status_code == 200
        assert duplicates == 0 and lost == 0

        # Every image's webhook: refused once, retried from the outbox by whichever process held it, acknowledged
        # exactly once (a killed worker's and a Redis restart's owed retries included).
        while len(hooks.acked) < images and time.time() < deadline:
            time.sleep(0.2)
        acked = [u for uuids in hooks.acked.values() for u in uuids]
        hooks_lost, hooks_twice = len(seen - set(acked)), len(acked) - len(set(acked))
        assert hooks_lost == 0 and hooks_twice == 0 and len(hooks.acked) == images, (hooks_lost, hooks_twice)
        hooks.server.shutdown()

        # The poison task: tried max_deliveries (2) times, then the dead-letter stream and a clear error.
        while True:  # it may still be between its crashes
            r = httpx.post(f"{urls[0]}/v1", json=[{"taskType": "getResponse", "taskUUID": poison["taskUUID"]}])
            if r.status_code != 200 or time.time() > deadline:
                break
            time.sleep(0.3)
        assert r.status_code == 500 and r.json()["errors"][0]["code"] == "taskCrashedWorker", r.text
        import redis as redis_py

        dead = redis_py.Redis(port=redis.port).xrange("daguerre:jobs:dead")
        assert len(dead) == 1 and poison["taskUUID"].encode() in dead[0][1][b"m"]
        ready = 'daguerre_workers{state="ready"} 2.0'  # the pool's two, started again after the poison
        for _ in range(300):
            page = httpx.get(f"{urls[1]}/metrics", timeout=10).text  # any node answers for the whole deployment
            if ready in page:
                break
            time.sleep(0.2)
        assert "daguerre_dead_letters 1.0" in page and 'daguerre_jobs{status="success"} 60.0' in page
        assert ready in page
        print(f"\ncluster: {len(done)} tasks, {images} images, duplicates {duplicates}, lost {lost}, "
              f"dead letters {len(dead)}, webhooks {len(hooks.acked)} acknowledged once each (lost 0, twice 0, "
              f"{sum(hooks.tries.values())} tries), worker back {worker_recovery:.1f} s after SIGKILL, all done "
              f"{redis_recovery:.1f} s after the Redis restart, {time.time() - t_start:.0f} s in all")  # fmt: skip
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        redis.stop()
