"""EfficientVLA presets: the paper's fractions scaled to the policy, and the three techniques composed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import vlaccel
import vlaccel.api
from tests.conftest import random_frames
from vlaccel.adapters import get_adapter
from vlaccel.bench.flops import count_flops
from vlaccel.models import ReferenceVLA, ReferenceVLAConfig
from vlaccel.presets.efficientvla import efficientvla_configs
from vlaccel.techniques import HeadCacheConfig, LayerPruneConfig, TokenPruneConfig
from vlaccel.techniques.layer_prune import set_calibration_observations

INSTRUCTION = "push the puck to the goal"
# Counted FLOPs of one predict_action on the default-size policy under the full preset. The paper reports 28.9%
# on CogACT; our default policy's DiT is a larger share of the total, so interval 5 weighs more.
DEFAULT_EFFICIENTVLA_MAX_FLOPS_FRACTION = 0.35


def _calibrate(policy, n: int = 4) -> None:
    set_calibration_observations(
        policy, [{"image": f, "instruction": INSTRUCTION} for f in random_frames(policy.config, n, seed=21)])


@pytest.fixture(scope="module")
def default_policy():
    return ReferenceVLA(ReferenceVLAConfig.default())  # 8 layers, 64 visual tokens


def test_presets_state_fractions_and_resolve_to_the_default_policy_sizes(default_policy):
    assert vlaccel.presets.get("efficientvla") == [
        LayerPruneConfig(keep_fraction=22 / 32, mlp_prune_ratio=0.25),
        TokenPruneConfig(keep_fraction=56 / 256, layer=None), HeadCacheConfig(interval=5)]
    layers = LayerPruneConfig(keep_layers=6, mlp_prune_ratio=0.25)  # round(8 * 22/32) = 6
    tokens = TokenPruneConfig(keep_tokens=14)  # 64 * 56/256 = 14, scored at layer 2
    cache = HeadCacheConfig(interval=5)
    get = lambda name: vlaccel.presets.get(name, default_policy)  # noqa: E731
    assert get("efficientvla") == [layers, tokens, cache]
    assert get("efficientvla-tokens") == [tokens]
    assert get("efficientvla-layers") == [layers]
    assert get("head-cache") == [cache]
    assert get("fastv") == [TokenPruneConfig(keep_tokens=14, method="fastv")]
    assert get("random-tokens") == [TokenPruneConfig(keep_tokens=14, method="random")]
    assert get("efficientvla-keep-layers") == [TokenPruneConfig(keep_tokens=28), cache]  # 64 * 28/64


def test_apply_resolves_a_preset_as_presets_get_does(tiny_policy):
    _calibrate(tiny_policy)
    expected = vlaccel.presets.get("efficientvla", tiny_policy)
    with vlaccel.applied(tiny_policy, *vlaccel.presets.get("efficientvla")) as handle:
        assert handle.configs == expected
        assert vlaccel.applied_configs(tiny_policy) == handle.configs


def test_fractions_are_parameters_and_are_checked(default_policy):
    resolved = vlaccel.api.resolve_configs(
        default_policy, *efficientvla_configs(layer_fraction=7 / 8, token_fraction=0.5, mlp_ratio=0.0))
    layers, tokens, cache = resolved
    assert (layers.keep_layers, layers.mlp_prune_ratio, tokens.keep_tokens) == (7, 0.0, 32)
    assert cache == HeadCacheConfig(interval=5)
    for bad, field in (({"layer_fraction": 0.0}, "keep_fraction"), ({"token_fraction": 1.5}, "keep_fraction"),
                       ({"mlp_ratio": 1.0}, "mlp_prune_ratio"), ({"mlp_ratio": -0.1}, "mlp_prune_ratio")):
        with pytest.raises(ValueError, match=field):
            efficientvla_configs(**bad)


def test_configs_scale_with_the_policy(tiny_policy):
    paper = ReferenceVLA(dataclasses.replace(ReferenceVLAConfig.tiny(), lm_layers=32, image_size=128,
                                             patch_size=8))  # CogACT-like: 32 layers, 256 visual tokens
    assert [c.keep_layers for c in vlaccel.presets.get("efficientvla-layers", paper)] == [22]
    assert [c.keep_tokens for c in vlaccel.presets.get("efficientvla-tokens", paper)] == [56]
    # 4 layers -> round(2.75) = 3, so tokens are scored at layer 1 (the last with a later layer);
    # 16 tokens -> round(3.5) = 4, raised to k_key + 1 = 5.
    tiny = vlaccel.presets.get("efficientvla", tiny_policy)
    assert (tiny[0].keep_layers, tiny[1].keep_tokens, tiny[1].layer) == (3, 5, 1)


def test_a_vlm_gets_the_papers_fractions_and_no_head_cache(recwarn):
    """An 18-layer PaliGemma with 256 image tokens (pi0's backbone shape, tiny width): 12 layers, 56 tokens,
    and the head cache left out, said in the resolution and once as a warning."""
    model = paligemma_18_layers()
    resolution = vlaccel.presets.resolve("efficientvla", model)
    assert resolution.configs == [LayerPruneConfig(keep_layers=12, mlp_prune_ratio=0.25),
                                  TokenPruneConfig(keep_tokens=56)]
    assert [type(c) for c, _ in resolution.left_out] == [HeadCacheConfig]
    assert "left out HeadCacheConfig" in resolution.description() and "flow-matching action head" in resolution.description()
    warned = [w for w in recwarn if "leaves out HeadCacheConfig" in str(w.message)]
    vlaccel.presets.resolve("efficientvla", model)
    assert len(warned) == 1 and len([w for w in recwarn if "leaves out HeadCacheConfig" in str(w.message)]) == 1
    with pytest.raises(ValueError, match="HeadCacheConfig needs a diffusion or flow-matching action head"):
        vlaccel.apply(model, *vlaccel.presets.get("efficientvla"))  # unresolved: the part it cannot take is refused
    assert vlaccel.applied_configs(model) == []


def paligemma_18_layers():
    import transformers as tf

    from tests.hf_models import IMAGE_TOKEN, VOCAB

    with torch.device("meta"):  # sizes only: nothing runs
        return tf.PaliGemmaForConditionalGeneration(tf.PaliGemmaConfig(
            vision_config=tf.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                num_attention_heads=2, image_size=64, patch_size=4),
            text_config=tf.GemmaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=18,
                                       num_attention_heads=4, num_key_value_heads=1, head_dim=16),
            image_token_index=IMAGE_TOKEN, vocab_size=VOCAB, projection_dim=64, hidden_size=64))


def test_neutral_combination_is_bit_identical(tiny_policy, frames):
    base = np.stack([tiny_policy.predict_action(f, INSTRUCTION) for f in frames[:2]])
    tiny_policy.reset(INSTRUCTION)
    base_hist = np.stack([tiny_policy.step(f) for f in frames[:3]])
    neutral = [LayerPruneConfig(keep_layers=4), TokenPruneConfig(keep_tokens=16), HeadCacheConfig(interval=1)]
    assert all(c.is_neutral(tiny_policy, get_adapter(tiny_policy)) for c in neutral)
    with vlaccel.applied(tiny_policy, *neutral):
        np.testing.assert_array_equal(np.stack([tiny_policy.predict_action(f, INSTRUCTION) for f in frames[:2]]), base)
        tiny_policy.reset(INSTRUCTION)
        np.testing.assert_array_equal(np.stack([tiny_policy.step(f) for f in frames[:3]]), base_hist)


@pytest.mark.slow
def test_full_combination_composes_and_removes_exactly(tiny_policy, frames):
    _calibrate(tiny_policy)
    run = lambda: np.stack([tiny_policy.predict_action(f, INSTRUCTION) for f in frames[:2]])  # noqa: E731
    base = run()
    base_flops, _ = count_flops(run)
    parts = {}
    for cfg in efficientvla_configs():
        with vlaccel.applied(tiny_policy, cfg):
            parts[cfg.technique_name()], _ = count_flops(run)
    with vlaccel.applied(tiny_policy, *efficientvla_configs()):
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
def test_default_policy_preset_flops_fraction(name, default_policy):
    policy = default_policy
    _calibrate(policy, 2)
    image = random_frames(policy.config, 1, seed=3)[0]
    run = lambda: policy.predict_action(image, INSTRUCTION)  # noqa: E731
    with torch.no_grad():
        base, _ = count_flops(run)
        with vlaccel.applied(policy, *vlaccel.presets.get(name)):
            accelerated, _ = count_flops(run)
    assert accelerated / base <= DEFAULT_EFFICIENTVLA_MAX_FLOPS_FRACTION, accelerated / base
