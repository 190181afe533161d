"""Shared helpers for the KV-Efficient tests (also used by tests/contract/cases.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

_GATES: dict[tuple[str, int], str] = {}


def tiny_gate(policy, steps: int = 3) -> str:
    """Path of a small gate trained for ``policy`` (cached per policy fingerprint for the test session).

    Small hidden sizes keep the gate's FLOPs below the attention it saves on the tiny policy's 3-frame contract.
    """
    from vlaccel.training.kv_gate import GateTrainConfig, synthetic_episodes, train_and_save
    from vlaccel.weights import fingerprint

    fp = fingerprint(policy)
    if (fp, steps) not in _GATES:
        out = Path(tempfile.mkdtemp(prefix="vlaccel-kv-gate-")) / f"{fp}-{steps}"
        cfg = GateTrainConfig(window=policy.config.tokens_per_frame, budget=1, max_frames=4, steps=steps,
                              agg_hidden=8, lstm_hidden=8)
        with torch.random.fork_rng(devices=[]):
            train_and_save(policy, synthetic_episodes(policy.config, 2, 4), cfg, out, progress=False)
        _GATES[fp, steps] = str(out)
    return _GATES[fp, steps]


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
