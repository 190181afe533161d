"""Gate files, fingerprint refusal, training, and the ``vlaccel train-kv-gate`` command end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vlaccel
from tests.techniques.kv_efficient.helpers import tiny_gate
from vlaccel.techniques.kv_efficient import KVEfficientConfig, KVGate, load_gate, save_gate
from vlaccel.techniques.kv_efficient.gate import GateMismatchError
from vlaccel.training.kv_gate import (
    GateTrainConfig,
    episode_loss,
    synthetic_episodes,
    train_gate,
)


def test_save_load_round_trip(tmp_path):
    gate = KVGate(16, 2, slots=2, agg_hidden=8, lstm_hidden=12, meta={"fingerprint": "abc", "note": 1})
    with torch.no_grad():
        for p in gate.parameters():
            p.normal_()
    save_gate(gate, tmp_path)
    back = load_gate(tmp_path, fingerprint="abc")
    assert back.sizes == gate.sizes and back.meta == gate.meta
    for (k, a), (_, b) in zip(gate.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k


def test_gate_for_another_policy_is_refused(tiny_policy):
    path = tiny_gate(tiny_policy)
    other = tiny_policy
    with torch.no_grad():
        next(other.action_head.parameters()).add_(1e-3)  # any weight differs -> another policy
    with pytest.raises(GateMismatchError, match="fingerprint"):
        vlaccel.apply(other, KVEfficientConfig(window=18, budget=2, gate=path))
    assert vlaccel.applied_configs(other) == [] and other.cache_factory is None
    with pytest.raises(GateMismatchError, match="fingerprint"):
        load_gate(path, fingerprint=vlaccel.fingerprint(other))


def test_gate_with_other_head_sizes_is_refused():
    with pytest.raises(GateMismatchError, match="head_dim"):
        KVGate(16, 2, 1).check_fits(32, 2, 1)


def test_training_lowers_the_distillation_loss(tiny_policy):
    """On a fixed episode the trained student must be closer to the full-history teacher than the initial one."""
    q = tiny_policy.config.tokens_per_frame
    ep = synthetic_episodes(tiny_policy.config, 1, 8, seed=4)
    cfg = GateTrainConfig(window=q, budget=2, max_frames=8, min_frames=8, steps=20, lr=2e-2, agg_hidden=16,
                          lstm_hidden=16)
    kv = cfg.kv_config()
    trained, stats = train_gate(tiny_policy, ep, cfg, progress=False)
    assert stats["steps"] == 20 and trained.fingerprint == vlaccel.fingerprint(tiny_policy)
    init = KVGate(**trained.sizes)
    with torch.no_grad():
        before, _ = episode_loss(tiny_policy, init, kv, q, ep[0], 8, cfg)
        after, _ = episode_loss(tiny_policy, trained, kv, q, ep[0], 8, cfg)
    assert float(after) < 0.8 * float(before), (float(before), float(after))


def test_train_kv_gate_command_end_to_end(tmp_path, tiny_policy):
    from vlaccel import demo_files as data
    from vlaccel.cli import main

    policy_dir = vlaccel.save_policy(tiny_policy, tmp_path / "policy")
    rng = np.random.default_rng(0)
    size = tiny_policy.config.image_size
    for task, instruction in (("reach", "reach the goal"), ("push", "push the puck to the goal")):
        for seed in range(3):
            f = 6
            data.save_demo(data.demo_path(tmp_path / "demos", task, seed),
                           images=rng.integers(0, 256, (f, size, size, 3), dtype=np.uint8),
                           states=rng.normal(size=(f, 4)).astype(np.float32),
                           actions=rng.normal(size=(4 * f, 4)).astype(np.float32), task=task,
                           instruction=instruction, seed=seed, success=True, frame_every=4, success_step=4 * f - 1)
    out = tmp_path / "gate"
    rc = main(["train-kv-gate", "--policy", str(policy_dir), "--data", str(tmp_path / "demos"), "--steps", "3",
               "--window", "18", "--budget", "1", "--sinks", "18", "--max-frames", "6", "--out", str(out), "--eval-episodes", "2",
               "--holdout", "0.34", "--json"])
    assert rc == 0
    meta = json.loads((out / "gate.json").read_text())
    loaded = vlaccel.load_policy(policy_dir)
    assert meta["fingerprint"] == vlaccel.fingerprint(loaded)
    assert meta["kv"] == {"window": 18, "chunk": 18, "budget": 1, "sinks": 18, "summary_slots": 1}
    assert meta["train"]["frames"] == [5, 6]  # sinks + window + a chunk: 3 frames before the first summary, + 2
    comparison = json.loads((out / "comparison.json").read_text())["budget=1"]
    assert comparison["episodes"] == 2 and "gated (trained)" in comparison["settings"]
    assert set(comparison["settings"]["random"]["action_mse_by_task"]) <= {"reach", "push"}
    with vlaccel.applied(loaded, KVEfficientConfig(window=18, budget=1, sinks=18, gate=str(out))):
        loaded.reset("reach the goal")
        for frame in rng.integers(0, 256, (4, size, size, 3), dtype=np.uint8):
            assert np.isfinite(loaded.step(frame)).all()
        assert loaded.cache.retained_chunks() != []
        layer = loaded.cache.layers[0]
        assert layer.n_protected == layer.protect_len == layer.positions()[layer.n_protected - 1] + 1
    # a gate stored with the policy (POLICY/kv_gate) is what gate=None uses for it; without one, gate=None refuses
    with pytest.raises(ValueError, match="kv_gate"):
        vlaccel.apply(loaded, KVEfficientConfig(window=18, budget=1, sinks=18))
    import shutil

    shutil.copytree(out, policy_dir / "kv_gate")
    with_gate = vlaccel.load_policy(policy_dir)
    with vlaccel.applied(with_gate, KVEfficientConfig(window=18, budget=1, sinks=18)):
        with_gate.reset("reach the goal")
        for frame in rng.integers(0, 256, (4, size, size, 3), dtype=np.uint8):
            with_gate.step(frame)
        assert with_gate.cache.gate.fingerprint == meta["fingerprint"]


def test_action_distillation_is_zero_at_the_teacher_and_trains_the_gate(tiny_policy):
    """The action term is exactly 0 when student == teacher, positive otherwise, and it gets lowered by training."""
    from vlaccel.training.kv_gate import action_distillation

    head = tiny_policy.action_head
    z = torch.randn(3, tiny_policy.config.lm_hidden)
    with torch.no_grad():
        assert float(action_distillation(head, z, z, draws=2)) == 0.0
        assert float(action_distillation(head, z + 0.5 * torch.randn_like(z), z, draws=2)) > 0.0
    q = tiny_policy.config.tokens_per_frame
    ep = synthetic_episodes(tiny_policy.config, 1, 8, seed=4)
    cfg = GateTrainConfig(window=q, budget=2, max_frames=8, min_frames=8, steps=20, lr=2e-2, agg_hidden=16,
                          lstm_hidden=16, cognition_weight=0.0, action_weight=1.0)
    trained, stats = train_gate(tiny_policy, ep, cfg, progress=False)
    assert stats["steps"] == 20
    init = KVGate(**trained.sizes)
    kv = cfg.kv_config()
    losses = {}
    for name, gate in (("init", init), ("trained", trained)):
        torch.manual_seed(0)  # the same teacher sample and diffusion steps for both
        with torch.no_grad():
            _, parts = episode_loss(tiny_policy, gate, kv, q, ep[0], 8, cfg)
        losses[name] = parts["action"]
    assert set(parts) >= {"action", "cognition", "distill", "mean_g"}
    assert losses["trained"] < losses["init"], losses


@pytest.mark.parametrize("bad", [dict(cognition_weight=0.0, action_weight=0.0), dict(action_weight=-1.0),
                                 dict(action_weight=1.0, action_draws=0)])
def test_bad_distillation_weights_are_refused(tiny_policy, bad):
    ep = synthetic_episodes(tiny_policy.config, 1, 8, seed=4)
    with pytest.raises(ValueError, match="weight|draws"):
        train_gate(tiny_policy, ep, GateTrainConfig(window=8, budget=2, steps=1, **bad), progress=False)
