"""apply / applied / Handle / config registry / adapters: the transformation API itself."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import vlaccel
from vlaccel.adapters import UnsupportedModelError, get_adapter
from vlaccel.config import TechniqueConfig, register_handler
from vlaccel.techniques import DenoiseStepsConfig


@dataclasses.dataclass(frozen=True)
class _ExplodingConfig(TechniqueConfig):
    """A technique whose apply fails, to prove nothing stays half-applied."""

    order = 99


@register_handler(_ExplodingConfig)
class _ExplodingHandler:
    def validate(self, model, config, adapter, pending):
        pass

    def apply(self, model, config, adapter, prepared):
        raise RuntimeError("boom")


def test_failed_apply_rolls_back_earlier_techniques(tiny_policy, frames):
    base = tiny_policy.predict_action(frames[0], "go")
    with pytest.raises(RuntimeError, match="boom"):
        vlaccel.apply(tiny_policy, DenoiseStepsConfig(steps=3), _ExplodingConfig())
    assert tiny_policy.action_head.inference_steps == 10
    assert vlaccel.applied_configs(tiny_policy) == []
    np.testing.assert_array_equal(tiny_policy.predict_action(frames[0], "go"), base)


def test_invalid_config_changes_nothing():
    with pytest.raises(ValueError, match=">= 1"):
        DenoiseStepsConfig(steps=0)


def test_context_manager_restores_on_error(tiny_policy):
    with pytest.raises(KeyError, match="user code failed"):
        with vlaccel.applied(tiny_policy, DenoiseStepsConfig(steps=2)):
            assert tiny_policy.action_head.inference_steps == 2
            raise KeyError("user code failed")
    assert tiny_policy.action_head.inference_steps == 10


def test_handle_remove_twice_raises(tiny_policy):
    h = vlaccel.apply(tiny_policy, DenoiseStepsConfig(steps=2))
    assert vlaccel.applied_configs(tiny_policy) == [DenoiseStepsConfig(steps=2)]
    h.remove()
    with pytest.raises(RuntimeError, match="already removed"):
        h.remove()


def test_apply_argument_errors(tiny_policy):
    with pytest.raises(ValueError, match="at least one config"):
        vlaccel.apply(tiny_policy)
    with pytest.raises(TypeError, match="expected technique configs"):
        vlaccel.apply(tiny_policy, {"steps": 3})
    with pytest.raises(RuntimeError, match="DenoiseStepsConfig is given twice in this apply call"):
        vlaccel.apply(tiny_policy, DenoiseStepsConfig(steps=3), DenoiseStepsConfig(steps=4))


def test_unsupported_model_lists_supported_ones():
    with pytest.raises(UnsupportedModelError, match="Supported: .*vlaccel ReferenceVLA.*register_adapter"):
        get_adapter(torch.nn.Linear(2, 2))
    with pytest.raises(UnsupportedModelError, match="no adapter for Linear"):
        vlaccel.apply(torch.nn.Linear(2, 2), DenoiseStepsConfig(steps=3))


def test_config_dict_round_trip_and_errors():
    cfg = DenoiseStepsConfig(steps=4)
    assert cfg.to_dict() == {"technique": "denoise_steps", "steps": 4}
    assert vlaccel.config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="no field"):
        DenoiseStepsConfig.from_dict({"steps": 4, "stepz": 1})
    with pytest.raises(ValueError, match="unknown technique"):
        vlaccel.config_from_dict({"technique": "warp_drive"})


def test_presets_registry():
    assert vlaccel.presets.get("none") == []
    assert vlaccel.presets.get("ddim5") == [DenoiseStepsConfig(steps=5)]
    with pytest.raises(KeyError, match="unknown preset 'nonexistent'"):
        vlaccel.presets.get("nonexistent")


def test_reset_hooks_run_per_episode_and_are_removable(tiny_policy):
    calls = []
    h = tiny_policy.register_reset_hook(lambda: calls.append(1))
    tiny_policy.reset("a")
    tiny_policy.reset("b")
    h.remove()
    tiny_policy.reset("c")
    assert calls == [1, 1]
