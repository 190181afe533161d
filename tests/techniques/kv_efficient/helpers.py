"""Shared helpers for the KV-Efficient tests; ``tiny_gate`` is the contract's (:mod:`vlaccel.testing.kv_gate`)."""

from __future__ import annotations

import numpy as np
import torch

from vlaccel.testing.kv_gate import tiny_gate

__all__ = ["tiny_gate", "obs_embeds", "lm_history", "random_frames"]


def obs_embeds(policy, n: int, seed: int = 0) -> list[torch.Tensor]:
    """``n`` random observation blocks [1, tokens_per_frame, D] (the LM side of history mode, no vision/head)."""
    g = torch.Generator().manual_seed(seed)
    shape = (1, policy.config.tokens_per_frame, policy.config.lm_hidden)
    return [torch.randn(shape, generator=g) for _ in range(n)]


def lm_history(policy, blocks, instruction: str = "push the puck to the goal", on_step=None) -> torch.Tensor:
    """History mode's LM path: reset (instruction prefix) then one LM forward per block; cognition [F, D]."""
    policy.reset(instruction)
    out = []
    with torch.no_grad():
        for t, block in enumerate(blocks):
            hidden = policy.run_language_model(block, policy.observation_layout(), policy.cache)
            out.append(hidden[0, -1])
            if on_step is not None:
                on_step(t, policy.cache)
    return torch.stack(out)


def random_frames(size: int, n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
