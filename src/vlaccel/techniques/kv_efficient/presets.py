"""The KV-Efficient presets and the benchmark's settings, in observations of the policy they are applied to.

Chunk = one observation; the episode's first 2 frames are kept raw (sinks: the frames every training window of
the reference policy starts with, ``train-reference --window-anchor 2``), then a 2-frame raw window and 4
summaries: at most P + 2 q + 4 + (q - 1) + 2 q tokens per layer for q tokens per frame (132-token sinks and
window on the reference policy's 66-token frames). Evicting the first frames is a shift the policy never saw:
with streaming retention it solved reach-v3 on 4/20 seeds without them and 11/20 with the first frame (README).
"""

from __future__ import annotations

from vlaccel.presets import describe_as
from vlaccel.techniques.kv_efficient.config import KVEfficientConfig

__all__ = ["kv_efficient", "kv_streaming", "benchmark_settings", "WINDOW_FRAMES", "SINK_FRAMES", "BUDGET"]

WINDOW_FRAMES, SINK_FRAMES, BUDGET = 2, 2, 4


@describe_as("KV-Efficient gated chunked KV cache (shipped gate; first 2 frames and last 2 raw, 4 summaries)")
def kv_efficient() -> list[KVEfficientConfig]:
    return [KVEfficientConfig(window_frames=WINDOW_FRAMES, budget=BUDGET, sinks_frames=SINK_FRAMES)]


@describe_as("StreamingLLM-style KV cache: instruction + first 2 frames + last 2 frames, the rest dropped")
def kv_streaming() -> list[KVEfficientConfig]:
    return [KVEfficientConfig(window_frames=WINDOW_FRAMES, sinks_frames=SINK_FRAMES, retention="streaming")]


def benchmark_settings(include_gated: bool | None = None, policy=None) -> dict[str, list[KVEfficientConfig]]:
    """The method and its baselines at one KV budget, for ``vlaccel bench --history``.

    ``include_gated``: None = only if a gate is shipped with this install and, when ``policy`` is given, it was
    trained for that policy (a gate only fits the exact weights it was trained with).
    """
    import json

    from vlaccel.techniques.kv_efficient.gate import GATE_META, GATE_WEIGHTS, shipped_gate_dir

    if include_gated is None:
        folder = shipped_gate_dir()
        include_gated = (folder / GATE_WEIGHTS).exists()
        if include_gated and policy is not None:
            from vlaccel.models.io import fingerprint

            meta = json.loads((folder / GATE_META).read_text())
            include_gated = meta.get("fingerprint") == fingerprint(policy)
    kept = {"window_frames": WINDOW_FRAMES, "sinks_frames": SINK_FRAMES}
    settings = {
        "kv-mean": [KVEfficientConfig(**kept, budget=BUDGET, retention="mean")],
        "kv-random": [KVEfficientConfig(**kept, budget=BUDGET, retention="random")],
        "kv-h2o": [KVEfficientConfig(**kept, budget=BUDGET, retention="h2o")],
        "kv-streaming": [KVEfficientConfig(**kept, retention="streaming")],
    }
    if include_gated:
        settings = {"kv-gated": [KVEfficientConfig(**kept, budget=BUDGET)], **settings}
    return settings
