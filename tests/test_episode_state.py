"""Episode state: a single-observation call never destroys a running episode, techniques applied or removed
mid-episode end it (the next step says why), handles come off in reverse order, and positions past the
model's limit are said once."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import vlaccel
from vlaccel.errors import PositionLimitError
from vlaccel.models import ReferenceVLA
from vlaccel.techniques import HeadCacheConfig, LayerPruneConfig, TokenPruneConfig

INSTR = "open the drawer"


def test_predict_action_refuses_during_an_episode_and_leaves_it_intact(tiny_policy, frames):
    tiny_policy.reset(INSTR)
    tiny_policy.step(frames[0])
    tokens = tiny_policy.cache.get_seq_length()
    for call in (lambda: tiny_policy.predict_action(frames[1], INSTR),
                 lambda: tiny_policy.predict_action(frames[1], INSTR, np.zeros(3))):  # also a bad proprio
        with pytest.raises(RuntimeError, match="a history episode .* is running"):
            call()
        assert tiny_policy.cache.get_seq_length() == tokens
    continued = tiny_policy.step(frames[1])
    twin = ReferenceVLA(tiny_policy.config)
    twin.load_state_dict(tiny_policy.state_dict())
    twin.reset(INSTR)
    twin.step(frames[0])
    np.testing.assert_array_equal(twin.step(frames[1]), continued)
    tiny_policy.end_episode()
    assert tiny_policy.cache is None
    tiny_policy.predict_action(frames[0], INSTR)  # allowed again; and it leaves no episode behind
    assert tiny_policy.cache is None and not tiny_policy.episode_active


@pytest.mark.parametrize("cfg", [LayerPruneConfig(keep_layers=2, method="last"),
                                 TokenPruneConfig(keep_tokens=6, layer=1)])
def test_apply_or_remove_mid_episode_ends_it(tiny_policy, frames, cfg):
    tiny_policy.reset(INSTR)
    tiny_policy.step(frames[0])
    handle = vlaccel.apply(tiny_policy, cfg)
    with pytest.raises(RuntimeError, match="reset.*the episode ended when vlaccel techniques were applied"):
        tiny_policy.step(frames[1])
    tiny_policy.reset(INSTR)
    tiny_policy.step(frames[1])
    handle.remove()
    with pytest.raises(RuntimeError, match="the episode ended when vlaccel techniques were removed"):
        tiny_policy.step(frames[1])


def test_handles_come_off_in_reverse_order(tiny_policy, frames):
    base = tiny_policy.predict_action(frames[0], INSTR)
    first = vlaccel.apply(tiny_policy, LayerPruneConfig(keep_layers=3, method="last"))
    second = vlaccel.apply(tiny_policy, TokenPruneConfig(keep_tokens=6, layer=1))
    with pytest.raises(RuntimeError, match="TokenPruneConfig was applied after this handle's techniques"):
        first.remove()
    tiny_policy.predict_action(frames[0], INSTR)  # the refusal changed nothing: the model still runs
    second.remove()
    first.remove()
    np.testing.assert_array_equal(tiny_policy.predict_action(frames[0], INSTR), base)


@pytest.mark.parametrize("preset", ["none", "kv-streaming"])
def test_positions_past_the_limit_are_refused_and_the_episode_is_unchanged(tiny_policy, frames, preset):
    """Logical positions grow with every observation, also under a KV-Efficient cache that stores few of them:
    the observation that would pass max_positions is refused, nothing of it is stored, and a new episode runs."""
    per_frame = tiny_policy.config.tokens_per_frame
    small = ReferenceVLA(dataclasses.replace(tiny_policy.config, max_positions=3 * per_frame + 8))
    small.load_state_dict(tiny_policy.state_dict())
    configs = vlaccel.presets.get(preset)
    handle = vlaccel.apply(small, *configs) if configs else None
    small.reset(INSTR)
    for f in frames[:3]:  # instruction (< 8 tokens) + 3 observations fit
        small.step(f)
    seen = small.cache.get_seq_length()
    with pytest.raises(PositionLimitError, match=r"past the policy's max_positions=.*policy.reset\(instruction\)"):
        small.step(frames[3])
    assert small.cache.get_seq_length() == seen and small.episode_active  # refused before anything changed
    small.reset(INSTR)  # a new episode starts at position 0
    small.step(frames[0])
    assert small.cache.get_seq_length() < 2 * per_frame
    if handle is not None:
        handle.remove()


def test_reverse_order_holds_for_independent_techniques_too(tiny_policy, frames):
    """Out-of-order removal is refused even between techniques that do not interact."""
    a = vlaccel.apply(tiny_policy, HeadCacheConfig(interval=5))
    b = vlaccel.apply(tiny_policy, TokenPruneConfig(keep_tokens=6, layer=1))
    with pytest.raises(RuntimeError, match="reverse order"):
        a.remove()
    b.remove()
    a.remove()
    assert vlaccel.applied_configs(tiny_policy) == []

