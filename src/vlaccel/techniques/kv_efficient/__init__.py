"""KV-Efficient VLA (arXiv 2509.21354): an RNN-gated chunked KV cache for policies that keep history in the LM.

    import vlaccel
    from vlaccel import KVEfficientConfig

    policy = vlaccel.load_policy("reference")
    with vlaccel.applied(policy, KVEfficientConfig(window=132, budget=4, sinks=132)):  # shipped gate
        policy.reset("reach the goal you saw at the start")
        for frame in frames:
            actions = policy.step(frame)                                      # KV memory stays bounded

Modules: :mod:`.config` (the config), :mod:`.cache` (the transformers ``Cache``), :mod:`.gate` (MLP aggregator,
LSTM gate, gate files), :mod:`.retention` (the method and its baselines), :mod:`.rope` (RoPE-correct
summaries), :mod:`.resolve` (settings and gate checked against a model), :mod:`.handler` (``vlaccel.apply``
integration). Around the technique, elsewhere: its presets (:mod:`vlaccel.presets.kv_efficient`), gate training
and ``vlaccel train-kv-gate`` (:mod:`vlaccel.training.kv_gate`, :mod:`vlaccel.training.kv_gate_cli`), the
equal-budget comparison of retentions (:mod:`vlaccel.bench.kv_retention`).

Importing this package loads nothing: each name below is imported from its module on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

_EXPORTS = {  # name -> the module that defines it
    "KVEfficientConfig": "vlaccel.techniques.kv_efficient.config",
    "RETENTIONS": "vlaccel.techniques.kv_efficient.config",
    "ChunkedGatedCache": "vlaccel.techniques.kv_efficient.cache",
    "KVGate": "vlaccel.techniques.kv_efficient.gate",
    "load_gate": "vlaccel.techniques.kv_efficient.gate",
    "save_gate": "vlaccel.techniques.kv_efficient.gate",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    """An exported name, or a submodule (``vlaccel.techniques.kv_efficient.gate``), imported on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
