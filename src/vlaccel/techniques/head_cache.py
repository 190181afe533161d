"""``HeadCacheConfig``: EfficientVLA's static feature cache in the diffusion action head (arXiv 2506.10100, Sec. 3.4).

In every DiT block the two residual-branch outputs, ``h_attn = Attn(LN(z))`` and ``h_mlp = MLP(LN(.))``
(paper Eqs. 6-7), are recomputed only at denoising steps ``s`` with ``s % interval == 0`` and reused at the
others (Eqs. 8-11): with 10 DDIM steps and interval 5, attention and MLP run at steps 0 and 5 only.
Embedders, positional terms, the final layer and the sampler always run.

Mechanism: module replacement. Each block's ``attn_branch`` / ``mlp_branch`` (located by the adapter) is wrapped
in a :class:`CachedBranch` that reads the sampler's step index through the adapter. The cache holds the whole
CFG batch ([2B, chunk + 1, W]); step 0 always recomputes, so each new observation starts fresh, and it is also
cleared at every episode reset and on ``remove()``. ``interval=1`` recomputes every step: bit-identical to the
uncached head. In training mode the wrappers always recompute (a training forward has no step index).
While applied, the blocks' state-dict keys gain an ``.inner`` segment; ``remove()`` restores the modules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vlaccel.config import TechniqueConfig

__all__ = ["HeadCacheConfig", "CachedBranch"]

BRANCHES = ("attn_branch", "mlp_branch")


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


class CachedBranch(nn.Module):
    """Wraps one residual branch: ``inner(x)`` at refresh steps, the stored output otherwise."""

    def __init__(self, inner: nn.Module, interval: int, step: Callable[[], int]):
        super().__init__()
        self.inner = inner
        self.interval = interval
        self._step = step  # a plain callable, not a submodule
        self.cached: torch.Tensor | None = None
        self.train(inner.training)  # a new Module starts in training mode; follow the wrapped branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [2B, chunk+1, W] -> same
        refresh = self.training or self._step() % self.interval == 0
        if refresh or self.cached is None or self.cached.shape != x.shape:
            self.cached = self.inner(x)
        return self.cached

    def clear(self) -> None:
        self.cached = None


class _Applied:
    def __init__(self, blocks: list[nn.Module], wrappers: list[tuple[nn.Module, str, CachedBranch]]):
        self.blocks, self.wrappers = blocks, wrappers
        self.reset_handle: Any = None

    def reset(self) -> None:
        for _, _, w in self.wrappers:
            w.clear()

    def remove(self) -> None:
        self.reset()
        if self.reset_handle is not None:
            self.reset_handle.remove()
        for block, name, wrapper in self.wrappers:
            setattr(block, name, wrapper.inner)


class HeadCacheHandler:
    def validate(self, model: Any, config: HeadCacheConfig, adapter: Any, pending: tuple = ()) -> None:
        blocks = adapter.action_head_blocks(model)  # raises for models without a diffusion head
        adapter.denoise_step(model)
        for i, block in enumerate(blocks):
            missing = [n for n in BRANCHES if not isinstance(getattr(block, n, None), nn.Module)]
            if missing:
                raise NotImplementedError(f"action-head block {i} ({type(block).__name__}) has no {missing}: "
                                          "head caching needs pre-LN blocks exposing attn_branch / mlp_branch")

    def apply(self, model: Any, config: HeadCacheConfig, adapter: Any, prepared: None = None) -> _Applied:
        blocks = list(adapter.action_head_blocks(model))
        step = lambda: adapter.denoise_step(model)  # noqa: E731
        wrappers = []
        for block in blocks:
            for name in BRANCHES:
                wrapper = CachedBranch(getattr(block, name), config.interval, step)
                setattr(block, name, wrapper)
                wrappers.append((block, name, wrapper))
        state = _Applied(blocks, wrappers)
        state.reset_handle = adapter.register_reset_hook(model, state.reset)
        return state
