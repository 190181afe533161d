"""``DenoiseStepsConfig``: run the action head's sampler with fewer steps.

The simplest action-head acceleration and the baseline any head cache should beat: DDIM (Song et al.,
arXiv 2010.02502) with S' < S steps, or a flow-matching Euler integration (pi0) with S' < S steps of
``dt = -1/S'``, skips whole network evaluations instead of reusing features.
Neutral when ``steps`` equals the policy's own step count. On pi0 it sets ``config.num_inference_steps``, the
count ``sample_actions`` uses when the call passes no ``num_steps`` of its own.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vlaccel.config import TechniqueConfig


@dataclasses.dataclass(frozen=True)
class DenoiseStepsConfig(TechniqueConfig):
    steps: int = 10

    name = "denoise_steps"
    handler = "vlaccel.techniques.denoise_steps:DenoiseStepsHandler"
    order = 80
    requires = ("action_head", "sampler")

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise ValueError(f"DenoiseStepsConfig.steps must be an integer >= 1, got {self.steps!r}")

    def is_neutral(self, model: Any, adapter: Any) -> bool:
        return adapter.inference_steps(model) == self.steps


class _Applied:
    def __init__(self, model: Any, adapter: Any, previous: int):
        self.model, self.adapter, self.previous = model, adapter, previous

    def remove(self) -> None:
        self.adapter.set_inference_steps(self.model, self.previous)


class DenoiseStepsHandler:
    def validate(self, model: Any, config: DenoiseStepsConfig, adapter: Any, pending: tuple = ()) -> None:
        adapter.inference_steps(model)  # raises if the model has no diffusion head
        most = adapter.max_inference_steps(model)
        if most is not None and config.steps > most:
            raise ValueError(f"DenoiseStepsConfig(steps={config.steps}): this action head's sampler was trained on "
                             f"{most} diffusion timesteps, so it takes at most {most} steps")

    def apply(self, model: Any, config: DenoiseStepsConfig, adapter: Any, prepared: None = None) -> _Applied:
        previous = adapter.inference_steps(model)
        adapter.set_inference_steps(model, config.steps)
        return _Applied(model, adapter, previous)
