"""Settings: read once at start-up (environment + optional TOML file) and passed down.

Environment variables use the prefix DAGUERRE_ (DAGUERRE_DEVICE=cuda, DAGUERRE_MODEL_DIRS='["/srv/ComfyUI"]').
A TOML file (`--config daguerre.toml` or DAGUERRE_CONFIG) holds the same keys at top level and the
model catalog under `[models.NAME]` tables (see docs/models.md). Precedence: explicit overrides
(CLI flags) > environment > file > defaults.
"""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from daguerre.errors import RequestError
from daguerre.prompts.studio import DEFAULT_NEGATIVE

Profile = Literal["exact", "fast", "turbo"]  # speed profiles (engine/profiles.py says what each does)
Offload = Literal["none", "model", "group"]  # memory modes (engine/memory.py)
T5Mode = Literal["device", "cpu", "int8"]
PROFILES, OFFLOADS, T5_MODES = get_args(Profile), get_args(Offload), get_args(T5Mode)


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    """`value` is one of `allowed`, else a RequestError naming the setting."""
    if value not in allowed:
        raise RequestError(f"{name} must be one of {', '.join(allowed)}, got {value!r}", parameter=name)
    return value


class ImageLimits(BaseModel):
    """Caps for user-supplied images, checked before any pixel is decoded."""

    max_pixels: int = Field(4096 * 4096, ge=1, description="width*height cap (16.8 MP)")
    max_side: int = Field(4096, ge=1, description="longest side cap in pixels")
    max_bytes: int = Field(40 * 1024 * 1024, ge=1, description="encoded (or base64-decoded) size cap")


class SafetySettings(BaseModel):
    """The safety checker (engine/features/safety.py): which classifier, how strict, what a flagged image becomes."""

    checker: Literal["nudenet", "vit", "clip", "none"] = Field(
        "nudenet",
        description="nudenet: NudeNet's detector (the `safety` extra; its ONNX weights ship in its wheel); vit: a "
        "Falconsai-style ViT classifier folder; clip: diffusers' StableDiffusionSafetyChecker folder; none: no checker",
    )
    path: Path | None = Field(
        None, description="the vit/clip folder, or a NudeNet-format .onnx file (default: NudeNet's own)"
    )
    threshold: float = Field(0.5, ge=0, le=1, description="a score at or above this flags an image")
    action: Literal["blur", "pixelate", "black", "sensitive_content_text", "flag"] = Field(
        "blur", description="what a flagged image becomes when the request does not say"
    )


class FaceSettings(BaseModel):
    """Face enhancement (ultralytics): the face detector (engine/features/faces.py)."""

    detector: str = Field(
        "auto",
        description="auto: NudeNet's face classes when the `safety` extra is installed, else OpenCV's Haar cascade; "
        "nudenet; haar; or a YOLO face model (catalog id, name, alias or .pt path; the `faces` extra)",
    )


