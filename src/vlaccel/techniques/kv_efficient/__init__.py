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
summaries), :mod:`.handler` (``vlaccel.apply`` integration), :mod:`.train` (``vlaccel train-kv-gate``).
"""

from vlaccel import presets
from vlaccel.techniques.kv_efficient import handler as _handler  # noqa: F401  (registers the handler)
from vlaccel.techniques.kv_efficient.cache import ChunkedGatedCache
from vlaccel.techniques.kv_efficient.config import RETENTIONS, KVEfficientConfig
from vlaccel.techniques.kv_efficient.gate import KVGate, load_gate, save_gate

__all__ = ["KVEfficientConfig", "ChunkedGatedCache", "KVGate", "load_gate", "save_gate", "RETENTIONS",
           "benchmark_settings"]

#: settings of the presets and the benchmark, in the default policy's 66-token frames (chunk = one frame): the
#: episode's first 2 frames kept raw (SINKS: the frames every training window of the reference policy starts
#: with, ``train-reference --window-anchor 2``), a 2-frame raw window and 4 summaries, i.e. at most
#: P + 132 + 4 + 65 + 132 tokens per layer. Evicting the first frames is a shift the policy never saw: with
#: streaming retention it solved reach-v3 on 4/20 seeds without them and 11/20 with the first frame (README).
WINDOW, BUDGET, SINKS = 132, 4, 132


@presets.register("kv-efficient",
                  "KV-Efficient gated chunked KV cache (shipped gate; first 2 frames and last 2 raw, 4 summaries)")
def _kv_efficient() -> list[KVEfficientConfig]:
    return [KVEfficientConfig(window=WINDOW, budget=BUDGET, sinks=SINKS)]


@presets.register("kv-streaming",
                  "StreamingLLM-style KV cache: instruction + first 2 frames + last 2 frames, the rest dropped")
def _kv_streaming() -> list[KVEfficientConfig]:
    return [KVEfficientConfig(window=WINDOW, sinks=SINKS, retention="streaming")]


def benchmark_settings(include_gated: bool | None = None, policy=None) -> dict[str, list[KVEfficientConfig]]:
    """The method and its baselines at one KV budget, for ``vlaccel bench --history``.

    ``include_gated``: None = only if a gate is shipped with this install and, when ``policy`` is given, it was
    trained for that policy (a gate only fits the exact weights it was trained with).
    """
    import json

    from vlaccel.techniques.kv_efficient.gate import GATE_META, GATE_WEIGHTS
    from vlaccel.techniques.kv_efficient.resolve import shipped_gate_dir

    if include_gated is None:
        folder = shipped_gate_dir()
        include_gated = (folder / GATE_WEIGHTS).exists()
        if include_gated and policy is not None:
            from vlaccel.models.io import fingerprint

            meta = json.loads((folder / GATE_META).read_text())
            include_gated = meta.get("fingerprint") == fingerprint(policy)
    kept = {"window": WINDOW, "sinks": SINKS}
    settings = {
        "kv-mean": [KVEfficientConfig(**kept, budget=BUDGET, retention="mean")],
        "kv-random": [KVEfficientConfig(**kept, budget=BUDGET, retention="random")],
        "kv-h2o": [KVEfficientConfig(**kept, budget=BUDGET, retention="h2o")],
        "kv-streaming": [KVEfficientConfig(**kept, retention="streaming")],
    }
    if include_gated:
        settings = {"kv-gated": [KVEfficientConfig(**kept, budget=BUDGET)], **settings}
    return settings
