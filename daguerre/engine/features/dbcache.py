"""acceleratorOptions.dbCache on cache-dit's DBCache ("DB Cache (CacheDiT)", as the reference names it).

cache-dit runs the first Fn transformer blocks every step and, when their output residual changed by less
than the threshold since the last full step, reuses the cached residual of the remaining blocks (Bn trailing
blocks may run too). The reference's fields map to its DBCacheConfig:

  dbCacheThreshold          residual_diff_threshold            (default 0.08: cache-dit's FLUX.1-dev setting)
  cacheStartStep/Percentage max_warmup_steps                   (default 8 of 28 steps, the same share of others)
  cacheEndStep/Percentage   steps_computation_mask: 1 (compute) from the end step on
  cacheMaxConsecutiveSteps  max_continuous_cached_steps        (default 3)
  dbCacheSkipInterval       a full step at least every N steps: caps max_continuous_cached_steps at N - 1
                            (default 5; cache-dit's force_refresh would re-enter warm-up, so it is not used)
  (fixed)                   Fn_compute_blocks 8 (at most the double blocks there are), Bn_compute_blocks 0:
                            cache-dit's recommended F8B0 for FLUX.1-dev

The cache is switched on for one pipeline call and off again (the transformer is then as before, bit for bit).
"""

from __future__ import annotations

import logging

from daguerre.engine.stepcache import CacheStats
from daguerre.request import AccelOptions

FN_BLOCKS = 8  # cache-dit's FLUX.1-dev recommendation: F8B0
WARMUP_SHARE = 8 / 28  # ... with 8 warm-up steps of 28
_PATCHED = ("forward", "_is_patched", "_diffusers_hook")  # what cache-dit sets on the transformer instance


def config_for(options: AccelOptions, steps: int, double_blocks: int):
    """cache-dit's DBCacheConfig for these acceleratorOptions on a run of `steps`."""
    import cache_dit

    start, end = options.window(steps) if _has_window(options) else (round(steps * WARMUP_SHARE), steps)
    mask = [1 if i < start or i >= end else 0 for i in range(steps)] if end < steps else None
    return cache_dit.DBCacheConfig(
        Fn_compute_blocks=max(1, min(FN_BLOCKS, double_blocks)),
        Bn_compute_blocks=0,
        residual_diff_threshold=options.db_cache_threshold,
        max_warmup_steps=max(1, start),
        # a full step at least every dbCacheSkipInterval steps, and no more than cacheMaxConsecutiveSteps cached
        max_continuous_cached_steps=max(1, min(options.cache_max_consecutive, options.db_cache_skip_interval - 1)),
        num_inference_steps=steps,
        steps_computation_mask=mask,
    )


def _has_window(o: AccelOptions) -> bool:
    return any(v is not None for v in (o.cache_start_step, o.cache_end_step, o.cache_start_percent,
                                       o.cache_end_percent))  # fmt: skip


class CacheDiT:
    """A context manager: cache-dit's DBCache on `pipe` for one call; `stats` counts the full and cached steps."""

    def __init__(self, pipe, options: AccelOptions, steps: int):
        self.pipe, self.options, self.steps = pipe, options, steps
        self.stats = CacheStats()

    def __enter__(self):
        import cache_dit

        logging.getLogger("cache_dit").setLevel(logging.WARNING)
        t = self.pipe.transformer
        # cache-dit patches the transformer instance's forward (and leaves it patched after disable_cache):
        # keep what was there, so the next request without dbCache runs exactly the model as before.
        # It also re-registers the block lists last, and diffusers' set_ip_adapter_scale relies on the order
        # of the submodules (double blocks first): keep that too.
        self._saved = {k: t.__dict__[k] for k in _PATCHED if k in t.__dict__}
        self._order = list(t._modules)
        cache_dit.enable_cache(self.pipe, cache_config=config_for(self.options, self.steps,
                                                                  len(t.transformer_blocks)))  # fmt: skip
        # Count what really ran: transformer calls, and the calls in which its last block ran (a full step).
        self._calls, self._full = 0, []
        self._hooks = [
            t.register_forward_pre_hook(lambda *a: setattr(self, "_calls", self._calls + 1)),
            t.single_transformer_blocks[-1].register_forward_hook(lambda *a: self._full.append(self._calls - 1)),
        ]
        return self

    def __exit__(self, *exc):
        import cache_dit

        for h in self._hooks:
            h.remove()
        cache_dit.disable_cache(self.pipe)
        t = self.pipe.transformer
        for k in _PATCHED:
            t.__dict__.pop(k, None)
        t.__dict__.update(self._saved)
        if list(t._modules) != self._order and set(t._modules) == set(self._order):
            t._modules = type(t._modules)((k, t._modules[k]) for k in self._order)
        passes = max(1, round(self._calls / self.steps)) if self._calls else 1  # 2 with true CFG
        full = {c // passes for c in dict.fromkeys(self._full)}
        ran = range(self._calls // passes)
        self.stats.skipped_steps = [i for i in ran if i not in full]
        self.stats.skipped = len(self.stats.skipped_steps)
        self.stats.computed = len(ran) - self.stats.skipped
        return False
