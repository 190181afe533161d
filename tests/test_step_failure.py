"""A ``step`` that fails part-way (in the vision encoder, the language model after it stored the frame, or the
action head) leaves no half-observed frame behind: the episode ends, the next ``step`` names the failure, and
a new ``reset`` + ``step`` sequence gives the actions of an episode that never failed, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

import vlaccel
from vlaccel.techniques import HeadCacheConfig, KVEfficientConfig

from tests.techniques.kv_efficient.helpers import tiny_gate

INSTR = "open the drawer"
STAGES = ("vision", "language_model", "action_head.dit")


class Boom(Exception):
    """The injected failure."""


def _episode(policy, frames):
    policy.reset(INSTR)
    return [policy.step(frame) for frame in frames]


def _fail_once(module, error):
    """A forward hook on ``module`` that raises ``error`` at its next call, then comes off."""
    def hook(mod, args, output):
        handle.remove()
        raise error
    handle = module.register_forward_hook(hook)


def _technique(name, policy):
    """None, or the technique ``name`` for ``policy`` (KV-Efficient with a gate trained for it: gate state too)."""
    if name == "head-cache":
        return HeadCacheConfig()
    if name == "kv-efficient":
        return KVEfficientConfig(window=policy.config.tokens_per_frame, budget=1, gate=tiny_gate(policy))
    return None


@pytest.mark.parametrize("technique", ["plain", "head-cache", "kv-efficient"])
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("error", [Boom("injected"), KeyboardInterrupt("injected")], ids=["exception", "interrupt"])
def test_a_failed_step_ends_the_episode_and_leaves_nothing_behind(tiny_policy, frames, stage, technique, error):
    config = _technique(technique, tiny_policy)
    if config is not None:
        vlaccel.apply(tiny_policy, config)
    expected = _episode(tiny_policy, frames[:3])

    tiny_policy.reset(INSTR)
    tiny_policy.step(frames[0])
    _fail_once(tiny_policy.get_submodule(stage), error)
    with pytest.raises(type(error), match="^injected$"):
        tiny_policy.step(frames[1])
    with pytest.raises(RuntimeError, match=f"an earlier step failed with {type(error).__name__}"):
        tiny_policy.step(frames[1])

    for got, want in zip(_episode(tiny_policy, frames[:3]), expected):
        np.testing.assert_array_equal(got, want)


def test_bad_input_in_an_episode_leaves_it_running(tiny_policy, frames):
    """Inputs are checked before anything changes: a refused observation is not a failed step."""
    tiny_policy.reset(INSTR)
    first = tiny_policy.step(frames[0])
    with pytest.raises(ValueError, match="proprio has non-finite values"):
        tiny_policy.step(frames[1], [np.nan] * tiny_policy.config.proprio_dim)
    second = tiny_policy.step(frames[1])
    expected = _episode(tiny_policy, frames[:2])
    np.testing.assert_array_equal(first, expected[0])
    np.testing.assert_array_equal(second, expected[1])
