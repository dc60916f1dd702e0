"""Scheduler names of the task API -> the sampler and sigma schedule that run them on FLUX.1.

Every one of the reference API's 75 names runs a real sampler on FLUX's flow-matching model with
its resolution-dependent shift (samplers.py explains the math). `Default`, `Euler`,
`EulerDiscreteScheduler`, `FlowMatchEulerDiscreteScheduler` and `DDIM*` run diffusers'
FlowMatchEulerDiscreteScheduler exactly as FluxPipeline does (deterministic DDIM on a flow path is
that Euler step). The exponential integrators come from diffusers with `use_flow_sigmas`; the rest
are small functions in samplers.FlowSampler. An unknown name gets the closest valid ones.
docs/schedulers.md lists, per name, what runs.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace

from daguerre.errors import RequestError

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
FLOW_EULER = ("Default", "FlowMatchEulerDiscreteScheduler", "Euler", "EulerDiscreteScheduler", "DDIM", "DDIMScheduler")


@dataclass(frozen=True)
class Sampler:
    """What a name runs: an engine ("diffusers-euler", "dpmsolver", "dpmsolver-single", "unipc", "deis",
    "lcm", or "flow" = samplers.FlowSampler), its algorithm/order, and the sigma schedule."""

    engine: str
    algorithm: str = ""
    order: int = 1
    schedule: str = "default"


_SPACINGS = {"": "default", " Karras": "karras", " Exponential": "exponential", " Beta": "beta",
             " Uniform": "uniform", " Uniform Karras": "uniform karras",
             " Uniform Exponential": "uniform exponential", " Uniform Beta": "uniform beta"}  # fmt: skip


def _family(prefix: str, sampler: Sampler, suffixes) -> dict[str, Sampler]:
    return {prefix + sfx: replace(sampler, schedule=_SPACINGS[sfx]) for sfx in suffixes}


SAMPLERS: dict[str, Sampler] = {
    **{name: Sampler("diffusers-euler") for name in FLOW_EULER},
    **_family("Euler", Sampler("flow", "euler"), (" Karras", " Exponential", " Beta")),
    "EDMEulerScheduler": Sampler("flow", "euler", schedule="karras"),
    "Euler a": Sampler("flow", "euler_ancestral"),
    "EulerAncestralDiscreteScheduler": Sampler("flow", "euler_ancestral"),
    "DDPMScheduler": Sampler("flow", "ddpm"),
    **_family("Heun", Sampler("flow", "heun"), ("", " Karras")),
    "HeunDiscreteScheduler": Sampler("flow", "heun"),
    "KDPM2DiscreteScheduler": Sampler("flow", "dpm2"),
    "KDPM2AncestralDiscreteScheduler": Sampler("flow", "dpm2_ancestral"),
    **_family("LMS", Sampler("flow", "lms"), ("", " Karras")),
    "LMSDiscreteScheduler": Sampler("flow", "lms"),
    **_family(
        "IPNDM", Sampler("flow", "ipndm"), (" Uniform", " Uniform Beta", " Uniform Exponential", " Uniform Karras")
    ),
    "IPNDMScheduler": Sampler("flow", "ipndm"),
    "PNDMScheduler": Sampler("flow", "ipndm"),
    "TCDScheduler": Sampler("flow", "tcd"),
    "LCM": Sampler("lcm"),
    "LCMScheduler": Sampler("lcm"),
    **_family(
        "DPM++",
        Sampler("dpmsolver", "dpmsolver++", 2),
        (
            "",
            " Karras",
            " Exponential",
            " Beta",
            " Uniform",
            " Uniform Karras",
            " Uniform Exponential",
            " Uniform Beta",
        ),
    ),
    **_family("DPM++ 2M", Sampler("dpmsolver", "dpmsolver++", 2), ("", " Karras", " Exponential", " Beta", " Uniform")),
    **_family(
        "DPM++ 2M SDE", Sampler("dpmsolver", "sde-dpmsolver++", 2), ("", " Karras", " Exponential", " Beta", " Uniform")
    ),
    **_family("DPM++ 3M", Sampler("dpmsolver", "dpmsolver++", 3), ("", " Karras", " Exponential", " Beta", " Uniform")),
    "DPM++ 3M SDE Uniform": Sampler("flow", "dpmpp_3m_sde", schedule="uniform"),
    **_family("DPM++ SDE", Sampler("flow", "dpmpp_sde"), ("", " Karras", " Exponential", " Beta")),
    "DPMSolverMultistepScheduler": Sampler("dpmsolver", "dpmsolver++", 2),
    "DPMSolverMultistepInverse": Sampler("dpmsolver", "dpmsolver++", 2),
    "EDMDPMSolverMultistepScheduler": Sampler("dpmsolver", "dpmsolver++", 2, "karras"),
    "DPMSolverSinglestepScheduler": Sampler("dpmsolver-single", "dpmsolver++", 2),
    "DEISMultistepScheduler": Sampler("deis", "deis", 2),
    **_family(
        "UniPC",
        Sampler("unipc", "bh2", 2),
        ("", " Karras", " Uniform", " Uniform Beta", " Uniform Exponential", " Uniform Karras"),
    ),
    **_family("UniPC 2M", Sampler("unipc", "bh2", 2), ("", " Karras", " Uniform")),
    **_family("UniPC 3M", Sampler("unipc", "bh2", 3), ("", " Karras", " Uniform")),
}

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
    """Validate a scheduler name; returns it unchanged."""
    if name in SAMPLERS:
        return name
    close = difflib.get_close_matches(name, REFERENCE_NAMES, n=3, cutoff=0.4)
    hint = f"; closest valid names: {', '.join(close)}" if close else ""
    raise RequestError(
        f"scheduler {name!r} is not a known scheduler name{hint} (see docs/schedulers.md for all 75)",
        parameter="scheduler",
    )


def family_config(base_config: dict, kind: str) -> dict:
    """The model folder's scheduler config with the schedule of the transformer's own family.

    A schnell-type transformer loaded with a dev-type base folder (or the reverse) gets its own
    family's schedule: the base folder only lends text encoders and the VAE.
    """
    config = dict(base_config)
    family = "schnell" if kind == "schnell" else "dev"
    if bool(config.get("use_dynamic_shifting")) != (family == "dev"):
        config.update(FLUX_SCHEDULE_CONFIGS[family])
    return config


def make_scheduler(name: str, base_config: dict, kind: str, generators: list | None = None):
    """The scheduler instance for a name, from the model folder's scheduler config.

    generators: one torch.Generator per image of the batch, for the per-step noise of stochastic
    samplers (the engine seeds them from each image's seed).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    from daguerre.engine.samplers import FlowSampler

    spec = SAMPLERS[check_name(name)]
    config = family_config(base_config, kind)
    if spec.engine == "diffusers-euler":
        return FlowMatchEulerDiscreteScheduler.from_config(config)
    if spec.engine == "flow":
        sampler = FlowSampler(spec.algorithm, config, spec.schedule)
        sampler.generators = generators
        return sampler
    sched = _diffusers_flow_scheduler(spec)
    sched.daguerre_family = config
    sched.daguerre_schedule = spec.schedule
    sched.generators = generators
    return sched


def _diffusers_flow_scheduler(spec: Sampler):
    """diffusers' DPM-Solver++ / UniPC / DEIS / LCM in flow mode, on FLUX's sigma schedule."""
    import diffusers

    from daguerre.engine.samplers import FluxSigmas

    flow = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
    cls_name, kwargs = {
        "dpmsolver": ("DPMSolverMultistepScheduler", {**flow, "algorithm_type": spec.algorithm,
                                                      "solver_order": spec.order, "final_sigmas_type": "zero"}),
        "dpmsolver-single": ("DPMSolverSinglestepScheduler", {**flow, "algorithm_type": spec.algorithm,
                                                              "solver_order": spec.order, "final_sigmas_type": "zero",
                                                              "lower_order_final": True}),
        "unipc": ("UniPCMultistepScheduler", {**flow, "solver_type": spec.algorithm, "solver_order": spec.order,
                                              "final_sigmas_type": "zero"}),
        "deis": ("DEISMultistepScheduler", {**flow, "solver_order": spec.order}),
        "lcm": ("FlowMatchLCMScheduler", {}),
    }[spec.engine]  # fmt: skip
    base = getattr(diffusers, cls_name)
    cls = _SUBCLASSES.setdefault(cls_name, type(f"Flux{cls_name}", (FluxSigmas, base), {}))
    return cls(**kwargs)


_SUBCLASSES: dict[str, type] = {}