class ServerSettings(BaseModel):
    """The task API server (`daguerre serve`)."""

    host: str = Field("127.0.0.1", description="bind address")
    preload: list[str] = Field(
        default_factory=list,
        description="models to load (and compile, per profile) at start-up; /health/ready waits for them",
    )
    port: int = Field(8000, ge=0, le=65535)
    public_url: str | None = Field(None, description="base of image URLs; default http://HOST:PORT")
    data_dir: Path = Field(Path("daguerre-data"), description="jobs database, key store, images, uploads")
    api_keys: list[str] = Field(default_factory=list, description="keys accepted besides the key store")
    allow_anonymous: bool | None = Field(
        None, description="serve without a key; default: only when bound to loopback and no key exists"
    )
    default_ttl: int = Field(86400, ge=60, description="seconds an image stays downloadable without ttl")
    sync_wait_s: float = Field(300, gt=0, description="sync requests wait this long, then go on async")
    max_queue: int = Field(100, ge=1, description="waiting jobs before 429")
    max_in_flight_per_key: int = Field(
        64, ge=0, description="queued + running jobs one API key may have before its new ones get 429 (0 = no limit)"
    )
    prediction_wait_s: float = Field(
        60,
        gt=0,
        le=600,
        description="predictions APIs: the longest a blocking create (Prefer: wait, /run, "
        "ModelsLab) holds the request before answering with the job as it stands",
    )
    tls_certfile: Path | None = Field(None, description="serve HTTPS with this certificate (PEM) and tls_keyfile")
    tls_keyfile: Path | None = Field(None, description="the certificate's private key (PEM)")
    max_body_bytes: int = Field(50 * 2**20, ge=1024, description="request body / WebSocket message cap (413)")
    ws_idle_timeout_s: float = Field(300, gt=0, description="close a WebSocket silent this long")
    price_per_second: float = Field(0.0, ge=0, description="includeCost: measured compute seconds x this")
    drain_timeout_s: float = Field(120, ge=0, description="SIGTERM waits this long for the running job")
    sweep_interval_s: float = Field(30, gt=0, description="how often expired images are deleted")
    webhook_retry_schedule: list[float] = Field(
        [2, 8, 30, 120, 600], description="seconds before each retry of a failed webhook or upload"
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="web origins (https://app.example.com) whose pages may call the API and open the WebSocket; "
        "default none: only this server's own pages and non-browser clients",
    )
    allow_model_paths: bool = Field(
        False,
        description="let requests name model files by server path (lora, controlNet...); default: catalog ids, "
        "names and aliases only, so a client cannot probe or load arbitrary files",
    )
    outbound_allow_loopback: bool = Field(
        False, description="let webhooks/uploads/image URLs reach 127.0.0.0/8 and ::1 (tests only)"
    )
    # --- workers and many machines (docs/deploy.md)
    workers: int | None = Field(
        None,
        ge=0,
        le=64,
        description="worker processes `serve` starts and restarts: default one per GPU (one on a CPU machine); "
        "0 = none here (API only: `daguerre worker` runs elsewhere)",
    )
    redis_url: str | None = Field(
        None,
        description="Redis for the jobs, queue, change feed and live workers (many machines, e.g. "
        "redis://host:6379/0); default: the SQLite file in data_dir (one machine)",
    )
    redis_prefix: str = Field("daguerre", min_length=1, description="prefix of every Redis key Daguerre uses")
    results: Literal["local", "s3"] = Field(
        "local", description="where images live: local = a folder (results_dir), s3 = an S3-compatible bucket"
    )
    results_dir: Path | None = Field(
        None, description="the images folder; a directory every machine mounts works too [data_dir/images]"
    )
    s3_bucket: str | None = Field(None, description="results = s3: the bucket")
    s3_prefix: str = Field("daguerre/", description="results = s3: key prefix of every image")
    s3_endpoint_url: str | None = Field(None, description="results = s3: endpoint of a non-AWS store (MinIO, R2)")
    s3_region: str | None = Field(None, description="results = s3: region [boto3's default]")
    visibility_timeout_s: float = Field(
        30, ge=1, le=3600,
        description="a claimed job whose worker has not been heard from this long goes to another worker",
    )  # fmt: skip
    max_deliveries: int = Field(
        3, ge=1, le=100,
        description="tries before a job that keeps stopping its worker goes to the dead-letter list and fails",
    )  # fmt: skip
    route_wait_s: float = Field(
        15, ge=0, le=3600,
        description="model-aware routing: how long a job may wait for a live worker that has its model loaded "
        "before a worker without it loads the model itself (0: any free worker takes any job)",
    )  # fmt: skip

    @model_validator(mode="after")
    def _s3_bucket(self):
        if self.results == "s3" and not self.s3_bucket:
            raise ValueError("server.results = s3 needs server.s3_bucket")
        return self

    @model_validator(mode="after")
    def _tls_pair(self):
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("server.tls_certfile and server.tls_keyfile go together: give both or neither")
        for name in ("tls_certfile", "tls_keyfile"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"server.{name} {path} is not a file")
        return self


def _default_hf_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return home / "hub"


