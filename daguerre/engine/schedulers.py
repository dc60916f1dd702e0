"""The registry: each sampler algorithm of request.SCHEDULERS -> the scheduler that runs it on FLUX.1.

request.SCHEDULERS maps the reference API's 75 scheduler names to (algorithm, sigma spacing); here each
algorithm has one factory. `flow-euler` is diffusers' FlowMatchEulerDiscreteScheduler exactly as FluxPipeline
runs it (deterministic DDIM on a flow path is that Euler step); the exponential integrators are diffusers'
with `use_flow_sigmas` on FLUX's schedule (samplers.FluxSigmas); the rest are samplers.FlowSampler's step
functions. docs/schedulers.md lists, per name, what runs.
"""

from __future__ import annotations

from collections.abc import Callable

from daguerre.request import SCHEDULERS, check_scheduler

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

Factory = Callable[[dict, str], object]  # (the family's scheduler config, sigma spacing) -> a scheduler


def _flow_euler(config: dict, spacing: str):
    """diffusers' FlowMatchEulerDiscreteScheduler: bit for bit what FluxPipeline runs."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_config(config)


def _flow(algorithm: str) -> Factory:
    """One of samplers.FlowSampler's step functions (k-diffusion's samplers on the flow ODE/SDE)."""

    def make(config: dict, spacing: str):
        from daguerre.engine.samplers import FlowSampler

        return FlowSampler(algorithm, config, spacing)

    return make


_FLOW = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}


def _diffusers(cls_name: str, **kwargs) -> Factory:
    """A diffusers flow-capable scheduler (DPM-Solver++, UniPC, DEIS, LCM) on FLUX's sigma schedule."""

    def make(config: dict, spacing: str):
        import diffusers

        from daguerre.engine.samplers import FluxSigmas

        base = getattr(diffusers, cls_name)
        cls = _SUBCLASSES.setdefault(cls_name, type(f"Flux{cls_name}", (FluxSigmas, base), {}))
        sched = cls(**kwargs)
        sched.daguerre_family = config
        sched.daguerre_schedule = spacing
        return sched

    return make


_SUBCLASSES: dict[str, type] = {}
_MULTISTEP = {**_FLOW, "final_sigmas_type": "zero"}

REGISTRY: dict[str, Factory] = {
    "flow-euler": _flow_euler,
    **{a: _flow(a) for a in ("euler", "euler_ancestral", "ddpm", "heun", "dpm2", "dpm2_ancestral", "lms", "ipndm",
                             "tcd", "dpmpp_sde", "dpmpp_3m_sde")},
    "dpmpp_2m": _diffusers("DPMSolverMultistepScheduler", algorithm_type="dpmsolver++", solver_order=2, **_MULTISTEP),
    "dpmpp_3m": _diffusers("DPMSolverMultistepScheduler", algorithm_type="dpmsolver++", solver_order=3, **_MULTISTEP),
    "dpmpp_2m_sde": _diffusers("DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++", solver_order=2,
                               **_MULTISTEP),
    "dpmpp_2s": _diffusers("DPMSolverSinglestepScheduler", algorithm_type="dpmsolver++", solver_order=2,
                           lower_order_final=True, **_MULTISTEP),
    "unipc_2m": _diffusers("UniPCMultistepScheduler", solver_type="bh2", solver_order=2, **_MULTISTEP),
    "unipc_3m": _diffusers("UniPCMultistepScheduler", solver_type="bh2", solver_order=3, **_MULTISTEP),
    "deis": _diffusers("DEISMultistepScheduler", solver_order=2, **_FLOW),
    "lcm": _diffusers("FlowMatchLCMScheduler"),
}  # fmt: skip


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
    algorithm, spacing = SCHEDULERS[check_scheduler(name)]
    sched = REGISTRY[algorithm](family_config(base_config, kind), spacing)
    if algorithm != "flow-euler":
        sched.generators = generators
    return sched
