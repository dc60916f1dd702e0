"""`daguerre serve`: the task API, with worker processes on this machine (one per device, restarted if one dies).

Embedded default: the SQLite file in the data folder holds jobs, queue and change feed; images on local disk.
`--redis URL` shares jobs with other API nodes and `daguerre worker` processes on other machines (docs/deploy.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from daguerre.cli.common import (
    ConfigOpt,
    DeviceOpt,
    DtypeOpt,
    OffloadOpt,
    T5Opt,
    err,
    fail,
    load_settings,
    validated,
    warn,
)
from daguerre.cli.worker import RedisOpt
from daguerre.errors import DaguerreError


def _model_entry(value: str) -> tuple[str, dict]:
    """--model ID=PATH: an AIR-style id becomes the id (short name from the file), anything else the name."""
    from daguerre.engine.models.catalog import AIR_RE, slug

    ref, sep, path = value.partition("=")
    if not sep or not ref or not path:
        raise DaguerreError(f"--model takes ID=PATH, got {value!r}", parameter="model", code="invalidParameter")
    if AIR_RE.match(ref):
        return slug(Path(path).stem if path.endswith(".safetensors") else Path(path).name), {"id": ref, "path": path}
    return ref, {"path": path}


def serve(
    host: Annotated[str | None, typer.Option(help="bind address [127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="port [8000]")] = None,
    config: ConfigOpt = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="serve ID=PATH without a config file (repeatable)")
    ] = None,
    api_key: Annotated[
        list[str] | None,
        typer.Option("--api-key", help="accept this key (repeatable; also env DAGUERRE_API_KEYS, comma-separated)"),
    ] = None,
    demo: Annotated[
        bool,
        typer.Option(
            "--demo",
            help="build and serve a small random-weight model (images are noise) to try the API without weights",
        ),
    ] = False,
    data_dir: Annotated[Path | None, typer.Option(help="jobs, keys, images [./daguerre-data]")] = None,
    preload: Annotated[
        list[str] | None,
        typer.Option(help="load (and compile) this model before reporting ready (repeatable; --demo: the demo)"),
    ] = None,
    profile: Annotated[str | None, typer.Option(help="speed profile: exact | fast | turbo [settings: exact]")] = None,
    offload: OffloadOpt = None,
    t5: T5Opt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    base: Annotated[str | None, typer.Option(help="folder lending text encoders/VAE to single-file models")] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="worker processes to run here [one per GPU, one on a CPU machine]; 0 = API only"),
    ] = None,
    redis: RedisOpt = None,
):
    """Serve the Runware-compatible task API (REST POST /v1, WebSocket /v1)."""
    import os

    import uvicorn

    from daguerre.api.app import create_app
    from daguerre.config import ServerSettings
    from daguerre.services import build_catalog, build_server

    try:
        settings = load_settings(config, device=device, dtype=dtype, base_model=base, offload=offload, t5=t5,
                             profile=profile)  # fmt: skip
        flags = {
            "host": host,
            "port": port,
            "data_dir": data_dir,
            "preload": preload,
            "workers": workers,
            "redis_url": redis,
        }
        given = {k: v for k, v in flags.items() if v is not None}
        srv = validated(ServerSettings, {**settings.server.model_dump(), **given})
        # The port first: a taken port is said before any model is looked at or anything is claimed.
        sock = _bind(srv.host, srv.port)
        env_keys = [k.strip() for k in os.environ.get("DAGUERRE_API_KEYS", "").split(",") if k.strip()]
        srv.api_keys = [*srv.api_keys, *env_keys, *(api_key or [])]
        models = dict(settings.models)
        for value in model or []:
            name, entry = _model_entry(value)
            models[name] = entry
        if demo:
            from daguerre.testing.tiny import build

            folder = srv.data_dir / "demo-model"
            if not (folder / "model_index.json").exists():
                err.print("building the demo model (random weights, about 1 MB)...")
                build(folder, layout="folder", seed=0)
            models = {
                "demo": {"id": "daguerre:demo@1", "path": str(folder.resolve())},
                **demo_extras(srv.data_dir, folder),
            }
        update = {"server": srv, "models": models, "discover": settings.discover and not demo}
        if demo and "face-yolo" in models:
            update["faces"] = settings.faces.model_copy(update={"detector": "face-yolo"})
        settings = settings.model_copy(update=update)
        from daguerre.logs import quiet_libraries

        quiet_libraries()
        # The server's catalog takes catalog keys only, unless the operator allows paths (server.allow_model_paths).
        catalog = build_catalog(settings, allow_paths=srv.allow_model_paths)
        if not catalog.available():
            raise DaguerreError(
                "no models to serve: pass --model ID=PATH, a --config with [models.*], or --demo",
                parameter="model",
                code="modelNotFound",
            )
        for spec in catalog:
            if spec.missing:
                warn(spec.missing)
        services = build_server(settings, worker=False, catalog=catalog, demo=demo)
        services.pool = worker_pool(settings)
        application = create_app(services)
    except DaguerreError as e:
        fail(e)
    shown = "127.0.0.1" if srv.host in ("0.0.0.0", "::", "") else srv.host
    tls = srv.tls_certfile is not None
    base_url = f"{'https' if tls else 'http'}://{shown}:{sock.getsockname()[1]}"
    pool = services.pool
    where = f"{len(pool)} worker process(es)" if len(pool) else "no worker here: `daguerre worker` runs them"
    err.print(
        f"serving {len(catalog)} model(s){' [demo: random weights]' if demo else ''}, {where}\n"
        f"  open      {base_url}/\n"
        f"  task API  {base_url}/v1 (REST) and {'wss' if tls else 'ws'}://{shown}:{sock.getsockname()[1]}/v1 "
        "(WebSocket)\n"
        f"  also      eachlabs /v1/prediction, Replicate /v1/predictions, ModelsLab /api/v6/images/ (docs/api.md)\n"
        f"  API docs  {base_url}/docs (OpenAPI: {base_url}/openapi.json)\n"
        "  stop with Ctrl+C (or SIGTERM): the running job finishes first",
        highlight=False,
        markup=False,
    )
    from daguerre.logs import configure

    configure()
    config_ = uvicorn.Config(
        application,
        log_config=None,
        host=srv.host,
        port=srv.port,
        log_level="info",
        timeout_graceful_shutdown=int(srv.drain_timeout_s) or None,
        ws_max_size=srv.max_body_bytes,
        ssl_certfile=srv.tls_certfile,
        ssl_keyfile=srv.tls_keyfile,
    )
    uvicorn.Server(config_).run(sockets=[sock])


def devices(settings) -> list[str]:
    """The devices this machine's workers run on: every CUDA GPU when the device is cuda (or left to choose),
    else the one device."""
    device = settings.device
    if device in (None, "auto", "cuda"):
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count() > 1:
            return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [device] if device else []


def worker_pool(settings):
    """One `daguerre worker` process per device (or server.workers of them, spread over the devices), running
    with this server's settings (written to the data folder, readable by this user only)."""
    import socket
    import sys

    from daguerre.jobs.pool import WorkerPool, child_env

    srv = settings.server
    count = srv.workers
    if count == 0:
        return WorkerPool({})
    found = devices(settings)
    count = count if count is not None else max(1, len(found))
    path = srv.data_dir / "worker-settings.json"
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(settings.model_dump_json())
    host = socket.gethostname()
    argv = {}
    for i in range(count):
        name = f"{host}-{srv.port}-w{i}"
        argv[name] = [sys.executable, "-m", "daguerre", "worker", "--settings-file", str(path.resolve()),
                      "--name", name, *(["--device", found[i % len(found)]] if found else [])]  # fmt: skip
    cpu = "cpu" if found == ["cpu"] or (not found and not _has_accelerator()) else None
    return WorkerPool(argv, env=child_env(count, cpu))


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or torch.backends.mps.is_available()


