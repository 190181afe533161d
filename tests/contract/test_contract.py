"""Shared contract every technique passes on every model family it applies to (design.md): neutral is
bit-identical, remove() restores, applying twice raises, non-neutral settings cut counted FLOPs, state resets
per episode (per sequence for transformers models), outputs finite and within the case's named tolerance.

Subjects: the reference VLA, and tiny random transformers PaliGemma / LLaVA / SmolVLM / Llama / Qwen2 / Gemma
(tests/hf_models.py), whose history is a ``generate()`` sequence.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import vlaccel
from vlaccel.bench.flops import count_flops
from tests.contract.cases import subjects

PAIRS = [(s, c) for s in subjects() for c in s.cases]


@pytest.fixture(params=PAIRS, ids=[f"{s.id}-{c.id}" for s, c in PAIRS])
def pair(request):
    return request.param


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_neutral_is_bit_identical(pair):
    subject, case = pair
    model = subject.build()
    base_single, base_hist = subject.run_single(model), subject.run_history(model, 0)
    cfg = case.neutral(model)
    assert cfg.is_neutral(model)
    with vlaccel.applied(model, cfg):
        np.testing.assert_array_equal(subject.run_single(model), base_single)
        if case.history:
            np.testing.assert_array_equal(subject.run_history(model, 0), base_hist)


def test_remove_restores_exactly(pair):
    subject, case = pair
    model = subject.build()
    run = (lambda: subject.run_history(model, 0)) if case.history else (lambda: subject.run_single(model))
    if case.prepare:
        case.prepare(model)
    before_state = snapshot(model)
    base = run()
    handle = vlaccel.apply(model, case.lossy(model))
    run()
    handle.remove()
    np.testing.assert_array_equal(run(), base)
    after_state = snapshot(model)
    assert before_state.keys() == after_state.keys()
    for k in before_state:
        assert torch.equal(before_state[k], after_state[k]), k
    assert vlaccel.applied_configs(model) == []


def test_applying_twice_raises(pair):
    subject, case = pair
    model = subject.build()
    if case.prepare:
        case.prepare(model)
    with vlaccel.applied(model, case.lossy(model)):
        with pytest.raises(RuntimeError, match="already applied"):
            vlaccel.apply(model, case.lossy(model))


def test_lossy_setting_cuts_flops_and_stays_close(pair):
    subject, case = pair
    model = subject.build()
    if case.prepare:
        case.prepare(model)
    base_flops, _ = count_flops(lambda: subject.run_history(model, 0))
    base = subject.run_history(model, 0)
    cfg = case.lossy(model)
    assert not cfg.is_neutral(model)
    with vlaccel.applied(model, cfg):
        flops, _ = count_flops(lambda: subject.run_history(model, 0))
        out = subject.run_history(model, 0)
    assert flops < base_flops, f"{subject.id}-{case.id}: counted FLOPs {flops} not below baseline {base_flops}"
    assert np.isfinite(out).all()
    assert not np.array_equal(out, base), f"{subject.id}-{case.id}: the lossy setting changed nothing"
    mse = float(((out - base) ** 2).mean())
    assert mse <= case.max_action_mse, f"{subject.id}-{case.id}: output MSE {mse:.4f} above {case.max_action_mse}"


def test_state_resets_per_episode(pair):
    """An episode (sequence) after another gives exactly what it gives on a freshly transformed model."""
    subject, case = pair
    model = subject.build()
    if case.prepare:
        case.prepare(model)
    fresh = copy.deepcopy(model)
    with vlaccel.applied(model, case.lossy(model)):
        subject.run_history(model, 1)
        second = subject.run_history(model, 2)
    with vlaccel.applied(fresh, case.lossy(fresh)):
        only = subject.run_history(fresh, 2)
    np.testing.assert_array_equal(second, only)


def test_config_round_trips(pair):
    subject, case = pair
    cfg = case.lossy(subject.build())
    assert vlaccel.config_from_dict(cfg.to_dict()) == cfg
