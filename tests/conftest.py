"""Shared fixtures: tiny random FLUX.1 checkpoints built once per test session, offline."""

from __future__ import annotations

import os

import pytest
import torch

# No test may reach the network: make any accidental hub access fail fast.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Under pytest-xdist the cores are shared by the workers: one worker's torch must not take them all.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    from daguerre.testing.tiny import build

    return build(tmp_path_factory.mktemp("tiny-folder"), layout="folder", seed=0)


@pytest.fixture(scope="session")
def tiny_single(tmp_path_factory):
    from daguerre.testing.tiny import build

    return build(tmp_path_factory.mktemp("tiny-single"), layout="single-file", seed=0)


@pytest.fixture(scope="session")
def tiny_schnell(tmp_path_factory):
    from daguerre.testing.tiny import build

    return build(tmp_path_factory.mktemp("tiny-schnell"), layout="folder", seed=0, kind="schnell")


@pytest.fixture(scope="session")
def settings_factory(tmp_path_factory):
    from daguerre.config import Settings

    cache = tmp_path_factory.mktemp("cache")

    def make(**kw):
        kw.setdefault("discover", False)
        kw.setdefault("cache_dir", cache)
        return Settings(**kw)

    return make


@pytest.fixture(scope="session")
def engine(settings_factory, tiny_single):
    """One engine for the session; models stay resident across tests, as in a server."""
    from daguerre.services import build_engine

    return build_engine(settings_factory(base_model=str(tiny_single.base_path), max_batch=4))


@pytest.fixture(scope="session")
def reference_pipes(tiny_folder):
    """diffusers' own pipelines loaded straight from the tiny folder: the numeric reference."""
    from diffusers import FluxImg2ImgPipeline, FluxInpaintPipeline, FluxPipeline

    pipes = {}
    for name, cls in (("txt2img", FluxPipeline), ("img2img", FluxImg2ImgPipeline), ("inpaint", FluxInpaintPipeline)):
        pipes[name] = cls.from_pretrained(tiny_folder.model_path)
        pipes[name].set_progress_bar_config(disable=True)
    return pipes


class LiveServer:
    """A real uvicorn server on 127.0.0.1 (random port) in a background thread; stops with the fixture."""

    def __init__(self, app, port: int):
        import threading

        import uvicorn

        self.app = app
        self.services = app.state.services  # what the server runs on (services.build_server)
        self.port = port
        self.url = f"http://127.0.0.1:{port}/v1"
        self.ws_url = f"ws://127.0.0.1:{port}/v1"
        srv = self.services.settings.server
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=port,
                log_level="warning",
                ws_max_size=64 * 2**20,
                ssl_certfile=srv.tls_certfile,
                ssl_keyfile=srv.tls_keyfile,
                timeout_graceful_shutdown=5,
            )  # fmt: skip
        )
        self.base = f"{'https' if srv.tls_certfile else 'http'}://127.0.0.1:{port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        import time

        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("live server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def make_server(tiny_folder, tmp_path_factory):
    """Build a live server on the tiny model: make_server(**server_settings) -> context manager."""
    from daguerre.api.app import create_app
    from daguerre.config import ServerSettings, Settings
    from daguerre.services import build_server

    cache = tmp_path_factory.mktemp("server-cache")

    def make(data_dir=None, extra_models=None, safety=None, aliases=(), **server):
        port = free_port()
        server.setdefault("data_dir", data_dir or tmp_path_factory.mktemp("server-data"))
        settings = Settings(
            discover=False,
            cache_dir=cache,
            max_batch=1,
            models={
                "tiny": {"id": "daguerre:tiny@1", "path": str(tiny_folder.model_path), "aliases": list(aliases)},
                **(extra_models or {}),
            },  # fmt: skip
            server=ServerSettings(port=port, **server),
            **({"safety": safety} if safety is not None else {}),
        )
        return LiveServer(create_app(build_server(settings)), port)

    return make


def inference_task(**fields) -> dict:
    """An imageInference task for the tiny server model, with a fresh taskUUID; fields override."""
    import uuid

    task = {
        "taskType": "imageInference",
        "taskUUID": str(uuid.uuid4()),
        "model": "daguerre:tiny@1",
        "positivePrompt": "portrait of a woman, soft light",
        "width": 128,
        "height": 128,
        "steps": 2,
    }
    task.update(fields)
    return task


@pytest.fixture(scope="session")
def tiny_fill(tmp_path_factory):
    from daguerre.testing.tiny import build

    return build(tmp_path_factory.mktemp("tiny-fill"), layout="folder", seed=0, kind="fill")


@pytest.fixture(scope="session")
def tiny_kontext(tmp_path_factory):
    from daguerre.testing.tiny import build

    return build(tmp_path_factory.mktemp("tiny-kontext"), layout="folder", seed=0, kind="kontext")


@pytest.fixture(scope="session")
def tiny_control(tmp_path_factory):
    from daguerre.testing.tiny import build

    return build(tmp_path_factory.mktemp("tiny-canny"), layout="folder", seed=0, kind="control")


@pytest.fixture(scope="session")
def tiny_controlnets(tmp_path_factory):
    from daguerre.testing.tiny import build_controlnet

    root = tmp_path_factory.mktemp("controlnets")
    return [build_controlnet(root / f"cn{i}", seed=i + 1) for i in range(2)]


@pytest.fixture(scope="session")
def tiny_ip_adapter(tmp_path_factory):
    from daguerre.testing.tiny import build_ip_adapter

    return build_ip_adapter(tmp_path_factory.mktemp("ip-adapter"), seed=1)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on the test item (item.rep_call...), for fixtures that keep evidence of a failure."""
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep
