"""Compensation: the policy's named parameters trained with the gate, the cache in place, distilled from a frozen
copy of the policy with its full history (``train-kv-gate --compensate``)."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch

import vlaccel
from vlaccel.errors import UsageError
from vlaccel.techniques.kv_efficient import KVEfficientConfig, KVGate
from vlaccel.training.kv_gate import GateTrainConfig, episode_loss, synthetic_episodes, train_gate

O_PROJ = "language_model.layers.*.self_attn.o_proj.weight"


def _cfg(policy, **kw):
    q = policy.config.tokens_per_frame
    return GateTrainConfig(**{"window": q, "budget": 2, "max_frames": 8, "min_frames": 8, "lr": 2e-2,
                              "agg_hidden": 16, "lstm_hidden": 16, **kw})


def test_compensation_trains_only_the_named_parameters_toward_the_full_history(tiny_policy):
    original = copy.deepcopy(tiny_policy)
    before = {k: v.clone() for k, v in tiny_policy.state_dict().items()}
    ep = synthetic_episodes(tiny_policy.config, 1, 8, seed=4)
    cfg = _cfg(tiny_policy, steps=20, compensate=(O_PROJ,), compensate_lr=2e-3)
    gate, stats = train_gate(tiny_policy, ep, cfg, progress=False)
    after = tiny_policy.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    layers = tiny_policy.config.lm_layers
    assert changed == sorted(f"language_model.layers.{i}.self_attn.o_proj.weight" for i in range(layers))
    assert stats["compensated_parameters"] == sum(after[k].numel() for k in changed)
    # the gate belongs to the compensated weights
    assert gate.fingerprint == vlaccel.fingerprint(tiny_policy) != vlaccel.fingerprint(original)
    assert all(p.requires_grad for p in tiny_policy.parameters())  # the caller's flags are given back
    kv, q = cfg.kv_config(), tiny_policy.config.tokens_per_frame
    with torch.no_grad():  # the teacher is the policy as it was given, with its full history
        start, _ = episode_loss(original, KVGate(**gate.sizes), kv, q, ep[0], 8, cfg)
        end, _ = episode_loss(tiny_policy, gate, kv, q, ep[0], 8, cfg, teacher=original)
    assert float(end) < 0.8 * float(start), (float(start), float(end))


def test_a_pattern_that_matches_nothing_is_refused(tiny_policy):
    ep = synthetic_episodes(tiny_policy.config, 1, 8, seed=4)
    with pytest.raises(UsageError, match=r"--compensate 'lm.layers.\*' matches no parameter of ReferenceVLA; .*"
                                         r"layer 0 holds language_model.layers.0.input_layernorm"):
        train_gate(tiny_policy, ep, _cfg(tiny_policy, steps=1, compensate=("lm.layers.*",)), progress=False)


def test_parameters_the_loss_does_not_reach_are_refused_before_a_step(tiny_policy):
    before = {k: v.clone() for k, v in tiny_policy.state_dict().items()}
    ep = synthetic_episodes(tiny_policy.config, 1, 8, seed=4)
    with pytest.raises(UsageError, match=r"--compensate names \d+ parameters the gate's loss does not reach, e.g. "
                                         r"\['vision\..*compensate the language model"):
        train_gate(tiny_policy, ep, _cfg(tiny_policy, steps=2, compensate=("vision.*", O_PROJ)), progress=False)
    assert all(torch.equal(v, tiny_policy.state_dict()[k]) for k, v in before.items())


def test_train_kv_gate_compensate_writes_the_policy_with_its_gate(tmp_path, tiny_policy):
    from vlaccel.cli import main

    source = vlaccel.save_policy(tiny_policy, tmp_path / "policy")
    out = tmp_path / "compensated"
    rc = main(["train-kv-gate", "--policy", str(source), "--synthetic", "2", "--steps", "2", "--window", "18",
               "--budget", "1", "--sinks", "18", "--max-frames", "6", "--compensate", O_PROJ,
               "--compensate-lr", "1e-3", "--policy-out", str(out), "--full-history-weight", "0.5",
               "--teacher", str(source), "--teacher-tasks", "synthetic", "--json"])
    assert rc == 0
    policy = vlaccel.load_policy(out)
    meta = json.loads((out / "kv_gate" / "gate.json").read_text())
    assert meta["fingerprint"] == vlaccel.fingerprint(policy) != vlaccel.fingerprint(vlaccel.load_policy(source))
    card = json.loads((out / "model_card.json").read_text())["kv_compensation"]
    assert card["parameters"] == [O_PROJ] and card["steps"] == 2 and "kv-efficient" in card["run_with"]
    assert card["full_history_weight"] == 0.5 and "or the full cache" in card["run_with"]
    assert card["teacher"] == {"policy": str(source), "tasks": ["synthetic"]}
    assert meta["train"]["teacher_tasks"] == ["synthetic"] and meta["train"]["full_history_weight"] == 0.5
    with vlaccel.applied(policy, KVEfficientConfig(window=18, budget=1, sinks=18)):  # gate=None: its kv_gate/
        policy.reset("reach the goal")
        size = policy.config.image_size
        for frame in np.zeros((4, size, size, 3), np.uint8):
            assert np.isfinite(policy.step(frame)).all()
        assert policy.cache.gate.fingerprint == meta["fingerprint"]


def test_a_failure_while_writing_the_gate_leaves_no_compensated_policy(tmp_path, tiny_policy, monkeypatch):
    """The policy and its gate land together: a policy folder without the gate matched to its weights would be
    refused by ``gate=None`` later; the earlier code wrote the policy first and then the gate."""
    from vlaccel.cli import main

    source = vlaccel.save_policy(tiny_policy, tmp_path / "policy")
    argv = ["train-kv-gate", "--policy", str(source), "--synthetic", "2", "--steps", "1", "--window", "18",
            "--budget", "1", "--sinks", "18", "--max-frames", "6", "--compensate", O_PROJ, "--json"]

    def disk_full(gate, folder):
        raise OSError("No space left on device")

    monkeypatch.setattr("vlaccel.techniques.kv_efficient.gate.save_gate", disk_full)
    with pytest.raises(OSError, match="No space left"):
        main([*argv, "--policy-out", str(tmp_path / "new")])
    assert not (tmp_path / "new").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["policy"]
    previous = tmp_path / "previous"  # an earlier compensation's folder is left as it was
    previous.mkdir()
    (previous / "model.safetensors").write_bytes(b"earlier weights")
    with pytest.raises(OSError, match="No space left"):
        main([*argv, "--policy-out", str(previous)])
    assert [p.name for p in previous.iterdir()] == ["model.safetensors"]
    assert (previous / "model.safetensors").read_bytes() == b"earlier weights"


def _two_task_episodes(policy, lengths=(8, 8)):
    """Synthetic episodes of two tasks ("long" and "short"), of the given lengths."""
    eps = synthetic_episodes(policy.config, 2, max(lengths), seed=5)
    return [dataclasses.replace(e, task=task, images=e.images[:n], states=e.states[:n] if e.states is not None
                                else None) for e, task, n in zip(eps, ("long", "short"), lengths)]


def _untrained_gate(policy) -> KVGate:
    c = policy.config
    return KVGate(c.lm_hidden // c.lm_heads, c.lm_kv_heads, 1, 16, 16)


def _full_history_error(policy, teacher, ep, cfg) -> float:
    """The w_f term alone: the policy with every frame raw, distilled onto the teacher's full history."""
    from vlaccel.training.kv_gate import _distillation, _observations, full_history_cognition, teacher_cognition

    torch.manual_seed(0)
    with torch.no_grad():
        instr, obs = _observations(policy, ep, len(ep.images))
        loss, _ = _distillation(policy, teacher, full_history_cognition(policy, instr, obs),
                                teacher_cognition(teacher, instr, obs), cfg)
    return float(loss)


def test_the_full_history_term_keeps_the_compensated_policy_working_with_its_full_cache(tiny_policy):
    original = copy.deepcopy(tiny_policy)
    ep = synthetic_episodes(tiny_policy.config, 1, 8, seed=4)
    kw = {"steps": 25, "compensate": (O_PROJ,), "compensate_lr": 2e-2}
    q = tiny_policy.config.tokens_per_frame
    cfg = _cfg(tiny_policy, full_history_weight=3.0, action_weight=1.0, **kw)
    # at the start the policy is its own teacher: the term is exactly zero, the gated one is not
    with torch.no_grad():
        _, stats = episode_loss(tiny_policy, _untrained_gate(tiny_policy), cfg.kv_config(), q, ep[0], 8, cfg,
                                teacher=original)
    assert stats["full_history"] == 0.0 and stats["cognition"] > 0
    without = copy.deepcopy(tiny_policy)
    train_gate(without, ep, _cfg(tiny_policy, **kw), progress=False)
    train_gate(tiny_policy, ep, _cfg(tiny_policy, full_history_weight=3.0, **kw), progress=False)
    kept, lost = (_full_history_error(p, original, ep[0], _cfg(tiny_policy, **kw)) for p in (tiny_policy, without))
    assert 0 < kept < 0.7 * lost, (kept, lost)  # measured: 0.010 against 0.020


def test_the_second_teacher_distils_the_episodes_of_its_tasks(tiny_policy, monkeypatch):
    from vlaccel.training import kv_gate

    other = copy.deepcopy(tiny_policy)
    seen = []

    def spy(policy, gate, kv, chunk, ep, frames, cfg, teacher=None):
        seen.append((ep.task, teacher is other))
        return episode_loss(policy, gate, kv, chunk, ep, frames, cfg, teacher=teacher)

    monkeypatch.setattr(kv_gate, "episode_loss", spy)
    cfg = _cfg(tiny_policy, steps=12, compensate=(O_PROJ,), teacher="other", teacher_tasks=("short",))
    train_gate(tiny_policy, _two_task_episodes(tiny_policy), cfg, progress=False, task_teacher=other)
    assert {task for task, _ in seen} == {"long", "short"}
    assert all(by_other == (task == "short") for task, by_other in seen), seen


def test_a_second_teacher_is_refused_when_its_tasks_or_its_shapes_do_not_fit(tiny_policy):
    from vlaccel.models.vla import ReferenceVLA

    eps = _two_task_episodes(tiny_policy)
    cfg = _cfg(tiny_policy, steps=1, compensate=(O_PROJ,), teacher="other", teacher_tasks=("push-v3",))
    with pytest.raises(UsageError, match=r"--teacher-tasks names tasks with no training episode: \['push-v3'\]; "
                                         r"the episodes hold \['long', 'short'\]"):
        train_gate(tiny_policy, eps, cfg, progress=False, task_teacher=copy.deepcopy(tiny_policy))
    wider = ReferenceVLA(dataclasses.replace(tiny_policy.config, lm_layers=tiny_policy.config.lm_layers + 1))
    cfg = _cfg(tiny_policy, steps=1, compensate=(O_PROJ,), teacher="wider", teacher_tasks=("short",))
    with pytest.raises(UsageError, match=r"--teacher wider is not the policy's architecture \(\d+ tensors differ"):
        train_gate(tiny_policy, eps, cfg, progress=False, task_teacher=wider)


def test_short_episodes_are_skipped_or_trained_whole(tiny_policy, monkeypatch):
    from vlaccel.training import kv_gate

    eps = _two_task_episodes(tiny_policy, lengths=(10, 5))  # min_frames 8: "short" has 5 frames
    seen = []

    def spy(policy, gate, kv, chunk, ep, frames, cfg, teacher=None):
        seen.append((ep.task, frames))
        return episode_loss(policy, gate, kv, chunk, ep, frames, cfg, teacher=teacher)

    monkeypatch.setattr(kv_gate, "episode_loss", spy)
    _, stats = train_gate(tiny_policy, eps, _cfg(tiny_policy, steps=10, max_frames=10), progress=False)
    assert stats["episodes"] == 1 and stats["whole_episodes"] == 0 and {t for t, _ in seen} == {"long"}
    seen.clear()
    _, stats = train_gate(tiny_policy, eps, _cfg(tiny_policy, steps=10, max_frames=10, short_episodes="whole"),
                          progress=False)
    assert stats["episodes"] == 2 and stats["whole_episodes"] == 1
    assert {f for t, f in seen if t == "short"} == {5} and all(8 <= f <= 10 for t, f in seen if t == "long")
    assert {t for t, _ in seen} == {"long", "short"}
