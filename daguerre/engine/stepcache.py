"""TeaCache for the FLUX.1 transformer (acceleratorOptions.teaCache; dbCache is cache-dit's: features/dbcache.py).

TeaCache skips whole transformer passes on steps where the input has barely changed, and rebuilds
the output from the current step's embeddings plus the residual the blocks added at the last
computed step (hidden state entering norm_out minus the x_embedder output), so a skipped step
still tracks the current timestep's modulation. TeaCache for FLUX (Liu et al. 2024, "Timestep
Embedding Tells: It's Time to Cache for Video Diffusion Model"; ali-vilab/TeaCache, TeaCache4FLUX):
the relative L1 change of the first block's modulated input, rescaled by the authors' published
polynomial for FLUX.1, is accumulated; a step is skipped while the sum stays under
teaCacheDistance, and a computed step resets it.

Common rules: the first step of a run always computes; caching acts only inside
[cacheStartStep, cacheEndStep) (or the percentage forms); at most cacheMaxConsecutiveSteps
steps are skipped in a row. With true CFG the positive and negative passes keep separate caches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from daguerre.request import AccelOptions, resolve_accel

# TeaCache4FLUX's rescaling polynomial (highest power first), from the TeaCache authors' repository.
TEACACHE_FLUX_COEFFICIENTS = (4.98651651e02, -2.83781631e02, 5.58554382e01, -3.82021401e00, 2.64230861e-01)


@dataclass
class _Branch:
    """Cache state of one pass kind (the positive pass, or true CFG's negative pass)."""

    residual: torch.Tensor | None = None  # blocks' contribution at the last computed step
    probe: torch.Tensor | None = None  # the first block's modulated input at the previous step
    accumulated: float = 0.0
    consecutive: int = 0  # skipped in a row


@dataclass
class CacheStats:
    computed: int = 0
    skipped: int = 0
    skipped_steps: list[int] = field(default_factory=list)


class StepCache:
    """Wraps one FLUX transformer's forward for the duration of a pipeline call (a context manager)."""

    def __init__(self, transformer, options: AccelOptions, steps: int, order: int = 1):
        self.t = transformer
        self.o = options = resolve_accel(options)  # the defaults of the cache that is on, filled in
        self.steps = steps
        self.order = max(order, 1)  # model calls per step (2-call samplers)
        self.start, self.end = options.window(steps)
        self.max_consecutive = options.cache_max_consecutive
        self.stats = CacheStats()
        self._branches: dict[int, _Branch] = {}
        self._timesteps: list[float] = []
        self._calls_this_t = 0
        self._captured: dict[str, torch.Tensor] = {}

    def __enter__(self) -> StepCache:
        self._own = self.t.__dict__.get("forward")  # an instance-level forward (another hook) to restore
        self._forward = self.t.forward
        self.t.forward = self._wrapped
        self._hooks = [
            self.t.x_embedder.register_forward_hook(lambda m, i, o: self._captured.__setitem__("embedded", o)),
            self.t.norm_out.register_forward_pre_hook(lambda m, args: self._captured.__setitem__("final", args[0])),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._hooks:
            h.remove()
        if self._own is not None:
            self.t.forward = self._own
        else:
            del self.t.forward  # back to the class's forward

    # ---- the wrapped forward
    def _wrapped(
        self,
        hidden_states,
        encoder_hidden_states=None,
        pooled_projections=None,
        timestep=None,
        img_ids=None,
        txt_ids=None,
        guidance=None,
        joint_attention_kwargs=None,
        return_dict=True,
        **kw,
    ):
        t_value = float(timestep.flatten()[0])
        if not self._timesteps or self._timesteps[-1] != t_value:
            self._timesteps.append(t_value)
            self._calls_this_t = 0
        branch_id = self._calls_this_t
        self._calls_this_t += 1
        branch = self._branches.setdefault(branch_id, _Branch())
        step = (len(self._timesteps) - 1) // self.order
        args = dict(
            hidden_states=hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            pooled_projections=pooled_projections,
            timestep=timestep,
            img_ids=img_ids,
            txt_ids=txt_ids,
            guidance=guidance,
            joint_attention_kwargs=joint_attention_kwargs,
            return_dict=False,
            **kw,
        )
        # The probe (the modulated input) is only read inside the window, so it is
        # computed from the step before the window on; elsewhere the step simply computes.
        skip = False
        if self.start - 1 <= step < self.end:
            temb = self._temb(timestep, guidance, pooled_projections, hidden_states.dtype)
            embedded = self.t.x_embedder(hidden_states)
            allowed = (
                branch.residual is not None
                and self.start <= step
                and branch.consecutive < self.max_consecutive
                and not kw.get("controlnet_block_samples")  # ControlNet residuals differ every step
            )
            skip = self._decide(branch, embedded, temb, allowed)
        if skip:
            branch.consecutive += 1
            self.stats.skipped += 1
            self.stats.skipped_steps.append(step)
            out = self.t.proj_out(self.t.norm_out(embedded + branch.residual, temb))
        else:
            branch.consecutive = 0
            branch.accumulated = 0.0
            self.stats.computed += 1
            out = self._forward(**args)[0]
            branch.residual = self._captured["final"] - self._captured["embedded"]
        if not return_dict:
            return (out,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=out)

    def _temb(self, timestep, guidance, pooled, dtype):
        ts = timestep.to(dtype) * 1000
        if guidance is None:
            return self.t.time_text_embed(ts, pooled)
        return self.t.time_text_embed(ts, guidance.to(dtype) * 1000, pooled)

    def _decide(self, branch: _Branch, embedded, temb, allowed: bool) -> bool:
        modulated = self.t.transformer_blocks[0].norm1(embedded, emb=temb)[0]
        skip = False
        if branch.probe is not None:
            rel = ((modulated - branch.probe).abs().mean() / branch.probe.abs().mean().clamp_min(1e-12)).item()
            branch.accumulated += float(np.polyval(TEACACHE_FLUX_COEFFICIENTS, rel))
            distance = self.o.tea_cache_distance
            skip = allowed and distance > 0 and branch.accumulated < distance
        branch.probe = modulated
        return skip
