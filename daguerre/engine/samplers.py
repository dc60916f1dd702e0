"""Flow-matching samplers and sigma schedules for FLUX.1, as diffusers-compatible schedulers.

FLUX.1 predicts a velocity v on the straight path x_sigma = (1 - sigma) * x0 + sigma * noise, so the
denoised estimate is x0 = x - sigma * v and the probability-flow ODE is dx/dsigma = v = (x - x0) / sigma.
That is the same ODE k-diffusion's samplers integrate (Karras et al. 2022, "Elucidating the Design
Space...", eq. 4), so its deterministic samplers (Euler, Heun, DPM2, LMS, iPNDM) run on FLUX unchanged
in sigma. The exponential integrators (DPM-Solver++, UniPC, DEIS) need the (alpha, sigma) form, with
alpha = 1 - sigma; diffusers has those with `use_flow_sigmas`, and `FluxSigmas` gives them FLUX's own
schedule. Stochastic steps use the flow forward process to re-noise: from a less noisy (alpha_s,
sigma_s) to (alpha_n, sigma_n), x_n = (alpha_n / alpha_s) x_s + sqrt(sigma_n^2 - (alpha_n sigma_s /
alpha_s)^2) z.

Schedules (all end at sigma = 0):
  default      FLUX's: linspace(1, 1/N, N), shifted by image size (dev) or not (schnell), exactly as
               FluxPipeline and FlowMatchEulerDiscreteScheduler compute it
  karras       rho = 7 spacing between the default schedule's sigma_max and sigma_min (Karras et al.)
  exponential  log-linear between them
  beta         Beta(0.6, 0.6) quantile spacing between them (Lee et al. 2024, "Beta sampling")
  uniform      linspace(1, 1/N, N) without the resolution shift; "uniform karras" etc. apply the
               named spacing to that unshifted range
"""

from __future__ import annotations

import math

import numpy as np
import torch

SCHEDULES = ("default", "karras", "exponential", "beta", "uniform", "uniform karras", "uniform exponential",
             "uniform beta")  # fmt: skip
NOISE_SALT = 0x5EED  # per-step noise of stochastic samplers: generator seeded (image seed + salt)


def time_shift(mu: float, sigmas: np.ndarray) -> np.ndarray:
    """FLUX's resolution-dependent shift (exponential time shift with exp(mu))."""
    return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))


