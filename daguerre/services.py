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
    from daguerre.jobs.service import JobService
    from daguerre.jobs.store import SQLiteJobStore
    from daguerre.jobs.worker import Worker
    from daguerre.storage import LocalResultStore, UrlSigner


def build_catalog(settings: Settings, *, allow_paths: bool = True) -> Catalog:
    """The model catalog (reads configs and headers only: no torch, no weights)."""
    from daguerre.engine.models.catalog import Catalog

    return Catalog.from_settings(settings, allow_paths=allow_paths)


def build_engine(settings: Settings, catalog: Catalog | None = None) -> Engine:
    """An engine on the settings' device, with its resident-model manager."""
    from daguerre.engine.engine import Engine
    from daguerre.engine.features.safety import SafetyChecker
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
    safety = settings.safety
    checker = SafetyChecker(checker=safety.checker, path=safety.path, threshold=safety.threshold,
                            action=safety.action)  # fmt: skip
    return Engine(models=manager, max_batch=settings.max_batch, default_negative=settings.default_negative_prompt,
                  safety=checker, upscaler=settings.upscaler, face_detector=settings.faces.detector)  # fmt: skip


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
    engine: Engine  # the model side: this process's worker runs on it, health reports its models
    store: SQLiteJobStore  # job records
    jobs: JobService  # submission, lookups, change events (over `store` and the queue)
    results: LocalResultStore  # generated images and uploaded inputs
    keys: KeyStore
    characters: CharacterStore
    secret: bytes  # the server secret: image-link signatures, webhook secrets
    signer: UrlSigner
    outbound: OutboundClient  # the one guarded client for user-given URLs
    sender: DeliveryService  # webhook and upload sends, with retries
    worker: Worker
    intake: Intake  # what every door shares
    runware: Runware  # the Runware task protocol
    eachlabs: EachLabs  # the eachlabs predictions protocol
    replicate: Replicate  # the Replicate predictions protocol
    modelslab: ModelsLab  # the ModelsLab image API
    anonymous: bool  # keyless use allowed
    demo: bool = False  # serving `serve --demo`'s random-weight model (health says so)
    lifecycle: dict = field(default_factory=lambda: {"draining": False, "ready": False})

    def close(self) -> None:
        """Stop sending and close the stores; called once when the server stops."""
        self.sender.stop()
        self.store.close()


def build_server(settings: Settings, *, engine: Engine | None = None, demo: bool = False) -> Services:
    """A server's services from its settings (and an engine, when the caller built one already)."""
    from daguerre.api.eachlabs import EachLabs
    from daguerre.api.intake import Intake
    from daguerre.api.keys import KeyStore
    from daguerre.api.modelslab import ModelsLab
    from daguerre.api.replicate import Replicate
    from daguerre.api.runware import Runware
    from daguerre.jobs.characters import CharacterStore
    from daguerre.jobs.delivery import DeliveryService, ResultDelivery
    from daguerre.jobs.outbound import OutboundClient, OutboundPolicy
    from daguerre.jobs.queue import InProcessQueue
    from daguerre.jobs.service import JobService
    from daguerre.jobs.store import SQLiteJobStore
    from daguerre.jobs.worker import Worker
    from daguerre.storage import LocalResultStore, UrlSigner

    server = settings.server
    data = server.data_dir
    data.mkdir(parents=True, exist_ok=True)
    engine = engine if engine is not None else build_engine(settings)
    store = SQLiteJobStore(data / "jobs.sqlite3")
    jobs = JobService(store=store, queue=InProcessQueue(server.max_queue))
    results = LocalResultStore(data / "images")
    keys = KeyStore(data / "keys.sqlite3", extra_keys=server.api_keys)
    secret = server_secret(data)
    scheme = "https" if server.tls_certfile else "http"
    signer = UrlSigner(secret, server.public_url or f"{scheme}://{server.host}:{server.port}")
    outbound = OutboundClient(OutboundPolicy(allow_loopback=server.outbound_allow_loopback))
    sender = DeliveryService(outbound=outbound, retry_schedule=server.webhook_retry_schedule)
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
        catalog=engine.models.catalog,
        characters=characters,
        safety_available=engine.safety_available,
    )
    runware, eachlabs, replicate, modelslab = Runware(intake), EachLabs(intake), Replicate(intake), ModelsLab(intake)
    doors = {"runware": runware, "eachlabs": eachlabs, "replicate": replicate, "modelslab": modelslab}
    deliver = ResultDelivery(sender=sender, results=results, server_secret=secret,
                             bodies={name: door.webhook_body for name, door in doors.items()},
                             attempts={"eachlabs": 3})  # fmt: skip
    worker = Worker(engine=engine, jobs=jobs, results=results, default_ttl=server.default_ttl,
                    image_limits=settings.image_limits, on_event=deliver)  # fmt: skip
    return Services(settings=settings, engine=engine, store=store, jobs=jobs, results=results, keys=keys,
                    characters=characters, secret=secret, signer=signer, outbound=outbound, sender=sender,
                    worker=worker, intake=intake, runware=runware, eachlabs=eachlabs, replicate=replicate,
                    modelslab=modelslab, anonymous=anonymous, demo=demo, lifecycle=lifecycle)  # fmt: skip
