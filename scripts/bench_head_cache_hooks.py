"""The head cache's mechanism against diffusers' hook registry, on the bundled DiT (same computation).

vlaccel's ``HeadCacheConfig(interval=5)`` against a plain reuse hook (recompute at steps with step % 5 == 0,
else return the stored output) registered on each DiT branch through ``diffusers.hooks.HookRegistry``; both
against the uncached head. Alternating, medians over repeats, 1 thread; prints per-sample times and whether the
outputs are equal. Needs a diffusers with ``diffusers.hooks`` (``bash scripts/setup.sh --newest``):

    .venv-newest/bin/python scripts/bench_head_cache_hooks.py [repeats]
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from diffusers.hooks import HookRegistry, ModelHook

import vlaccel
from vlaccel.techniques import HeadCacheConfig

INTERVAL, CALLS = 5, 5


class ReuseHook(ModelHook):
    """EfficientVLA's static reuse (Eqs. 8-11) as a diffusers hook."""

    def __init__(self, dit: torch.nn.Module):
        super().__init__()
        self.dit, self.cached = dit, None

    def new_forward(self, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.dit.denoise_step % INTERVAL == 0 or self.cached is None:
            self.cached = self.fn_ref.original_forward(x)
        return self.cached


def main(repeats: int) -> None:
    torch.set_num_threads(1)
    policy = vlaccel.load_policy("reference").eval()
    head, dit = policy.action_head, policy.action_head.dit
    z = torch.randn(1, policy.config.lm_hidden, generator=torch.Generator().manual_seed(0))
    branches = [getattr(b, n) for b in dit.blocks for n in ("attn_branch", "mlp_branch")]

    def sample() -> torch.Tensor:
        with torch.no_grad():
            return head.sample(z, generator=torch.Generator().manual_seed(0))

    def vlaccel_cache():
        return vlaccel.apply(policy, HeadCacheConfig(interval=INTERVAL)).remove

    def diffusers_hooks():
        registries = [HookRegistry.check_if_exists_or_initialize(b) for b in branches]
        for r in registries:
            r.register_hook(ReuseHook(dit), "reuse")
        return lambda: [r.remove_hook("reuse") for r in registries]

    variants = {"uncached": lambda: (lambda: None), "vlaccel HeadCacheConfig": vlaccel_cache,
                "diffusers HookRegistry": diffusers_hooks}
    outputs, times = {}, {k: [] for k in variants}
    for _ in range(repeats):
        for name, install in variants.items():
            undo = install()
            outputs[name] = sample()  # also the warm-up
            start = time.perf_counter()
            for _ in range(CALLS):
                sample()
            times[name].append((time.perf_counter() - start) / CALLS)
            undo()
    base = statistics.median(times["uncached"])
    for name in variants:
        m = statistics.median(times[name])
        same = torch.equal(outputs[name], outputs["vlaccel HeadCacheConfig"])
        print(f"{name:24s} {m * 1e3:7.2f} ms/sample  {base / m:5.2f}x  output equal to vlaccel's: {same}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
