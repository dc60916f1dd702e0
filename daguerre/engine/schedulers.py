"""Scheduler names of the task API -> the sampler that runs them on a FLUX.1 flow model.

The reference API accepts 75 names. This build runs the flow-matching Euler sampler FLUX.1 was
distilled for (diffusers' FlowMatchEulerDiscreteScheduler with FLUX's resolution-dependent
shift); the other names are recognised and rejected as not supported yet, and an unknown
name gets the closest valid ones. docs/schedulers.md lists what runs for each name.
"""

from __future__ import annotations

import difflib

from daguerre.errors import RequestError, UnsupportedError

# Schedule configs of the published FLUX.1 repos: dev-type models shift the schedule by
# image size (dynamic shifting); schnell, timestep-distilled, uses the plain schedule.
FLUX_SCHEDULE_CONFIGS = {
    "dev": {
        "base_image_seq_len": 256,
        "base_shift": 0.5,
        "max_image_seq_len": 4096,
        "max_shift": 1.15,
        "num_train_timesteps": 1000,
        "shift": 3.0,
        "use_dynamic_shifting": True,
    },
    "schnell": {
        "base_image_seq_len": 256,
        "base_shift": 0.5,
        "max_image_seq_len": 4096,
        "max_shift": 1.15,
        "num_train_timesteps": 1000,
        "shift": 1.0,
        "use_dynamic_shifting": False,
    },
}

# Names that run FLUX's own flow-matching Euler sampler, exactly as diffusers' FluxPipeline does.
FLOW_EULER = ("Default", "FlowMatchEulerDiscreteScheduler", "Euler", "EulerDiscreteScheduler")

REFERENCE_NAMES = (
    "DDIM",
    "DDIMScheduler",
    "DDPMScheduler",
    "DEISMultistepScheduler",
    "Default",
    "DPM++",
    "DPM++ 2M",
    "DPM++ 2M Beta",
    "DPM++ 2M Exponential",
    "DPM++ 2M Karras",
    "DPM++ 2M SDE",
    "DPM++ 2M SDE Beta",
    "DPM++ 2M SDE Exponential",
    "DPM++ 2M SDE Karras",
    "DPM++ 2M SDE Uniform",
    "DPM++ 2M Uniform",
    "DPM++ 3M",
    "DPM++ 3M Beta",
    "DPM++ 3M Exponential",
    "DPM++ 3M Karras",
    "DPM++ 3M SDE Uniform",
    "DPM++ 3M Uniform",
    "DPM++ Beta",
    "DPM++ Exponential",
    "DPM++ Karras",
    "DPM++ SDE",
    "DPM++ SDE Beta",
    "DPM++ SDE Exponential",
    "DPM++ SDE Karras",
    "DPM++ Uniform",
    "DPM++ Uniform Beta",
    "DPM++ Uniform Exponential",
    "DPM++ Uniform Karras",
    "DPMSolverMultistepInverse",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "EDMDPMSolverMultistepScheduler",
    "EDMEulerScheduler",
    "Euler",
    "Euler a",
    "Euler Beta",
    "Euler Exponential",
    "Euler Karras",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "FlowMatchEulerDiscreteScheduler",
    "Heun",
    "HeunDiscreteScheduler",
    "Heun Karras",
    "IPNDMScheduler",
    "IPNDM Uniform",
    "IPNDM Uniform Beta",
    "IPNDM Uniform Exponential",
    "IPNDM Uniform Karras",
    "KDPM2AncestralDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "LCM",
    "LCMScheduler",
    "LMS",
    "LMSDiscreteScheduler",
    "LMS Karras",
    "PNDMScheduler",
    "TCDScheduler",
    "UniPC",
    "UniPC 2M",
    "UniPC 2M Karras",
    "UniPC 2M Uniform",
    "UniPC 3M",
    "UniPC 3M Karras",
    "UniPC 3M Uniform",
    "UniPC Karras",
    "UniPC Uniform",
    "UniPC Uniform Beta",
    "UniPC Uniform Exponential",
    "UniPC Uniform Karras",
)


def check_name(name: str) -> str:
    """Validate a scheduler name; returns it unchanged when it runs in this build."""
    if name in FLOW_EULER:
        return name
    if name in REFERENCE_NAMES:
        raise UnsupportedError(
            f"scheduler {name!r} is not supported yet; supported now: {', '.join(FLOW_EULER)}",
            parameter="scheduler",
        )
    close = difflib.get_close_matches(name, REFERENCE_NAMES, n=3, cutoff=0.4)
    hint = f"; closest valid names: {', '.join(close)}" if close else ""
    raise RequestError(f"scheduler {name!r} is not a known scheduler name{hint}", parameter="scheduler")


def make_scheduler(name: str, base_config: dict, kind: str):
    """The scheduler instance for a name, from the model folder's scheduler config.

    A schnell-type transformer loaded with a dev-type base folder (or the reverse) gets its
    own family's schedule: the base folder only lends text encoders and the VAE.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    check_name(name)
    config = dict(base_config)
    family = "schnell" if kind == "schnell" else "dev"
    if bool(config.get("use_dynamic_shifting")) != (family == "dev"):
        config.update(FLUX_SCHEDULE_CONFIGS[family])
    return FlowMatchEulerDiscreteScheduler.from_config(config)