def _bind(host: str, port: int):
    """A listening socket on host:port, or a DaguerreError saying the port is taken (and what to do)."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise DaguerreError(f"cannot bind to host {host!r}: {e.strerror}", parameter="host",
                            code="invalidParameter") from e  # fmt: skip
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise DaguerreError(
                f"port {port} on {host} is already in use (another server?); choose a free one with --port",
                parameter="port",
                code="invalidParameter",
            ) from e
        raise DaguerreError(f"cannot listen on {host}:{port}: {e.strerror}", parameter="port",
                            code="invalidParameter") from e  # fmt: skip
    sock.set_inheritable(True)
    return sock


def demo_extras(data_dir: Path, model_folder: Path) -> dict:
    """The demo's tiny upscaler, under the reference API's upscaler ids (so hiresFix with any of them works),
    the LayerDiffuse LoRA and transparent VAE under `runware:120@2` / `runware:120@4` (so layerDiffuse works),
    tiny PuLID, EVA-CLIP and antelopev2 files (so puLID works),
    and, with the `faces` extra, a tiny YOLO face model that ultralytics' face enhancement uses."""
    from daguerre.engine.models.catalog import LAYER_IDS, UPSCALER_IDS
    from daguerre.testing.tiny import build_face_yolo, build_layer_diffuse, build_upscaler

    up = data_dir / "demo-upscaler" / "RealESRGAN_x4plus.pth"
    if not up.exists():
        build_upscaler(up)
    ids = list(UPSCALER_IDS.values())
    extras = {"demo-upscaler": {"id": ids[0], "path": str(up.resolve()), "kind": "upscaler", "aliases": ids[1:]}}
    from daguerre.testing.tiny import build_controlnet

    control = data_dir / "demo-controlnet"
    if not (control / "config.json").exists():
        build_controlnet(control)
    extras["demo-controlnet"] = {"id": "daguerre:demo-controlnet@1", "path": str(control.resolve())}
    layers = data_dir / "demo-layers"
    lora, vae = layers / "layerlora.safetensors", layers / "TransparentVAE.pth"
    if not (lora.exists() and vae.exists()):
        build_layer_diffuse(layers, model_folder)
    extras["demo-layer-lora"] = {"id": LAYER_IDS["layerlora"], "path": str(lora.resolve()), "kind": "lora"}
    extras["demo-transparent-vae"] = {"id": LAYER_IDS["transparentvae"], "path": str(vae.resolve()),
                                      "kind": "transparentvae"}  # fmt: skip
    import importlib.util

    try:  # puLID's three files (its face analysis runs on onnxruntime: the `safety` extra)
        from daguerre.testing.identity import build_identity

        marker = data_dir / "demo-identity" / ".built"
        names = {"pulid": "models/pulid/pulid_flux_v0.9.1.safetensors",
                 "evaclip": "models/clip/EVA02_CLIP_L_336_psz14_s6B.pt",
                 "faceanalysis": "models/insightface/models/antelopev2",
                 "faceparsing": "models/facexlib/parsing_bisenet.pth"}  # fmt: skip
        if not marker.exists():
            build_identity(data_dir / "demo-identity", model_folder)
            marker.touch()
        for kind, rel in names.items():
            path = (data_dir / "demo-identity" / rel).resolve()
            extras[f"demo-{kind}"] = {"id": f"daguerre:demo-{kind}@1", "path": str(path), "kind": kind}
    except Exception as e:  # noqa: BLE001 - a missing optional package must not stop the demo
        warn(f"no demo puLID files: {e}")
    if importlib.util.find_spec("ultralytics") is not None:
        yolo = data_dir / "demo-faces" / "face_yolov8n.pt"
        try:
            if not yolo.exists():
                build_face_yolo(yolo, config_dir=data_dir / "demo-faces" / ".ultralytics")
            extras["face-yolo"] = {"id": "daguerre:face-yolo@1", "path": str(yolo.resolve()), "kind": "detector"}
        except Exception as e:  # noqa: BLE001 - a broken ultralytics install must not stop the demo
            warn(f"no demo face model: ultralytics did not load ({e})")
    return extras
