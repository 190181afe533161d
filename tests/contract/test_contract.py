"""Shared contract every technique passes (design.md): neutral is bit-identical, remove() restores,
applying twice raises, non-neutral settings cut counted FLOPs, state resets per episode, outputs finite
and within the case's named tolerance."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import vlaccel
from vlaccel.bench.flops import count_flops
from tests.conftest import random_frames
from tests.contract.cases import CASES

INSTRUCTION = "push the puck to the goal"
PROPRIO = np.array([0.1, -0.2, 0.3, 0.5], dtype=np.float32)


def run_single(policy, frames):
    return np.stack([policy.predict_action(f, INSTRUCTION, PROPRIO) for f in frames[:2]])


def run_history(policy, frames, instruction=INSTRUCTION):
    policy.reset(instruction)
    return np.stack([policy.step(f, PROPRIO) for f in frames])


def snapshot(policy):
    return {k: v.clone() for k, v in policy.state_dict().items()}


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def case(request):
    return request.param


def test_neutral_is_bit_identical(case, tiny_policy, frames):
    base_single, base_hist = run_single(tiny_policy, frames), run_history(tiny_policy, frames)
    cfg = case.neutral(tiny_policy)
    assert cfg.is_neutral(tiny_policy)
    with vlaccel.applied(tiny_policy, cfg):
        np.testing.assert_array_equal(run_single(tiny_policy, frames), base_single)
        if case.history:
            np.testing.assert_array_equal(run_history(tiny_policy, frames), base_hist)


def test_remove_restores_exactly(case, tiny_policy, frames):
    if case.prepare:
        case.prepare(tiny_policy)
    before_state = snapshot(tiny_policy)
    base = run_history(tiny_policy, frames) if case.history else run_single(tiny_policy, frames)
    handle = vlaccel.apply(tiny_policy, case.lossy(tiny_policy))
    run_history(tiny_policy, frames) if case.history else run_single(tiny_policy, frames)
    handle.remove()
    after = run_history(tiny_policy, frames) if case.history else run_single(tiny_policy, frames)
    np.testing.assert_array_equal(after, base)
    after_state = snapshot(tiny_policy)
    assert before_state.keys() == after_state.keys()
    for k in before_state:
        assert torch.equal(before_state[k], after_state[k]), k
    assert vlaccel.applied_configs(tiny_policy) == []


def test_applying_twice_raises(case, tiny_policy):
    if case.prepare:
        case.prepare(tiny_policy)
    with vlaccel.applied(tiny_policy, case.lossy(tiny_policy)):
        with pytest.raises(RuntimeError, match="already applied"):
            vlaccel.apply(tiny_policy, case.lossy(tiny_policy))


def test_lossy_setting_cuts_flops_and_stays_close(case, tiny_policy, frames):
    if case.prepare:
        case.prepare(tiny_policy)
    base_flops, _ = count_flops(lambda: run_history(tiny_policy, frames[:3]))
    base = run_history(tiny_policy, frames[:3])
    cfg = case.lossy(tiny_policy)
    assert not cfg.is_neutral(tiny_policy)
    with vlaccel.applied(tiny_policy, cfg):
        flops, _ = count_flops(lambda: run_history(tiny_policy, frames[:3]))
        out = run_history(tiny_policy, frames[:3])
    assert flops < base_flops, f"{case.id}: counted FLOPs {flops} not below baseline {base_flops}"
    assert np.isfinite(out).all()
    mse = float(((out - base) ** 2).mean())
    assert mse <= case.max_action_mse, f"{case.id}: action MSE {mse:.4f} above {case.max_action_mse}"


def test_state_resets_per_episode(case, tiny_policy):
    """An episode after another must give exactly what it gives on a freshly transformed policy."""
    if case.prepare:
        case.prepare(tiny_policy)
    fresh = copy.deepcopy(tiny_policy)
    ep_a, ep_b = random_frames(tiny_policy.config, 4, seed=1), random_frames(tiny_policy.config, 4, seed=2)
    with vlaccel.applied(tiny_policy, case.lossy(tiny_policy)):
        run_history(tiny_policy, ep_a, "open the drawer")
        second = run_history(tiny_policy, ep_b)
    with vlaccel.applied(fresh, case.lossy(fresh)):
        only = run_history(fresh, ep_b)
    np.testing.assert_array_equal(second, only)


def test_config_round_trips(case, tiny_policy):
    cfg = case.lossy(tiny_policy)
    assert vlaccel.config_from_dict(cfg.to_dict()) == cfg
