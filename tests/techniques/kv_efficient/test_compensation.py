"""Compensation: the policy's named parameters trained with the gate, the cache in place, distilled from a frozen
copy of the policy with its full history (``train-kv-gate --compensate``)."""

from __future__ import annotations

import copy
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
    return GateTrainConfig(window=q, budget=2, max_frames=8, min_frames=8, lr=2e-2, agg_hidden=16, lstm_hidden=16,
                           **kw)


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
               "--compensate-lr", "1e-3", "--policy-out", str(out), "--json"])
    assert rc == 0
    policy = vlaccel.load_policy(out)
    meta = json.loads((out / "kv_gate" / "gate.json").read_text())
    assert meta["fingerprint"] == vlaccel.fingerprint(policy) != vlaccel.fingerprint(vlaccel.load_policy(source))
    card = json.loads((out / "model_card.json").read_text())["kv_compensation"]
    assert card["parameters"] == [O_PROJ] and card["steps"] == 2 and "kv-efficient" in card["run_with"]
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
