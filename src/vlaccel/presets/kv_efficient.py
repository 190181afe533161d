"""The KV-Efficient presets and the benchmark's settings, in observations of the policy they are applied to.

Chunk = one observation; the episode's first 2 frames are kept raw (sinks: the frames every training window of
the reference policy starts with, ``train-reference --window-anchor 2``), then a 2-frame raw window and 4
summaries: at most P + 2 q + 4 + (q - 1) + 2 q tokens per layer for q tokens per frame (132-token sinks and
window on the reference policy's 66-token frames). Evicting the first frames is a shift the policy never saw:
with streaming retention it solved reach-v3 on 4/20 seeds without them and 11/20 with the first frame (docs/architecture.md).
"""

from __future__ import annotations

from vlaccel.presets import describe_as
from vlaccel.techniques.kv_efficient.config import KVEfficientConfig

__all__ = ["kv_efficient", "kv_streaming", "kv_mean", "kv_random", "kv_h2o", "kv_window", "benchmark_settings",
           "WINDOW_FRAMES", "SINK_FRAMES", "BUDGET"]

WINDOW_FRAMES, SINK_FRAMES, BUDGET = 2, 2, 4
_KEPT = {"window_frames": WINDOW_FRAMES, "sinks_frames": SINK_FRAMES}


@describe_as("KV-Efficient gated chunked KV cache (shipped gate; first 2 frames and last 2 raw, 4 summaries)")
def kv_efficient() -> list[KVEfficientConfig]:
    return [KVEfficientConfig(**_KEPT, budget=BUDGET)]


@describe_as("KV-Efficient's cache at the gate's budget, the 4 most recent chunk summaries kept (no gate)")
def kv_mean() -> list[KVEfficientConfig]:
    return [KVEfficientConfig(**_KEPT, budget=BUDGET, retention="mean")]


@describe_as("KV-Efficient's cache at the gate's budget, 4 chunk summaries kept at random (no gate)")
def kv_random() -> list[KVEfficientConfig]:
    return [KVEfficientConfig(**_KEPT, budget=BUDGET, retention="random")]


@describe_as("KV-Efficient's cache at the gate's budget, the 4 chunk summaries with the most attention kept (H2O-like)")
def kv_h2o() -> list[KVEfficientConfig]:
    return [KVEfficientConfig(**_KEPT, budget=BUDGET, retention="h2o")]


@describe_as("StreamingLLM-style KV cache: instruction + first 2 frames + last 2 frames, the rest dropped")
def kv_streaming() -> list[KVEfficientConfig]:
    return [KVEfficientConfig(**_KEPT, retention="streaming")]


@describe_as("Window-only KV cache: instruction + last 2 frames, everything older dropped (no sinks)")
def kv_window() -> list[KVEfficientConfig]:
    return [KVEfficientConfig(window_frames=WINDOW_FRAMES, sinks_frames=0, retention="streaming")]


def benchmark_settings(include_gated: bool | None = None, policy=None) -> dict[str, list[KVEfficientConfig]]:
    """The method and its baselines at one KV budget, for ``vlaccel bench --history`` (the presets of the same
    names, so a bench row and ``vlaccel eval --preset NAME`` run the same cache).

    ``include_gated``: None = only if a gate is shipped with this install and, when ``policy`` is given, it was
    trained for that policy (a gate only fits the exact weights it was trained with).
    """
    import json

    from vlaccel.techniques.kv_efficient.gate import GATE_META, GATE_WEIGHTS, shipped_gate_dir

    if include_gated is None:
        folder = shipped_gate_dir()
        include_gated = (folder / GATE_WEIGHTS).exists()
        if include_gated and policy is not None:
            from vlaccel.weights import fingerprint

            meta = json.loads((folder / GATE_META).read_text())
            include_gated = meta.get("fingerprint") == fingerprint(policy)
    settings = {"kv-mean": kv_mean(), "kv-random": kv_random(), "kv-h2o": kv_h2o(), "kv-streaming": kv_streaming(),
                "kv-window": kv_window()}
    if include_gated:
        settings = {"kv-gated": kv_efficient(), **settings}
    return settings
