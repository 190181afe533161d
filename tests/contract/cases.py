"""The technique cases every transformation must pass through the shared contract suite.

Each technique issue appends its :class:`TechniqueCase` to :data:`CASES`. A case says how to build the
model under test, a neutral config (must be bit-identical to the baseline) and a lossy config (must
change the computation, stay finite and stay within ``max_action_mse`` of the baseline).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

# Named tolerance: on a random tiny policy actions live in [-1, 1] (DDIM clips), so an action MSE
# above 1.0 against the baseline would mean the output is unrelated to the baseline.
RANDOM_MODEL_MAX_ACTION_MSE = 1.0


@dataclasses.dataclass(frozen=True)
class TechniqueCase:
    id: str
    neutral: Callable[[Any], Any]  # model -> config that must not change outputs
    lossy: Callable[[Any], Any]  # model -> config that must change the computation
    max_action_mse: float = RANDOM_MODEL_MAX_ACTION_MSE
    history: bool = True  # also exercise history mode (reset/step with the KV cache)
    stateful: bool = False  # keeps per-episode state that reset() must clear
    prepare: Callable[[Any], None] | None = None  # e.g. calibrate; runs on the baseline model copy


def _denoise(steps: int):
    from vlaccel.techniques import DenoiseStepsConfig

    return DenoiseStepsConfig(steps=steps)


CASES: list[TechniqueCase] = [
    TechniqueCase("denoise_steps", neutral=lambda m: _denoise(m.config.inference_steps), lossy=lambda m: _denoise(5)),
]


# --- KV-Efficient (arXiv 2509.21354): RNN-gated chunked KV cache (history mode); neutral = window covers every
# position the LM can address; lossy = one-frame window + 1 summary, gated by a gate trained for the tiny policy
def _kv_efficient(model, window: int, **kwargs):
    from tests.techniques.kv_efficient.helpers import tiny_gate
    from vlaccel.techniques import KVEfficientConfig

    if kwargs.get("retention", "gated") == "gated":
        kwargs["gate"] = tiny_gate(model)
    return KVEfficientConfig(window=window, **kwargs)


CASES += [
    TechniqueCase("kv_efficient", neutral=lambda m: _kv_efficient(m, m.config.max_positions, budget=1),
                  lossy=lambda m: _kv_efficient(m, m.config.tokens_per_frame, budget=1), stateful=True),
    TechniqueCase("kv_efficient_threshold", neutral=lambda m: _kv_efficient(m, m.config.max_positions, threshold=0.5),
                  lossy=lambda m: _kv_efficient(m, m.config.tokens_per_frame, threshold=0.5), stateful=True),
    *[TechniqueCase(f"kv_{r}", neutral=lambda m, r=r, b=b: _kv_efficient(m, m.config.max_positions, retention=r, **b),
                    lossy=lambda m, r=r, b=b: _kv_efficient(m, m.config.tokens_per_frame, retention=r, **b),
                    stateful=True)
      for r, b in (("h2o", {"budget": 1}), ("streaming", {}))],  # mean/random: tests/techniques/kv_efficient
]
