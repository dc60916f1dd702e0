"""What every command shares: the consoles, option types, settings loading, and one-line user errors that
name the flag a user typed (and the API parameter behind it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from daguerre.errors import DaguerreError

# soft_wrap: a message is one line however narrow the terminal (scripts grep them; terminals wrap anyway)
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

# Request parameter (as errors name it) -> the flag a CLI user typed.
FLAGS = {
    "positivePrompt": "PROMPT",
    "negativePrompt": "--negative",
    "width": "--width",
    "height": "--height",
    "steps": "--steps",
    "CFGScale": "--guidance",
    "trueCFGScale": "--true-cfg",
    "seed": "--seed",
    "numberResults": "-n",
    "scheduler": "--scheduler",
    "seedImage": "--image",
    "maskImage": "--mask",
    "strength": "--strength",
    "outputFormat": "--format",
    "outputQuality": "--quality",
    "model": "--model",
    "lora": "--lora",
    "lora.model": "--lora",
    "lora.weight": "--lora",
    "outpaint": "--outpaint",
    "maskMargin": "--mask-margin",
    "promptWeighting": "--prompt-weighting",
    "controlNet": "--controlnet",
    "controlNet.model": "--controlnet",
    "controlNet.weight": "--controlnet",
    "controlNet.guideImage": "--controlnet",
    "controlNet.controlType": "--controlnet",
    "ipAdapters": "--ip-adapter",
    "ipAdapters.model": "--ip-adapter",
    "ipAdapters.weight": "--ip-adapter",
    "ipAdapters.guideImages": "--ip-adapter",
    "character": "--character",
    "puLID": "--id-image",
    "puLID.images": "--id-image",
    "puLID.idWeight": "--id-weight",
    "puLID.CFGStartStep": "--id-cfg-start",
    "puLID.trueCFGScale": "--true-cfg",
    "profile": "--profile",
    "offload": "--offload",
    "t5": "--t5",
    "acceleratorOptions": "--tea-cache/--db-cache",
    "acceleratorOptions.teaCache": "--tea-cache",
    "acceleratorOptions.teaCacheDistance": "--tea-cache",
    "acceleratorOptions.dbCache": "--db-cache",
    "acceleratorOptions.dbCacheThreshold": "--db-cache",
    "acceleratorOptions.dbCacheSkipInterval": "--db-cache-interval",
    "acceleratorOptions.cacheStartStepPercentage": "--cache-start",
    "acceleratorOptions.cacheEndStepPercentage": "--cache-end",
    "acceleratorOptions.cacheMaxConsecutiveSteps": "--cache-max-consecutive",
    "enhancePrompt": "--enhance-prompt",
    "safety": "--safety-check",
    "hiresFix": "--hires-fix",
    "hiresFix.model": "--hires-fix",
    "hiresFix.steps": "--hires-steps",
    "hiresFix.strength": "--hires-strength",
    "ultralytics": "--face-fix",
    "ultralytics.CFGScale": "--face-cfg",
    "ultralytics.confidence": "--face-confidence",
    "ultralytics.inpaintSize": "--face-inpaint-size",
    "ultralytics.maskBlur": "--face-mask-blur",
    "ultralytics.maskPadding": "--face-mask-padding",
    "ultralytics.positivePrompt": "--face-prompt",
    "ultralytics.negativePrompt": "--face-negative",
    "ultralytics.steps": "--face-steps",
    "ultralytics.strength": "--face-strength",
    "safety.action": "--safety-action",
    "port": "--port",
    "host": "--host",
}

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="settings TOML (models, folders, device)")]
DeviceOpt = Annotated[str | None, typer.Option(help="cuda | cuda:N | mps | cpu (default: best available)")]
DtypeOpt = Annotated[str | None, typer.Option(help="bfloat16 | float16 | float32 (default: bf16 GPU, fp32 CPU)")]
OffloadOpt = Annotated[
    str | None, typer.Option(help="memory mode for small GPUs: none | model | group (CUDA only) [settings: none]")
]
T5Opt = Annotated[str | None, typer.Option("--t5", help="where T5 runs: device | cpu | int8 [settings: device]")]


DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="the server's data folder [./daguerre-data]")]


def fail(e: DaguerreError, flags: dict[str, str] | None = None) -> None:
    """Print a user error with the flag it concerns (and the API name) and exit 2.

    `flags` overrides the flag for a parameter where a command spells it differently.
    """
    flag = {**FLAGS, **(flags or {})}.get(e.parameter or "")
    prefix = f"{flag} ({e.parameter}): " if flag else ""
    err.print(f"[bold red]error[/]: {escape(prefix + e.message)}", highlight=False)
    raise typer.Exit(2)


def warn(message: str) -> None:
    err.print(f"[yellow]warning[/]: {escape(message)}", highlight=False)


def load_settings(config: Path | None, **overrides):
    """Settings from the TOML file, the environment and these flag values (None: not given)."""
    from daguerre.config import Settings

    return Settings.load(config, **overrides)


def engine_for(settings):
    """The engine for a command that generates, without the libraries' per-file loading bars."""
    from daguerre.logs import quiet_libraries
    from daguerre.services import build_engine

    quiet_libraries()  # our own bars report progress
    return build_engine(settings)


def validated(model, values: dict):
    """A settings model built from flag values, with pydantic's range checks as one-line errors."""
    from pydantic import ValidationError

    try:
        return model.model_validate(values)
    except ValidationError as e:
        first = e.errors()[0]
        name = ".".join(map(str, first["loc"]))
        raise DaguerreError(f"{name}: {first['msg']} (got {first.get('input')!r})", parameter=name,
                            code="invalidParameter") from None  # fmt: skip
