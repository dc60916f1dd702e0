"""`daguerre worker`: a process that takes jobs from the queue and runs them on one device.

`daguerre serve` starts these by itself on its own machine (one per device). On other machines, start one per
GPU with the same `--redis` URL (and results storage) as the API nodes: docs/deploy.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from daguerre.cli.common import (
    ConfigOpt,
    DataDirOpt,
    DeviceOpt,
    DtypeOpt,
    OffloadOpt,
    T5Opt,
    fail,
    load_settings,
    validated,
)
from daguerre.errors import DaguerreError

RedisOpt = Annotated[
    str | None,
    typer.Option("--redis", help="Redis URL shared with the API nodes (redis://host:6379/0) [settings: none: the "
                 "SQLite file in --data-dir, one machine]"),
]  # fmt: skip


def worker(
    config: ConfigOpt = None,
    redis: RedisOpt = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    offload: OffloadOpt = None,
    t5: T5Opt = None,
    profile: Annotated[str | None, typer.Option(help="speed profile: exact | fast | turbo [settings: exact]")] = None,
    preload: Annotated[
        list[str] | None, typer.Option(help="load (and compile) this model before taking jobs (repeatable)")
    ] = None,
    max_batch: Annotated[
        int | None, typer.Option(min=1, max=64, help="images one forward pass may carry [settings: per device]")
    ] = None,
    name: Annotated[str | None, typer.Option(help="this worker's name in the queue and /health/ready")] = None,
    settings_file: Annotated[Path | None, typer.Option(hidden=True, help="settings as JSON (from serve)")] = None,
):
    """Take jobs from the queue and run them on one device until SIGTERM (the running job finishes first)."""
    import signal

    from daguerre.config import ServerSettings, Settings
    from daguerre.logs import configure, quiet_libraries
    from daguerre.services import build_catalog, build_engine, build_server

    try:
        if settings_file is not None:
            settings = Settings.model_validate_json(settings_file.read_text())
            flags = {"device": device, "dtype": dtype}
            settings = settings.model_copy(update={k: v for k, v in flags.items() if v is not None})
        else:
            settings = load_settings(config, device=device, dtype=dtype, offload=offload, t5=t5, profile=profile)
        given = {k: v for k, v in {"data_dir": data_dir, "redis_url": redis}.items() if v is not None}
        srv = validated(ServerSettings, {**settings.server.model_dump(), **given})
        settings = settings.model_copy(update={"server": srv, **({"max_batch": max_batch} if max_batch else {})})
        quiet_libraries()
        catalog = build_catalog(settings, allow_paths=srv.allow_model_paths)
        if not catalog.available():
            raise DaguerreError("no models to run: give the same --config (models) as the API nodes",
                                parameter="model", code="modelNotFound")  # fmt: skip
        services = build_server(settings, engine=build_engine(settings, catalog), worker_name=name)
    except DaguerreError as e:
        fail(e)
    configure()
    runner = services.worker
    if settings_file is not None:  # started by serve: stop with it, even if it was killed
        import os

        runner.parent = os.getppid()

    def drain(signum, _frame) -> None:
        runner.drain()

    signal.signal(signal.SIGTERM, drain)
    signal.signal(signal.SIGINT, drain)
    try:
        runner.serve_forever(preload or settings.server.preload)
    finally:
        services.close()