class Settings(BaseSettings):
    """Everything configurable about one Daguerre process."""

    model_config = SettingsConfigDict(
        env_prefix="DAGUERRE_", env_nested_delimiter="__", extra="forbid", protected_namespaces=()
    )

    # --- models
    models: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="catalog entries: short name -> {id, path, base, kind, aliases}"
    )
    catalog_root: Path | None = Field(None, description="relative catalog paths resolve against this folder")
    discover: bool = Field(True, description="scan the Hugging Face cache and model_dirs for FLUX models")
    hf_cache: Path = Field(default_factory=_default_hf_cache)
    model_dirs: list[Path] = Field(
        default_factory=list, description="ComfyUI-style folders (with models/diffusion_models, unet, checkpoints)"
    )
    base_model: str | None = Field(
        None, description="catalog id or folder that lends text encoders/VAE to single-file models"
    )
    # --- device and residency
    device: str | None = Field(
        None, pattern=r"^(cuda(:\d+)?|mps|cpu)$", description="cuda, cuda:N, mps or cpu; default: cuda > mps > cpu"
    )
    dtype: Literal["bfloat16", "float16", "float32"] | None = Field(
        None, description="default: bf16 on GPU, fp32 on CPU"
    )
    memory_budget_gb: float | None = Field(
        None, gt=0, description="resident-model budget; default 90% of GPU memory or 60% of RAM on CPU"
    )
    profile: Profile = Field(
        "exact",
        description="speed profile: exact (eager numerics, compiled where `compile`), fast (+ fp8 transformer, "
        "CUDA >= 8.9 only), turbo (+ TeaCache for requests without acceleratorOptions); per model: `profile`",
    )
    offload: Offload = Field(
        "none",
        description="memory mode for GPUs smaller than the model: none (all resident), model (each part moves to "
        "the GPU when it runs), group (transformer blocks stream in); CUDA only; per model: `offload`",
    )
    t5: T5Mode = Field(
        "device", description="where the T5 text encoder runs: device, cpu (frees ~9.5 GB of GPU), int8 (half size)"
    )
    attention: str = Field(
        "auto",
        description="the transformer's attention backend: auto (cuDNN fused attention on CUDA >= 9.0, PyTorch "
        "SDPA elsewhere) or a diffusers backend name (native, _native_cudnn, _native_flash, flash, sage...)",
    )
    compile: bool | None = Field(
        None, description="torch.compile the transformer at load (dynamic shapes, warmed up); default: on CUDA only"
    )
    max_batch: int | None = Field(
        None,
        ge=1,
        le=20,
        description="images per forward pass (numberResults is split into chunks); default "
        "4 on GPUs, 1 on the CPU where a step is compute-bound and batching only costs cache",
    )
    # --- inputs and outputs
    image_limits: ImageLimits = Field(default_factory=ImageLimits)
    output_dir: Path = Field(Path("out"), description="where the CLI writes images by default")
    server: ServerSettings = Field(default_factory=ServerSettings)
    default_negative_prompt: str = Field(
        DEFAULT_NEGATIVE,
        description="unconditional prompt when true CFG is on and a request has no negative prompt ('' = empty)",
    )
    cache_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "daguerre")
    safety: SafetySettings = Field(default_factory=SafetySettings)
    upscaler: str | None = Field(
        None, description="hiresFix: true uses this upscaler (catalog id, name or alias); none: a latent upscale"
    )
    faces: FaceSettings = Field(default_factory=lambda: FaceSettings())

    @field_validator("hf_cache", "output_dir", "cache_dir", "catalog_root", mode="after")
    @classmethod
    def _expand(cls, v: Path | None) -> Path | None:
        return v.expanduser() if v is not None else None

    @field_validator("model_dirs", mode="after")
    @classmethod
    def _expand_all(cls, v: list[Path]) -> list[Path]:
        return [p.expanduser() for p in v]

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Explicit values (CLI flags) > environment > the TOML file > defaults.
        return init_settings, env_settings, _TomlSource(settings_cls)

    @classmethod
    def load(cls, path: Path | str | None = None, **overrides: Any) -> Settings:
        """Read the TOML file (argument, else DAGUERRE_CONFIG, else none), the environment and overrides."""
        path = path or os.environ.get("DAGUERRE_CONFIG")
        values: dict[str, Any] = {}
        if path:
            path = Path(path).expanduser()
            try:
                values = tomllib.loads(path.read_text())
            except FileNotFoundError as e:
                raise RequestError(f"config file {path} does not exist", parameter="config") from e
            except tomllib.TOMLDecodeError as e:
                raise RequestError(f"config file {path} is not valid TOML: {e}", parameter="config") from e
            values.setdefault("catalog_root", str(path.parent))
        token = _FILE_VALUES.set(values)
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(map(str, x['loc']))}: {x['msg']} (got {x.get('input')!r})" for x in e.errors()
            )
            where = f" in {path}" if path else ""
            raise RequestError(f"invalid settings{where}: {problems}", parameter="config") from e
        finally:
            _FILE_VALUES.reset(token)


# The TOML values of the `Settings.load` call in progress (a context variable, so concurrent
# loads in threads or tasks do not see each other's files).
_FILE_VALUES: ContextVar[dict[str, Any] | None] = ContextVar("daguerre_settings_file", default=None)


class _TomlSource(PydanticBaseSettingsSource):
    """The settings file as a pydantic-settings source, below the environment."""

    def get_field_value(self, field, field_name):
        return (_FILE_VALUES.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_FILE_VALUES.get() or {})
