"""Techniques stack in any order and in separate ``apply`` calls on the bundled policy, and a deep copy of an
accelerated policy is independent of the original (same actions, its own state, its own handle)."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest

import vlaccel
from vlaccel.techniques import HeadCacheConfig, KVEfficientConfig, LayerPruneConfig

INSTRUCTION = "push the puck to the goal"


@pytest.fixture(scope="module")
def bundled():
    return vlaccel.load_policy("reference")


@pytest.fixture
def policy(bundled):
    return copy.deepcopy(bundled)


def _frames(policy, n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    size = policy.config.image_size
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def _episode(policy, frames) -> np.ndarray:
    policy.reset(INSTRUCTION)
    return np.stack([policy.step(f) for f in frames])


@pytest.mark.parametrize("first, second", list(itertools.permutations(
    [HeadCacheConfig(interval=5), KVEfficientConfig(window_frames=2, sinks_frames=1, budget=1)])))
def test_gated_kv_and_head_cache_in_separate_calls_either_order(policy, first, second):
    """The gate is checked against the policy's fingerprint: head caching leaves the weights (and their names)
    as they are, so a gate still fits after it, and the two calls equal one combined call."""
    frames = _frames(policy)
    with vlaccel.applied(policy, first, second):
        together = _episode(policy, frames)
    one = vlaccel.apply(policy, first)
    two = vlaccel.apply(policy, second)
    np.testing.assert_array_equal(_episode(policy, frames), together)
    two.remove()
    one.remove()


@pytest.mark.slow
def test_deep_copy_of_an_accelerated_bundled_policy(policy):
    frames = _frames(policy)
    base = policy.predict_action(frames[0], INSTRUCTION)
    handle = vlaccel.apply(policy, HeadCacheConfig(interval=5), KVEfficientConfig(window_frames=2, sinks_frames=1,
                                                                                  budget=1))
    twin = copy.deepcopy(policy)
    accelerated = policy.predict_action(frames[0], INSTRUCTION)
    np.testing.assert_array_equal(twin.predict_action(frames[0], INSTRUCTION), accelerated)
    episode = _episode(policy, frames)
    policy.end_episode()
    handle.remove()
    with vlaccel.applied(policy, LayerPruneConfig(keep_layers=4)):  # the original changes shape under the copy
        np.testing.assert_array_equal(_episode(twin, frames), episode)
        twin.end_episode()
        np.testing.assert_array_equal(twin.predict_action(frames[0], INSTRUCTION), accelerated)
    vlaccel.handle_for(twin).remove()
    np.testing.assert_array_equal(twin.predict_action(frames[0], INSTRUCTION), base)
    with pytest.raises(RuntimeError, match="no vlaccel technique is applied"):
        vlaccel.handle_for(twin)


def test_a_handle_cannot_undo_what_another_handle_removed(policy):
    handle = vlaccel.apply(policy, HeadCacheConfig(interval=5))
    vlaccel.handle_for(policy).remove()
    with pytest.raises(RuntimeError, match="already removed through another handle"):
        handle.remove()


def test_kv_efficient_finds_the_gate_of_the_plain_policy_after_precision_was_applied():
    """bf16 applied first changes the weights' bytes; the gate was trained for the plain policy and still fits."""
    import vlaccel
    from vlaccel import PrecisionConfig

    policy = vlaccel.load_policy("reference")
    first = vlaccel.apply(policy, PrecisionConfig(dtype="bfloat16"))
    second = vlaccel.apply(policy, *vlaccel.presets.get("kv-efficient"))
    assert [type(c).__name__ for c in vlaccel.applied_configs(policy)] == ["PrecisionConfig", "KVEfficientConfig"]
    second.remove()
    first.remove()
