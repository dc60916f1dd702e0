"""The one normalized request every protocol is translated into: its types, limits, validation, defaults.

A leaf of the package: importing it loads no torch and nothing of the engine, so wire adapters, the CLI and
the job queue can build and check requests without a model.

    types.py     GenerationRequest and its parts (frozen dataclasses), AccelOptions
    limits.py    every range, name (the 75 scheduler names) and default, written once
    validate.py  `validate`: the boundary check
    defaults.py  `resolve`: the defaults that depend on the model's kind, filled in
"""

from daguerre.request.defaults import BASE_KINDS, resolve, resolve_accel
from daguerre.request.limits import (
    CANNY_THRESHOLDS,
    CONTROL_MODES,
    CONTROL_TYPES,
    DEFAULT_CACHE_MAX_CONSECUTIVE,
    DEFAULT_DB_CACHE_SKIP_INTERVAL,
    DEFAULT_DB_CACHE_THRESHOLD,
    DEFAULT_GUIDANCE,
    DEFAULT_OUTPUT_QUALITY,
    DEFAULT_SCHEDULER,
    DEFAULT_SIZE,
    DEFAULT_STEPS,
    DEFAULT_STRENGTH,
    DEFAULT_TEA_CACHE_DISTANCE,
    FULL_STRENGTH,
    INTEGERS,
    MAX_CONTROLNETS,
    MAX_IP_ADAPTERS,
    MAX_LORAS,
    MAX_SEED,
    MAX_SEQUENCE_LENGTH,
    OUTPAINT_DEFAULT_BLUR,
    OUTPUT_FORMATS,
    PREPROCESSORS,
    PROMPT_CHARS,
    PROMPT_WEIGHTINGS,
    RANDOM_SEEDS,
    RANGES,
    SCHEDULER_NAMES,
    SCHEDULERS,
    SIZE_STEP,
)
from daguerre.request.types import (
    AccelOptions,
    ControlRef,
    GenerationRequest,
    IpAdapterRef,
    LoraRef,
    Outpaint,
    OutputSpec,
)
from daguerre.request.validate import check_range, check_scheduler, check_text, validate, validate_accel

__all__ = [
    "BASE_KINDS",
    "CANNY_THRESHOLDS",
    "CONTROL_MODES",
    "CONTROL_TYPES",
    "DEFAULT_CACHE_MAX_CONSECUTIVE",
    "DEFAULT_DB_CACHE_SKIP_INTERVAL",
    "DEFAULT_DB_CACHE_THRESHOLD",
    "DEFAULT_GUIDANCE",
    "DEFAULT_OUTPUT_QUALITY",
    "DEFAULT_SCHEDULER",
    "DEFAULT_SIZE",
    "DEFAULT_STEPS",
    "DEFAULT_STRENGTH",
    "DEFAULT_TEA_CACHE_DISTANCE",
    "FULL_STRENGTH",
    "INTEGERS",
    "MAX_CONTROLNETS",
    "MAX_IP_ADAPTERS",
    "MAX_LORAS",
    "MAX_SEED",
    "MAX_SEQUENCE_LENGTH",
    "OUTPAINT_DEFAULT_BLUR",
    "OUTPUT_FORMATS",
    "PREPROCESSORS",
    "PROMPT_CHARS",
    "PROMPT_WEIGHTINGS",
    "RANDOM_SEEDS",
    "RANGES",
    "SCHEDULERS",
    "SCHEDULER_NAMES",
    "SIZE_STEP",
    "AccelOptions",
    "ControlRef",
    "GenerationRequest",
    "IpAdapterRef",
    "LoraRef",
    "Outpaint",
    "OutputSpec",
    "check_range",
    "check_scheduler",
    "check_text",
    "resolve",
    "resolve_accel",
    "validate",
    "validate_accel",
]
