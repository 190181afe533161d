"""EfficientVLA presets: the paper's fractions scaled to the policy, and the three techniques composed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vlaccel
from tests.conftest import random_frames
from vlaccel.bench.flops import count_flops
from vlaccel.models import ReferenceVLA, ReferenceVLAConfig
from vlaccel.techniques import HeadCacheConfig, LayerPruneConfig, TokenPruneConfig
from vlaccel.techniques.efficientvla_presets import efficientvla_configs
from vlaccel.techniques.layer_prune import set_calibration_observations

INSTRUCTION = "push the puck to the goal"
# Counted FLOPs of one predict_action on the default-size policy under the full preset. The paper reports 28.9%
# on CogACT; our default policy's DiT is a larger share of the total, so interval 5 weighs more.
DEFAULT_EFFICIENTVLA_MAX_FLOPS_FRACTION = 0.35


def _calibrate(policy, n: int = 4) -> None:
    set_calibration_observations(
        policy, [{"image": f, "instruction": INSTRUCTION} for f in random_frames(policy.config, n, seed=21)])


def test_registered_presets_use_the_default_policy_sizes():
    layers = LayerPruneConfig(keep_layers=6, mlp_prune_ratio=0.25)  # round(8 * 22/32) = 6
    tokens = TokenPruneConfig(keep_tokens=14)  # 64 * 56/256 = 14
    cache = HeadCacheConfig(interval=5)
    assert vlaccel.presets.get("efficientvla") == [layers, tokens, cache]
    assert vlaccel.presets.get("efficientvla-tokens") == [tokens]
    assert vlaccel.presets.get("efficientvla-layers") == [layers]
    assert vlaccel.presets.get("head-cache") == [cache]
    assert vlaccel.presets.get("fastv") == [TokenPruneConfig(keep_tokens=14, method="fastv")]
    assert vlaccel.presets.get("random-tokens") == [TokenPruneConfig(keep_tokens=14, method="random")]
    assert vlaccel.presets.get("efficientvla-keep-layers") == [TokenPruneConfig(keep_tokens=28), cache]  # 64 * 28/64


def test_fractions_are_parameters_and_are_checked():
    cfg = ReferenceVLAConfig.default()  # 8 layers, 64 visual tokens
    layers, tokens, cache = efficientvla_configs(cfg, layer_fraction=7 / 8, token_fraction=0.5, mlp_ratio=0.0)
    assert (layers.keep_layers, layers.mlp_prune_ratio, tokens.keep_tokens) == (7, 0.0, 32)
    assert cache == HeadCacheConfig(interval=5)
    for bad in ({"layer_fraction": 0.0}, {"token_fraction": 1.5}, {"mlp_ratio": 1.0}, {"mlp_ratio": -0.1}):
        with pytest.raises(ValueError, match="efficientvla_configs: " + next(iter(bad))):
            efficientvla_configs(cfg, **bad)


def test_configs_scale_with_the_policy(tiny_policy):
    paper = ReferenceVLAConfig(lm_layers=32, image_size=256, patch_size=16)  # CogACT-like: 32 layers, 256 tokens
    assert [c.keep_layers for c in efficientvla_configs(paper, tokens=False, cache=False)] == [22]
    assert [c.keep_tokens for c in efficientvla_configs(paper, layers=False, cache=False)] == [56]
    # 4 layers -> round(2.75) = 3, so tokens are scored at layer 1 (the last with a later layer);
    # 16 tokens -> round(3.5) = 4, raised to k_key + 1 = 5.
    tiny = efficientvla_configs(tiny_policy)
    assert (tiny[0].keep_layers, tiny[1].keep_tokens, tiny[1].layer) == (3, 5, 1)


def test_neutral_combination_is_bit_identical(tiny_policy, frames):
    base = np.stack([tiny_policy.predict_action(f, INSTRUCTION) for f in frames[:2]])
    tiny_policy.reset(INSTRUCTION)
    base_hist = np.stack([tiny_policy.step(f) for f in frames[:3]])
    neutral = [LayerPruneConfig(keep_layers=4), TokenPruneConfig(keep_tokens=16), HeadCacheConfig(interval=1)]
    assert all(c.is_neutral(tiny_policy) for c in neutral)
    with vlaccel.applied(tiny_policy, *neutral):
        np.testing.assert_array_equal(np.stack([tiny_policy.predict_action(f, INSTRUCTION) for f in frames[:2]]), base)
        tiny_policy.reset(INSTRUCTION)
        np.testing.assert_array_equal(np.stack([tiny_policy.step(f) for f in frames[:3]]), base_hist)


def test_full_combination_composes_and_removes_exactly(tiny_policy, frames):
    _calibrate(tiny_policy)
    run = lambda: np.stack([tiny_policy.predict_action(f, INSTRUCTION) for f in frames[:2]])  # noqa: E731
    base = run()
    base_flops, _ = count_flops(run)
    parts = {}
    for cfg in efficientvla_configs(tiny_policy):
        with vlaccel.applied(tiny_policy, cfg):
            parts[cfg.technique_name()], _ = count_flops(run)
    with vlaccel.applied(tiny_policy, *efficientvla_configs(tiny_policy)):
        all_flops, _ = count_flops(run)
        out = run()
        tiny_policy.reset(INSTRUCTION)
        hist = np.stack([tiny_policy.step(f) for f in frames])
    assert np.isfinite(out).all() and np.isfinite(hist).all()
    # Every technique saves its own share; together they save (almost exactly) the sum of the shares.
    assert all(f < base_flops for f in parts.values())
    assert all_flops < min(parts.values())
    np.testing.assert_array_equal(run(), base)


@pytest.mark.parametrize("name", ["efficientvla"])
def test_default_policy_preset_flops_fraction(name):
    policy = ReferenceVLA(ReferenceVLAConfig.default())
    _calibrate(policy, 2)
    image = random_frames(policy.config, 1, seed=3)[0]
    run = lambda: policy.predict_action(image, INSTRUCTION)  # noqa: E731
    with torch.no_grad():
        base, _ = count_flops(run)
        with vlaccel.applied(policy, *vlaccel.presets.get(name)):
            accelerated, _ = count_flops(run)
    assert accelerated / base <= DEFAULT_EFFICIENTVLA_MAX_FLOPS_FRACTION, accelerated / base
