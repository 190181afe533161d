"""``HeadCacheConfig``: EfficientVLA's static feature cache in the diffusion action head (arXiv 2506.10100, Sec. 3.4).

In every DiT block the two residual-branch outputs, ``h_attn = Attn(LN(z))`` and ``h_mlp = MLP(LN(.))``
(paper Eqs. 6-7), are recomputed only at denoising steps ``s`` with ``s % interval == 0`` and reused at the
others (Eqs. 8-11): with 10 DDIM steps and interval 5, attention and MLP run at steps 0 and 5 only.
Embedders, positional terms, the final layer and the sampler always run.

Flow matching (pi0): the same cache across the Euler steps of the action expert. The branches are each expert
layer's ``self_attn`` and ``mlp`` (``ModelAdapter.action_head_branches``); at a reused step the attention is not
run at all, so no layer appends the step's keys and values to the prefix cache, ``sample_actions``' crop back to
the prefix then removes nothing, and every refresh step still reads the prefix alone (all layers refresh at the
same steps, so the cache's layers never disagree in length).

Mechanism: a forward override, no module replacement. Each branch (located by the adapter) gets, as its instance
``forward``, the bound method of a :class:`BranchCache` that reads the sampler's step index through the adapter
(which starts counting the steps when applied, ``ModelAdapter.track_denoise_step``). The modules, their hooks and the model's state-dict keys stay as they are, so an
accelerated policy saves and loads like the plain one, and a gate fingerprint is unchanged by head caching. The
cache holds the whole CFG batch ([2B, chunk + 1, W]); step 0 always recomputes, so each new observation starts
fresh, and it is also cleared at every episode reset and on ``remove()``. ``interval=1`` recomputes every step:
bit-identical to the uncached head. In training mode the branches always recompute (a training forward has no
step index). The state is objects and bound methods, no closures: ``copy.deepcopy`` of the policy gives a copy
whose branches read the copy's sampler and hold their own cached features.

Why not ``diffusers.hooks.HookRegistry``: it installs the same kind of instance ``forward`` override, and a plain
reuse hook on it runs as fast as this one: on the bundled DiT (interval 5, 1 CPU thread) three runs of
``scripts/bench_head_cache_hooks.py`` gave 16.8 / 16.0 / 15.7 ms per sample for this cache against 17.4 / 13.6 /
15.4 ms for diffusers' (uncached: 57-60 ms), no consistent winner within this machine's noise. Equal speed, so the
choice is the dependency: ``diffusers.hooks`` is not in diffusers 0.30, the oldest release vlaccel supports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vlaccel.config import TechniqueConfig

__all__ = ["HeadCacheConfig", "BranchCache", "DenoiseStep"]


@dataclasses.dataclass(frozen=True)
class HeadCacheConfig(TechniqueConfig):
    """Recompute DiT branch features every ``interval`` denoising steps, reuse them in between (1 = no caching)."""

    interval: int = 5

    name = "head_cache"
    handler = "vlaccel.techniques.head_cache:HeadCacheHandler"
    order = 70
    requires = ("action_head",)

    def __post_init__(self) -> None:
        if not isinstance(self.interval, int) or isinstance(self.interval, bool) or self.interval < 1:
            raise ValueError(f"HeadCacheConfig.interval must be an integer >= 1 (1 = recompute every step), "
                             f"got {self.interval!r}")

    def is_neutral(self, model: Any, adapter: Any) -> bool:  # noqa: ARG002
        return self.interval == 1


class DenoiseStep:
    """Reads the sampler's current step index of ``model`` through its adapter (an object, so it is deep-copied
    with the model it reads)."""

    def __init__(self, adapter: Any, model: Any):
        self.adapter, self.model = adapter, model

    def __call__(self) -> int:
        return self.adapter.denoise_step(self.model)


class BranchCache:
    """One residual branch's cache (Eqs. 8-11): ``forward`` computes the branch at refresh steps and returns the
    stored output otherwise. Installed as the branch's instance ``forward``; the module itself is untouched."""

    def __init__(self, branch: nn.Module, interval: int, step: Callable[[], int]):
        self.branch, self.interval, self.step = branch, interval, step
        self.previous = branch.__dict__.get("forward")  # an instance forward installed before ours, if any
        self.cached: Any = None
        self.input_shape: torch.Size | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        # x [2B, chunk+1, W] (reference DiT; pi0's expert: [B, 1+chunk, W], keyword hidden_states) -> a tensor
        # of the same shape, or the attention's (output, weights)
        x = args[0] if args else kwargs["hidden_states"]
        refresh = self.branch.training or self.step() % self.interval == 0
        if refresh or self.cached is None or self.input_shape != x.shape:
            forward = self.previous if self.previous is not None else type(self.branch).forward.__get__(self.branch)
            self.cached, self.input_shape = forward(*args, **kwargs), x.shape
        return self.cached

    def install(self) -> None:
        self.branch.forward = self.forward

    def uninstall(self) -> None:
        if self.branch.__dict__.get("forward") != self.forward:
            raise RuntimeError(f"the forward of {type(self.branch).__name__} was replaced after head caching was "
                               "applied; remove that change first (undo in reverse order)")
        if self.previous is None:
            del self.branch.__dict__["forward"]
        else:
            self.branch.forward = self.previous
        self.cached = None

    def clear(self) -> None:
        self.cached = None


class _Applied:
    def __init__(self, caches: list[BranchCache], step_tracker: Any):
        self.caches, self.step_tracker = caches, step_tracker
        self.reset_handle: Any = None

    def reset(self) -> None:
        for c in self.caches:
            c.clear()

    def remove(self) -> None:
        if self.reset_handle is not None:
            self.reset_handle.remove()
        for c in reversed(self.caches):
            c.uninstall()
        self.step_tracker.remove()


class HeadCacheHandler:
    def validate(self, model: Any, config: HeadCacheConfig, adapter: Any, pending: tuple = ()) -> None:
        adapter.action_head_branches(model)  # raises for models without an action head of cacheable blocks

    def apply(self, model: Any, config: HeadCacheConfig, adapter: Any, prepared: None = None) -> _Applied:
        step = DenoiseStep(adapter, model)
        caches = [BranchCache(branch, config.interval, step) for branch in adapter.action_head_branches(model)]
        state = _Applied(caches, adapter.track_denoise_step(model))
        for c in caches:
            c.install()
        state.reset_handle = adapter.register_reset_hook(model, state.reset)
        return state
