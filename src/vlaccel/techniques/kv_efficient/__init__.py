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
summaries), :mod:`.handler` (``vlaccel.apply`` integration), :mod:`.presets` (``kv-efficient``, ``kv-streaming``
and the benchmark's baselines), :mod:`.train` (``vlaccel train-kv-gate``).
"""

from vlaccel.techniques.kv_efficient.cache import ChunkedGatedCache
from vlaccel.techniques.kv_efficient.config import RETENTIONS, KVEfficientConfig
from vlaccel.techniques.kv_efficient.gate import KVGate, load_gate, save_gate
from vlaccel.techniques.kv_efficient.presets import benchmark_settings

__all__ = ["KVEfficientConfig", "ChunkedGatedCache", "KVGate", "load_gate", "save_gate", "RETENTIONS",
           "benchmark_settings"]