def karras(hi: float, lo: float, n: int) -> np.ndarray:
    """rho = 7 spacing between sigma_max and sigma_min (Karras et al. 2022, eq. 5)."""
    rho = 7.0
    ramp = np.linspace(0, 1, n)
    return (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho


def exponential(hi: float, lo: float, n: int) -> np.ndarray:
    """Log-linear spacing between sigma_max and sigma_min (k-diffusion `get_sigmas_exponential`)."""
    return np.exp(np.linspace(math.log(hi), math.log(lo), n))


def beta(hi: float, lo: float, n: int) -> np.ndarray:
    """Beta(0.6, 0.6) quantile spacing (Lee et al. 2024, "Beta sampling is all you need"), as diffusers has it."""
    import scipy.stats

    q = scipy.stats.beta.ppf(1 - np.linspace(0, 1, n), 0.6, 0.6)
    return lo + q * (hi - lo)


# A spacing re-spaces the N sigmas between the schedule's first and last; "default" keeps FLUX's own.
SPACINGS = {"karras": karras, "exponential": exponential, "beta": beta}


def flux_sigmas(
    num_steps: int, config: dict, *, sigmas=None, mu: float | None = None, schedule: str = "default"
) -> np.ndarray:
    """The N sigmas (without the final 0) a FLUX.1 model samples at, for a schedule name."""
    base = np.asarray(sigmas if sigmas is not None else np.linspace(1.0, 1 / num_steps, num_steps), dtype=np.float64)
    if schedule.startswith("uniform"):
        shifted = base
    elif config.get("use_dynamic_shifting"):
        if mu is None:
            raise ValueError("a dev-type FLUX.1 schedule needs mu (the resolution shift)")
        shifted = time_shift(mu, base)
    else:
        shift = float(config.get("shift", 1.0))
        shifted = shift * base / (1 + (shift - 1) * base)
    spacing = schedule.removeprefix("uniform").strip() or "default"
    if spacing == "default":
        return shifted
    if spacing not in SPACINGS:
        raise ValueError(f"unknown schedule {schedule!r}")
    return SPACINGS[spacing](float(shifted[0]), float(shifted[-1]), len(shifted))


def flow_scale_noise(sample, timestep, noise):
    """The img2img start: the image noised to the first timestep's sigma on the flow path."""
    sigma = (timestep.flatten()[0] / 1000).to(sample.dtype)
    return sigma * noise + (1 - sigma) * sample


def _sigma_from_lambda(lam: float) -> float:
    """Invert lambda = log(alpha / sigma) for alpha = 1 - sigma."""
    return 1.0 / (1.0 + math.exp(lam))


def _lam(sigma: float) -> float:
    """log(alpha / sigma), with sigma kept inside (0, 1): at sigma = 1 (pure noise, where FLUX's schedule
    starts) the log-SNR is -inf; LAMBDA_CLIP treats it as sigma = 1 - 1e-4 for the exponential integrators."""
    sigma = min(max(sigma, 1e-6), 1 - 1e-4)
    return math.log((1 - sigma) / sigma)


def _lms_coefficient(order: int, sigmas: np.ndarray, i: int, j: int) -> float:
    """Integral over [sigma_i, sigma_i+1] of the Lagrange basis polynomial j of sigma_i, sigma_i-1, ...
    (k-diffusion's linear multistep coefficients), computed exactly with polynomial arithmetic."""
    poly = np.polynomial.Polynomial([1.0])
    for k in range(order):
        if k != j:
            poly *= np.polynomial.Polynomial([-sigmas[i - k], 1.0]) / (sigmas[i - j] - sigmas[i - k])
    anti = poly.integ()
    return float(anti(sigmas[i + 1]) - anti(sigmas[i]))


def _ancestral(s: float, sn: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, renoise std) of an ancestral step on the flow path (rectified-flow form)."""
    if sn == 0:
        return 0.0, 0.0
    down = sn * (1 + (sn / s - 1) * eta)
    renoise = math.sqrt(max(sn**2 - (down * (1 - sn) / (1 - down)) ** 2, 0.0))
    return down, renoise


# ---- one-call samplers: step(sampler, i, x, x0, v, s, sn) -> x at sigma sn
# x: the latent at sigma s; v: the model's velocity there; x0 = x - s v, the denoised estimate.


def euler(sp: FlowSampler, i: int, x, x0, v, s: float, sn: float):
    """Euler on the flow ODE (what FlowMatchEulerDiscreteScheduler does), for the other spacings."""
    return x + (sn - s) * v


def euler_ancestral(sp: FlowSampler, i: int, x, x0, v, s: float, sn: float):
    """Euler to sigma_down, then re-noise (rectified-flow form of k-diffusion's `sample_euler_ancestral`, eta 1)."""
    down, std = _ancestral(s, sn)
    if sn == 0:
        return x0
    return sp.renoise(x + (down - s) * v, down, sn, std)


def ddpm(sp: FlowSampler, i: int, x, x0, v, s: float, sn: float):
    """Flow DDIM with eta 1: the DDPM posterior q(x_n | x, x0) (Ho et al. 2020; Song et al. 2021, eq. 16, in the
    (alpha, sigma) form)."""
    if sn == 0:
        return x0
    eps = (x - (1 - s) * x0) / s
    std = sn * math.sqrt(max(1 - ((1 - s) * sn / ((1 - sn) * s)) ** 2, 0.0))
    return (1 - sn) * x0 + math.sqrt(sn**2 - std**2) * eps + std * sp.noise(x)


def tcd(sp: FlowSampler, i: int, x, x0, v, s: float, sn: float):
    """Trajectory Consistency Distillation sampling, gamma 0.3 (Zheng et al. 2024)."""
    gamma = 0.3
    eps = (x - (1 - s) * x0) / s
    mid = (1 - gamma) * sn
    x_mid = (1 - mid) * x0 + mid * eps
    if sn == 0:
        return x0
    std = math.sqrt(max(sn**2 - ((1 - sn) * mid / (1 - mid)) ** 2, 0.0))
    return (1 - sn) / (1 - mid) * x_mid + std * sp.noise(x)


def lms(sp: FlowSampler, i: int, x, x0, v, s: float, sn: float):
    """Linear multistep, order 4 (k-diffusion `sample_lms`)."""
    sp.history.append(v)
    hist = sp.history[-4:]
    # First order into sigma = 0: extrapolating a cubic over that last, longest step is unstable on dense
    # low-sigma schedules (Karras); diffusers' multistep solvers do the same.
    order = 1 if sn == 0 else min(len(hist), 4, i + 1)
    sig = np.array(sp.sigma_list)
    return x + sum(_lms_coefficient(order, sig, i, j) * hist[-1 - j] for j in range(order))


def ipndm(sp: FlowSampler, i: int, x, x0, v, s: float, sn: float):
    """Improved pseudo-numerical method: Adams-Bashforth up to order 4 (Zhang & Chen 2023, the DEIS paper)."""
    sp.history.append(v)
    hist = sp.history[-4:]
    h = sn - s
    order = len(hist)
    if order == 1:
        return x + h * hist[-1]
    if order == 2:
        return x + h * (3 * hist[-1] - hist[-2]) / 2
    if order == 3:
        return x + h * (23 * hist[-1] - 16 * hist[-2] + 5 * hist[-3]) / 12
    return x + h * (55 * hist[-1] - 59 * hist[-2] + 37 * hist[-3] - 9 * hist[-4]) / 24


def _sde_step(sp: FlowSampler, x, x0, s: float, sn: float, eta: float = 1.0):
    """First-order DPM-Solver++ SDE step from s to sn with data estimate x0 (alpha = 1 - sigma)."""
    if sn == 0:
        return x0
    h = _lam(sn) - _lam(s)
    mean = (sn / s) * math.exp(-eta * h) * x + (1 - sn) * (-math.expm1(-(1 + eta) * h)) * x0
    return mean + sn * math.sqrt(-math.expm1(-2 * eta * h)) * sp.noise(x)


def dpmpp_3m_sde(sp: FlowSampler, i: int, x, x0, v, s: float, sn: float, eta: float = 1.0):
    """DPM-Solver++(3M) SDE, eta 1 (k-diffusion `sample_dpmpp_3m_sde`, with alpha = 1 - sigma)."""
    hist = sp.history
    hist.append((x0, s))
    if sn == 0:
        return x0
    h = _lam(sn) - _lam(s)
    h_eta = h * (eta + 1)
    out = (sn / s) * math.exp(-eta * h) * x + (1 - sn) * (-math.expm1(-h_eta)) * x0
    phi_2 = math.expm1(-h_eta) / h_eta + 1
    if len(hist) >= 3:
        (d1_x0, s1), (d2_x0, s2) = hist[-2], hist[-3]
        h_1, h_2 = _lam(s) - _lam(s1), _lam(s1) - _lam(s2)
        r0, r1 = h_1 / h, h_2 / h
        d1_0 = (x0 - d1_x0) / r0
        d1_1 = (d1_x0 - d2_x0) / r1
        d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        phi_3 = phi_2 / h_eta - 0.5
        out = out + (1 - sn) * (phi_2 * d1 - phi_3 * d2)
    elif len(hist) == 2:
        (d1_x0, s1) = hist[-2]
        r = (_lam(s) - _lam(s1)) / h
        out = out + (1 - sn) * phi_2 * (x0 - d1_x0) / r
    return out + sn * math.sqrt(-math.expm1(-2 * eta * h)) * sp.noise(x)


# ---- two-call samplers: a first model call at sigma s, a second at stage(s, sn); then finish(...)
# stage0 moves x to the second evaluation point; finish combines both evaluations into x at sn.


def _midpoint_log_sigma(s: float, sn: float) -> float:
    return math.exp((math.log(s) + math.log(sn)) / 2)


def heun_stage(s: float, sn: float) -> float:
    """2nd-order Heun (Karras et al. 2022, Alg. 1): the second call is at the next sigma."""
    return sn


def heun_finish(sp: FlowSampler, first: dict, x, x0, v, s: float, sn: float):
    return first["x"] + (sn - s) * (first["v"] + v) / 2


def dpm2_stage(s: float, sn: float) -> float:
    """DPM-Solver-2: the midpoint in log sigma (k-diffusion `sample_dpm_2`)."""
    return _midpoint_log_sigma(s, sn)


def dpm2_finish(sp: FlowSampler, first: dict, x, x0, v, s: float, sn: float):
    return first["x"] + (sn - s) * v


def dpm2_ancestral_stage(s: float, sn: float) -> float:
    """DPM2 to sigma_down, then re-noise (k-diffusion `sample_dpm_2_ancestral`): the midpoint towards sigma_down."""
    down, _ = _ancestral(s, sn)
    return _midpoint_log_sigma(s, down) if down > 0 else sn


def dpm2_ancestral_finish(sp: FlowSampler, first: dict, x, x0, v, s: float, sn: float):
    down, std = _ancestral(s, sn)
    return sp.renoise(first["x"] + (down - s) * v, down, sn, std)


def dpmpp_sde_stage(s: float, sn: float) -> float:
    """DPM-Solver++(2S) SDE, eta 1 (Lu et al. 2022; k-diffusion `sample_dpmpp_sde`, independent noise instead of a
    Brownian tree): the midpoint in lambda."""
    return _sigma_from_lambda(_lam(s) + 0.5 * (_lam(sn) - _lam(s)))


def dpmpp_sde_finish(sp: FlowSampler, first: dict, x, x0, v, s: float, sn: float):
    return _sde_step(sp, first["x"], x0, s, sn)  # with the midpoint's denoised estimate


ONE_CALL = {"euler": euler, "euler_ancestral": euler_ancestral, "ddpm": ddpm, "tcd": tcd, "lms": lms,
            "ipndm": ipndm, "dpmpp_3m_sde": dpmpp_3m_sde}  # fmt: skip
TWO_CALL = {
    "heun": (heun_stage, heun_finish),
    "dpm2": (dpm2_stage, dpm2_finish),
    "dpm2_ancestral": (dpm2_ancestral_stage, dpm2_ancestral_finish),
    "dpmpp_sde": (dpmpp_sde_stage, dpmpp_sde_finish),
}


class FlowSampler:
    """The flow samplers above behind diffusers' scheduler interface: one `step` per model call.

    Two-call samplers plan two model calls per step; their first call moves x to the second evaluation
    point (by Euler, or the SDE step for dpmpp_sde) and the second finishes the step.
    """

    def __init__(self, algorithm: str, config: dict, schedule: str = "default"):
        from diffusers.configuration_utils import FrozenDict

        if algorithm not in ONE_CALL and algorithm not in TWO_CALL:
            raise ValueError(f"unknown flow sampler {algorithm!r}")
        self.algorithm = algorithm
        self.schedule = schedule
        self.config = FrozenDict({**config, "_class_name": "FlowSampler"})
        self.order = 2 if algorithm in TWO_CALL else 1
        self.init_noise_sigma = 1.0
        self.generators: list[torch.Generator] | None = None
        self.timesteps = torch.zeros(0)
        self.sigmas = torch.zeros(0)
        self._plan: list[tuple[int, int, float]] = []  # per model call: (step, stage, sigma it is evaluated at)
        self._begin = 0
        self._call: int | None = None

    # --- diffusers scheduler interface -------------------------------------------------------
    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None, **_):
        n = num_inference_steps if num_inference_steps is not None else len(sigmas)
        s = flux_sigmas(n, dict(self.config), sigmas=sigmas, mu=mu, schedule=self.schedule)
        self.sigma_list = [*map(float, s), 0.0]
        self.sigmas = torch.tensor(self.sigma_list, dtype=torch.float32)
        plan = []
        for i in range(n):
            plan.append((i, 0, self.sigma_list[i]))
            if self.algorithm in TWO_CALL and self.sigma_list[i + 1] > 0:
                plan.append((i, 1, TWO_CALL[self.algorithm][0](self.sigma_list[i], self.sigma_list[i + 1])))
        self._plan = plan
        self.timesteps = torch.tensor([p[2] * 1000 for p in plan], dtype=torch.float32, device=device)
        self.num_inference_steps = n
        self._begin, self._call = 0, None
        self.history: list = []  # what multistep samplers keep of earlier steps, newest last
        self._first: dict = {}  # a two-call step's first evaluation

    def set_begin_index(self, begin_index: int = 0):
        self._begin = begin_index

    def scale_noise(self, sample, timestep, noise=None):
        return flow_scale_noise(sample, timestep, noise)

    def step(self, model_output, timestep, sample, return_dict: bool = True, **_):
        if self._call is None:
            self._call = self._begin
        i, stage, sigma = self._plan[self._call]
        self._call += 1
        x = sample.to(torch.float32)
        v = model_output.to(torch.float32)
        out = self._advance(i, stage, sigma, x, v).to(sample.dtype)
        if not return_dict:
            return (out,)
        from diffusers.schedulers.scheduling_utils import SchedulerOutput

        return SchedulerOutput(prev_sample=out)

    def _advance(self, i: int, stage: int, sigma: float, x, v):
        s, sn = self.sigma_list[i], self.sigma_list[i + 1]
        x0 = x - sigma * v
        if self.algorithm in ONE_CALL:
            return ONE_CALL[self.algorithm](self, i, x, x0, v, s, sn)
        stage_sigma, finish = TWO_CALL[self.algorithm]
        if stage == 1:
            return finish(self, self._first, x, x0, v, s, sn)
        if sn == 0:  # last step: the denoised estimate
            return x0
        self._first = {"x": x, "v": v, "x0": x0}
        target = stage_sigma(s, sn)
        if self.algorithm == "dpmpp_sde":
            return _sde_step(self, x, x0, s, target)
        return x + (target - s) * v  # Euler to the stage point

    # --- noise -----------------------------------------------------------------------------
    def noise(self, like: torch.Tensor) -> torch.Tensor:
        if self.generators is None:
            raise RuntimeError(f"{self.algorithm} is stochastic: set .generators (one per image) first")
        return torch.stack([torch.randn(like.shape[1:], generator=g, dtype=torch.float32) for g in self.generators]).to(
            like.device
        )

    def renoise(self, x_down, down: float, sn: float, std: float):
        return (1 - sn) / (1 - down) * x_down + std * self.noise(x_down)


class FluxSigmas:
    """Mixin for diffusers' flow-capable schedulers (DPM-Solver++, UniPC, DEIS, LCM): FLUX's sigma schedule
    (or a spacing of it) replaces the scheduler's own, seeded per-image noise goes to stochastic steps,
    and `scale_noise` starts img2img on the flow path."""

    daguerre_schedule = "default"
    daguerre_family: dict = {}
    generators: list[torch.Generator] | None = None

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None, **kw):
        n = num_inference_steps if num_inference_steps is not None else len(sigmas)
        s = flux_sigmas(n, self.daguerre_family, sigmas=sigmas, mu=mu, schedule=self.daguerre_schedule)
        # FLUX starts at sigma = 1 exactly, where alpha = 0 and the log-SNR these solvers use is -inf
        # (diffusers' own flow sigmas stop at 0.999); start a hair below it.
        s = np.minimum(s, 1 - 1e-4)
        super().set_timesteps(num_inference_steps=n, device=device)
        # Solvers without a zero-final-sigma option (DEIS) take the log of the last sigma: end at 1e-6,
        # where the latent is the denoised estimate to within 1e-6 of the noise.
        final = 0.0 if "final_sigmas_type" in self.config else 1e-6
        self.sigmas = torch.tensor([*s, final], dtype=torch.float32)
        self.timesteps = torch.tensor(s * 1000, dtype=torch.float32, device=device)
        self.num_inference_steps = n

    def scale_noise(self, sample, timestep, noise=None):
        return flow_scale_noise(sample, timestep, noise)

    def step(self, model_output, timestep, sample, *args, **kwargs):
        import inspect

        if self.generators is not None and "generator" in inspect.signature(super().step).parameters:
            kwargs.setdefault("generator", self.generators)
        return super().step(model_output, timestep, sample, *args, **kwargs)
