"""The composition root: settings -> catalog, engine, stores, queue, job service, delivery, worker, adapters.

`daguerre serve`, the CLI, the benchmarks and the tests build what they need here and nowhere else, so a new
process kind (a separate worker, an API node without a model) is a new combination of these builders.
Nothing is built at import time; each builder takes the settings it is given.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from daguerre.config import Settings

if TYPE_CHECKING:
    from daguerre.api.eachlabs import EachLabs
    from daguerre.api.intake import Intake
    from daguerre.api.keys import KeyStore
    from daguerre.api.modelslab import ModelsLab
    from daguerre.api.replicate import Replicate
    from daguerre.api.runware import Runware
    from daguerre.engine.engine import Engine
    from daguerre.engine.models.catalog import Catalog
    from daguerre.jobs.characters import CharacterStore
    from daguerre.jobs.delivery import DeliveryService
    from daguerre.jobs.outbound import OutboundClient
    from daguerre.jobs.pool import WorkerPool
    from daguerre.jobs.service import JobService
    from daguerre.jobs.store import JobStore
    from daguerre.jobs.worker import Worker
    from daguerre.storage import ResultStore, UrlSigner


def build_catalog(settings: Settings, *, allow_paths: bool = True) -> Catalog:
    """The model catalog (reads configs and headers only: no torch, no weights)."""
    from daguerre.engine.models.catalog import Catalog

    return Catalog.from_settings(settings, allow_paths=allow_paths)


def build_engine(settings: Settings, catalog: Catalog | None = None) -> Engine:
    """An engine on the settings' device, with its resident-model manager."""
    from daguerre.engine.engine import Engine
    from daguerre.engine.models.resident import ModelManager

    manager = ModelManager(
        catalog=catalog if catalog is not None else build_catalog(settings),
        device=settings.device,
        dtype=settings.dtype,
        memory_budget_gb=settings.memory_budget_gb,
        cache_dir=settings.cache_dir,
        profile=settings.profile,
        compile_=settings.compile,
        offload=settings.offload,
        t5=settings.t5,
        attention=settings.attention,
    )
    return Engine(models=manager, max_batch=settings.max_batch, default_negative=settings.default_negative_prompt,
                  safety=build_safety(settings), upscaler=settings.upscaler,
                  face_detector=settings.faces.detector)  # fmt: skip


def build_safety(settings: Settings):
    """The configured safety checker (cheap: its model loads on first use)."""
    from daguerre.engine.features.safety import SafetyChecker

    safety = settings.safety
    return SafetyChecker(checker=safety.checker, path=safety.path, threshold=safety.threshold, action=safety.action)


def redis_client(url: str):
    """A redis-py client for `server.redis_url` (the `redis` extra), or a DaguerreError saying what is missing."""
    from daguerre.errors import DaguerreError

    try:
        import redis
    except ImportError as e:
        raise DaguerreError("server.redis_url needs redis-py: pip install 'daguerre[redis]'", parameter="redis",
                            code="invalidParameter") from e  # fmt: skip
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=15)
        client.ping()
    except (ValueError, redis.RedisError) as e:
        raise DaguerreError(f"cannot reach Redis at {url}: {e}", parameter="redis", code="invalidParameter") from e
    return client


def build_results(settings: Settings):
    """Where images go: a folder (the data folder's, or a shared one) or an S3-compatible bucket."""
    from daguerre.errors import DaguerreError
    from daguerre.storage import LocalResultStore, S3ResultStore

    server = settings.server
    if server.results == "s3":
        try:
            import boto3  # noqa: F401 - the `s3` extra
        except ImportError as e:
            raise DaguerreError("server.results = s3 needs boto3: pip install 'daguerre[s3]'", parameter="results",
                                code="invalidParameter") from e  # fmt: skip
        return S3ResultStore(server.s3_bucket, prefix=server.s3_prefix, endpoint_url=server.s3_endpoint_url,
                             region=server.s3_region)  # fmt: skip
    return LocalResultStore(server.results_dir or server.data_dir / "images")


def build_backends(settings: Settings, *, consumer: str = "api"):
    """The job store, queue, change feed and delivery outbox: on Redis when `server.redis_url` is set (many
    machines), else the SQLite file in the data folder (one machine, any number of processes). `consumer` names
    this process in the stream's consumer group (a worker's id)."""
    from daguerre.jobs.feed import RedisFeed, SQLiteFeed
    from daguerre.jobs.outbox import SQLiteOutbox
    from daguerre.jobs.queue import SQLiteQueue
    from daguerre.jobs.store import SQLiteJobStore

    server = settings.server
    if server.redis_url:
        from daguerre.jobs.redis_outbox import RedisOutbox
        from daguerre.jobs.redis_queue import RedisStreamQueue
        from daguerre.jobs.redis_store import RedisJobStore

        client, p = redis_client(server.redis_url), server.redis_prefix
        queue = RedisStreamQueue(client, key=f"{p}:jobs", consumer=consumer, maxsize=server.max_queue,
                                 visibility_s=server.visibility_timeout_s)  # fmt: skip
        feed, outbox = RedisFeed(client, channel=f"{p}:changes"), RedisOutbox(client, key=f"{p}:outbox")
        return RedisJobStore(client, prefix=p), queue, feed, outbox
    data = server.data_dir
    data.mkdir(parents=True, exist_ok=True)
    path = data / "jobs.sqlite3"
    store = SQLiteJobStore(path)
    queue = SQLiteQueue(path, maxsize=server.max_queue, visibility_s=server.visibility_timeout_s)
    return store, queue, SQLiteFeed(path), SQLiteOutbox(path)


