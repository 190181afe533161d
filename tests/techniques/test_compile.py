"""CompileConfig: torch.compile per part; neutral backend bit-identical, inductor within a named SQNR bound,
exact remove, composition with the hook-based techniques, deep copies, graph-break report."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import vlaccel
from vlaccel.techniques import CompileConfig, HeadCacheConfig, PrecisionConfig, TokenPruneConfig
from vlaccel.techniques.compile import CompiledForward, graph_breaks

INSTR = "open the drawer"
# inductor reorders float32 reductions and fuses ops: the tiny random policy measured 120 dB against eager
MIN_INDUCTOR_SQNR_DB = 80


def _sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    noise = ((out - ref) ** 2).sum()
    return float("inf") if noise == 0 else float(10 * np.log10((ref ** 2).sum() / noise))


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_eager_backend_is_bit_identical_and_remove_restores(tiny_policy, frames):
    base = tiny_policy.predict_action(frames[0], INSTR)
    handle = vlaccel.apply(tiny_policy, CompileConfig(parts=("vision", "action_head"), backend="eager"))
    assert isinstance(tiny_policy.action_head.dit.forward, CompiledForward)
    assert "forward" not in tiny_policy.language_model.__dict__  # not chosen
    np.testing.assert_array_equal(tiny_policy.predict_action(frames[0], INSTR), base)
    assert tiny_policy.action_head.dit.forward.compiled is not None  # it really went through dynamo
    handle.remove()
    assert "forward" not in tiny_policy.vision.__dict__
    assert "forward" not in tiny_policy.action_head.dit.__dict__
    np.testing.assert_array_equal(tiny_policy.predict_action(frames[0], INSTR), base)


def test_inductor_within_bound_in_single_calls_and_history(tiny_policy, frames):
    base = tiny_policy.predict_action(frames[0], INSTR)

    def episode():
        tiny_policy.reset(INSTR)
        out = np.stack([tiny_policy.step(f) for f in frames[:3]])
        tiny_policy.end_episode()
        return out

    ref_episode = episode()
    with vlaccel.applied(tiny_policy, CompileConfig(parts=("action_head",))):
        out = tiny_policy.predict_action(frames[0], INSTR)
        out_episode = episode()
    assert _sqnr(base, out) >= MIN_INDUCTOR_SQNR_DB
    assert _sqnr(ref_episode, out_episode) >= MIN_INDUCTOR_SQNR_DB


@pytest.mark.slow
def test_composes_with_hooks_and_precision(tiny_policy, frames):
    """Token selection (hooks in the LM), the head cache (instance forwards in the DiT) and bf16 casts under a
    compiled forward give what they give eagerly."""
    configs = [TokenPruneConfig(keep_tokens=6, layer=1), HeadCacheConfig(interval=5), PrecisionConfig()]
    with vlaccel.applied(tiny_policy, *configs):
        eager = tiny_policy.predict_action(frames[0], INSTR)
    with vlaccel.applied(tiny_policy, *configs, CompileConfig(backend="eager")):
        compiled = tiny_policy.predict_action(frames[0], INSTR)
        hooks = tiny_policy.language_model.layers[1]._forward_pre_hooks  # token selection's hook, under dynamo
        assert hooks and isinstance(tiny_policy.language_model.forward, CompiledForward)
    np.testing.assert_array_equal(compiled, eager)


@pytest.mark.slow
def test_a_graph_compiled_before_a_hook_was_added_is_not_reused(tiny_policy, frames):
    """dynamo caches graphs per code object and by default does not guard on module hooks: the language model
    compiled plainly, then compiled again with token selection's hooks on the same instance, must not run the
    plain graph (it did: the token selection was silently skipped)."""
    prune = TokenPruneConfig(keep_tokens=6, layer=1)
    with vlaccel.applied(tiny_policy, prune):
        eager = tiny_policy.predict_action(frames[0], INSTR)
    with vlaccel.applied(tiny_policy, CompileConfig(backend="eager")):
        plain = tiny_policy.predict_action(frames[0], INSTR)
    assert not np.array_equal(plain, eager)
    with vlaccel.applied(tiny_policy, prune, CompileConfig(backend="eager")):
        compiled = tiny_policy.predict_action(frames[0], INSTR)
    np.testing.assert_array_equal(compiled, eager)


def test_applying_twice_is_refused(tiny_policy):
    with vlaccel.applied(tiny_policy, CompileConfig(backend="eager")):
        with pytest.raises(RuntimeError, match="already applied"):
            vlaccel.apply(tiny_policy, CompileConfig(backend="eager"))


def test_deep_copy_compiles_its_own_module(tiny_policy, frames):
    base = tiny_policy.predict_action(frames[0], INSTR)
    with vlaccel.applied(tiny_policy, CompileConfig(parts=("action_head",), backend="eager")):
        tiny_policy.predict_action(frames[0], INSTR)
        twin = copy.deepcopy(tiny_policy)
    forward = twin.action_head.dit.forward
    assert isinstance(forward, CompiledForward) and forward.module is twin.action_head.dit and forward.compiled is None
    with torch.no_grad():
        for p in twin.action_head.dit.parameters():
            p.mul_(0.5)  # the copy's weights change; the original's must not
    assert not np.array_equal(twin.predict_action(frames[0], INSTR), base)
    np.testing.assert_array_equal(tiny_policy.predict_action(frames[0], INSTR), base)


@pytest.mark.parametrize("bad, match", [
    (dict(mode="fastest"), "mode"), (dict(backend="tensorrt"), "backend"),
    (dict(backend="eager", mode="max-autotune"), "inductor mode"), (dict(parts="vision"), "tuple"),
])
def test_bad_configs_say_what_is_wrong(bad, match):
    with pytest.raises(ValueError, match=match):
        CompileConfig(**bad)


def test_unknown_part_is_refused_before_anything_changes(tiny_policy):
    with pytest.raises(ValueError, match="parts are"):
        vlaccel.apply(tiny_policy, CompileConfig(parts=("vision", "decoder")))
    assert "forward" not in tiny_policy.vision.__dict__


def test_graph_breaks_report_counts_what_dynamo_finds(tiny_policy, frames):
    report = graph_breaks(tiny_policy, lambda: tiny_policy.predict_action(frames[0], INSTR))
    dit = report["action_head/DiT"]
    assert dit["calls"] == tiny_policy.config.inference_steps and dit["graphs"] >= 1
    assert report["language_model/" + type(tiny_policy.language_model).__name__]["calls"] == 2  # text, observation
    assert all(r["graph_breaks"] == len(r["reasons"]) or r["reasons"] for r in report.values() if r["graph_breaks"])


def test_inductor_without_a_cpp_compiler_is_refused_up_front(tiny_policy, monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.raises(RuntimeError, match="needs a compiler"):
        vlaccel.apply(tiny_policy, CompileConfig())
    assert "forward" not in tiny_policy.language_model.__dict__
