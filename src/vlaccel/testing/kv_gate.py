"""A small KV-Efficient gate trained for a tiny policy, for the gated retention's contract case."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

__all__ = ["tiny_gate"]

_GATES: dict[tuple[str, int], str] = {}


def tiny_gate(policy: Any, steps: int = 3) -> str:
    """Path of a small gate trained for ``policy`` (kept per policy fingerprint for the life of the process).

    Small hidden sizes keep the gate's FLOPs below the attention it saves on the tiny policy's 3-frame contract.
    Training draws from its own random stream, so the caller's random state is left as it was.
    """
    import torch

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
