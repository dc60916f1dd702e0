"""`daguerre serve` as a user runs it: the README example, and SIGTERM draining the running job."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

README = Path(__file__).parents[1] / "README.md"


def _start(cmd: str, cwd: Path, port: int) -> subprocess.Popen:
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        HF_HUB_OFFLINE="1",
        DAGUERRE_CACHE_DIR=str(cwd / "cache"),
    )
    proc = subprocess.Popen(
        "exec " + cmd.replace(".venv/bin/", ""),
        shell=True,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stdout.read()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise AssertionError("server did not become ready")


def _stop(proc: subprocess.Popen, timeout: float = 60) -> str:
    """SIGTERM, wait, and return the log; asserts a graceful stop. uvicorn re-raises the signal after its
    graceful shutdown, so the exit status is -SIGTERM by design (0 on older versions)."""
    os.killpg(proc.pid, signal.SIGTERM)
    return _finish(proc, timeout)


def _finish(proc: subprocess.Popen, timeout: float) -> str:
    """Wait for a server already sent SIGTERM (a second signal would force-exit it) and check it stopped cleanly."""
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    log = proc.stdout.read()
    assert code in (0, -signal.SIGTERM) and "Application shutdown complete" in log, log[-3000:]
    return log


def _photo() -> str:
    """A base64 PNG to use as a reference face (the demo's tiny detector finds one in any picture)."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.random.RandomState(0).rand(96, 96, 3) * 255).astype("uint8")).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_readme_serve_example(tmp_path):
    text = README.read_text()
    serve = next(
        ln
        for b in re.findall(r"```bash\n(.*?)```", text, re.S)
        for ln in b.splitlines()
        if "daguerre serve --demo" in ln
    )
    client = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "Runware(" in b)
    port = free_port()
    proc = _start(serve.replace("8000", str(port)), tmp_path, port)
    try:
        health = httpx.get(f"http://127.0.0.1:{port}/health/ready").json()
        assert health["demo"] is True and health["models"][0]["demo"] is True
        script = tmp_path / "client.py"
        script.write_text(client.replace("8000", str(port)))
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        lines = out.stdout.strip().splitlines()
        assert [ln.split()[0] for ln in lines] == ["42", "43"] and all("/v1/images/" in ln for ln in lines)
        others = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "replicate.Client(" in b)
        script.write_text(others.replace("8000", str(port)))
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        lines = out.stdout.strip().splitlines()
        assert [ln.split()[0] for ln in lines] == ["replicate", "eachlabs", "modelslab"], lines
        for ln in lines:
            assert httpx.get(ln.split()[1]).status_code == 200
        # The demo also carries the reference's LayerDiffuse and upscaler ids, so those examples run as written.
        demo = {"taskType": "imageInference", "model": "daguerre:demo@1", "positivePrompt": "a perfume bottle",
                "width": 128, "height": 128, "steps": 2, "outputType": "base64Data"}  # fmt: skip
        tasks = [
            {**demo, "taskUUID": str(uuid.uuid4()), "outputFormat": "png", "advancedFeatures": {"layerDiffuse": True}},
            {**demo, "taskUUID": str(uuid.uuid4()), "hiresFix": {"model": "runware:504@1", "steps": 2}},
            {**demo, "taskUUID": str(uuid.uuid4()), "puLID": {"images": [_photo()], "idWeight": 1}},
        ]
        r = httpx.post(f"http://127.0.0.1:{port}/v1", json=tasks, headers={"Authorization": "Bearer my-secret-key"},
                       timeout=120)  # fmt: skip
        assert r.status_code == 200, r.text
        import base64
        import io

        from PIL import Image

        got = {d["taskUUID"]: Image.open(io.BytesIO(base64.b64decode(d["imageBase64Data"]))) for d in r.json()["data"]}
        layered, fixed, identity = (got[t["taskUUID"]] for t in tasks)
        assert layered.mode == "RGBA" and fixed.size == (128, 128) and identity.size == (128, 128)
    finally:
        _stop(proc)


def test_sigterm_lets_the_running_job_finish_and_refuses_new_work(tmp_path):
    port = free_port()
    proc = _start(f"daguerre serve --demo --port {port} --api-key k1", tmp_path, port)
    t = {
        "taskType": "imageInference",
        "taskUUID": str(uuid.uuid4()),
        "model": "daguerre:demo@1",
        "positivePrompt": "a slow one",
        "width": 512,
        "height": 512,
        "steps": 30,
        "deliveryMethod": "async",
    }
    r = httpx.post(f"http://127.0.0.1:{port}/v1", json=[t], headers={"Authorization": "Bearer k1"}, timeout=30)
    assert r.status_code == 200
    db = tmp_path / "daguerre-data" / "jobs.sqlite3"

    def status():
        with sqlite3.connect(db) as c:
            return c.execute("SELECT status FROM jobs WHERE task_uuid=?", (t["taskUUID"],)).fetchone()[0]

    deadline = time.time() + 60
    while status() != "running" and time.time() < deadline:
        time.sleep(0.1)
    assert status() == "running"
    os.killpg(proc.pid, signal.SIGTERM)
    time.sleep(1.0)
    with pytest.raises((ConnectionRefusedError, OSError)):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert proc.poll() is None or status() == "success"  # still finishing the job, not killed
    log = _finish(proc, 120)
    assert status() == "success", "the running job was drained to completion"
    assert '"taskUUID": "' + t["taskUUID"] in log, "logs are JSON lines carrying the taskUUID"