def server_secret(data_dir: Path) -> bytes:
    """The server's own secret (image-link signatures, webhook secrets), made once per data folder."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "url-secret"
    if not path.exists():
        path.write_bytes(secrets.token_bytes(32))
        path.chmod(0o600)
    return path.read_bytes()


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Services:
    """Everything one server process runs, built by `build_server`."""

    settings: Settings
    engine: Engine | None  # the model side when this process runs its own worker thread; None: worker processes
    catalog: Catalog  # the models served (read at submission)
    store: JobStore  # job records
    jobs: JobService  # submission, lookups, change events (over `store` and the queue)
    results: ResultStore  # generated images and uploaded inputs
    keys: KeyStore
    characters: CharacterStore
    secret: bytes  # the server secret: image-link signatures, webhook secrets
    signer: UrlSigner
    outbound: OutboundClient  # the one guarded client for user-given URLs
    sender: DeliveryService  # webhook and upload sends from the outbox, with retries
    worker: Worker | None  # this process's own worker thread (None: workers are processes)
    intake: Intake  # what every door shares
    runware: Runware  # the Runware task protocol
    eachlabs: EachLabs  # the eachlabs predictions protocol
    replicate: Replicate  # the Replicate predictions protocol
    modelslab: ModelsLab  # the ModelsLab image API
    anonymous: bool  # keyless use allowed
    demo: bool = False  # serving `serve --demo`'s random-weight model (health says so)
    pool: WorkerPool | None = None  # the worker processes `serve` runs on this machine (set by serve)
    lifecycle: dict = field(default_factory=lambda: {"draining": False, "ready": False})

    def close(self) -> None:
        """Stop sending and close the stores; called once when the server stops."""
        self.sender.stop()
        self.sender.outbox.close()
        self.store.close()


def _worker_name() -> str:
    import os
    import socket

    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def build_server(
    settings: Settings,
    *,
    engine: Engine | None = None,
    demo: bool = False,
    worker: bool = True,
    catalog: Catalog | None = None,
    worker_name: str | None = None,
) -> Services:
    """A server's services from its settings: with `worker`, a worker on `engine` (built here when not given)
    that the app runs as a thread, or `daguerre worker` on its own thread; without, an API process that loads
    no model (its workers are other processes) and reads `catalog`."""
    from daguerre.api.eachlabs import EachLabs
    from daguerre.api.intake import Intake
    from daguerre.api.keys import KeyStore
    from daguerre.api.modelslab import ModelsLab
    from daguerre.api.replicate import Replicate
    from daguerre.api.runware import Runware
    from daguerre.jobs.characters import CharacterStore
    from daguerre.jobs.delivery import DeliveryService, ResultDelivery
    from daguerre.jobs.outbound import OutboundClient, OutboundPolicy
    from daguerre.jobs.service import JobService
    from daguerre.jobs.worker import Worker
    from daguerre.storage import UrlSigner

    server = settings.server
    data = server.data_dir
    data.mkdir(parents=True, exist_ok=True)
    if worker and engine is None:
        engine = build_engine(settings, catalog)
    if engine is not None:
        catalog = engine.models.catalog
    elif catalog is None:
        catalog = build_catalog(settings, allow_paths=server.allow_model_paths)
    worker_name = worker_name or _worker_name()
    store, queue, feed, outbox = build_backends(settings, consumer=worker_name if worker else "api")
    jobs = JobService(store=store, queue=queue, feed=feed)
    results = build_results(settings)
    keys = KeyStore(data / "keys.sqlite3", extra_keys=server.api_keys)
    secret = server_secret(data)
    scheme = "https" if server.tls_certfile else "http"
    signer = UrlSigner(secret, server.public_url or f"{scheme}://{server.host}:{server.port}", results=results)
    outbound = OutboundClient(OutboundPolicy(allow_loopback=server.outbound_allow_loopback))
    sender = DeliveryService(outbox=outbox, outbound=outbound, results=results, server_secret=secret,
                             retry_schedule=server.webhook_retry_schedule)  # fmt: skip
    anonymous = server.allow_anonymous
    if anonymous is None:
        anonymous = is_loopback(server.host) and keys.count() == 0
    lifecycle = {"draining": False, "ready": False}
    characters = CharacterStore(data / "jobs.sqlite3")
    intake = Intake(
        settings=settings,
        jobs=jobs,
        results=results,
        signer=signer,
        keys=keys,
        anonymous=anonymous,
        is_draining=lambda: lifecycle["draining"],
        outbound=outbound,
        catalog=catalog,
        characters=characters,
        safety_available=engine.safety_available if engine is not None else build_safety(settings).available,
    )
    runware, eachlabs, replicate, modelslab = Runware(intake), EachLabs(intake), Replicate(intake), ModelsLab(intake)
    doors = {"runware": runware, "eachlabs": eachlabs, "replicate": replicate, "modelslab": modelslab}
    deliver = ResultDelivery(sender=sender, bodies={name: door.webhook_body for name, door in doors.items()},
                             attempts={"eachlabs": 3})  # fmt: skip
    runner = None
    if worker:
        runner = Worker(engine=engine, jobs=jobs, results=results, default_ttl=server.default_ttl,
                        image_limits=settings.image_limits, on_event=deliver, max_deliveries=server.max_deliveries,
                        route_wait_s=server.route_wait_s, name=worker_name)  # fmt: skip
    return Services(settings=settings, engine=engine, catalog=catalog, store=store, jobs=jobs, results=results,
                    keys=keys, characters=characters, secret=secret, signer=signer, outbound=outbound, sender=sender,
                    worker=runner, intake=intake, runware=runware, eachlabs=eachlabs, replicate=replicate,
                    modelslab=modelslab, anonymous=anonymous, demo=demo, lifecycle=lifecycle)  # fmt: skip
