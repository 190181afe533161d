"""Visual readout: zero-init leaves a policy unchanged; history mode == full recompute; pruned frames read only
the kept visual tokens (``lm_output``) or all the frame's projector tokens (``lm_input``); the flatten pool knows
each token's place; save/load and training flags (add to an --init policy, choose source and pool, freeze the
backbone)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import vlaccel
from vlaccel.models import ReferenceVLA, ReferenceVLAConfig, load_reference, save_policy
from vlaccel.models.visual_readout import FlattenReadout, VisualReadout
from vlaccel.techniques.token_prune import TokenPruneConfig

HISTORY_ATOL = 1e-5  # incremental KV-cache decode vs one forward over the whole history (as test_reference_vla)
INSTR = "push the puck to the goal"


KINDS = [("lm_output", "attention"), ("lm_input", "attention"), ("lm_input", "flatten")]  # (source, pool)


def _with_trained_readout(policy: ReferenceVLA, heads: int = 2, source: str = "lm_output",
                          pool: str = "attention") -> ReferenceVLA:
    """``policy`` with a readout whose output projection is non-zero (as after training)."""
    policy.add_visual_readout(heads, source, pool)
    torch.manual_seed(1)
    torch.nn.init.normal_(policy.visual_readout.out.weight, std=0.3)
    return policy


@pytest.mark.parametrize(("source", "pool"), KINDS)
def test_adding_a_readout_leaves_every_output_unchanged(tiny_policy, frames, source, pool):
    before = tiny_policy.predict_action(frames[0], INSTR, [0.1, 0.2, 0.3, 0.4])
    z_before = tiny_policy.last_cognition
    tiny_policy.add_visual_readout(2, source, pool)
    assert (tiny_policy.config.visual_readout_heads, tiny_policy.config.visual_readout_source,
            tiny_policy.config.visual_readout_pool) == (2, source, pool)
    after = tiny_policy.predict_action(frames[0], INSTR, [0.1, 0.2, 0.3, 0.4])
    assert torch.equal(tiny_policy.last_cognition, z_before)
    np.testing.assert_array_equal(after, before)
    with pytest.raises(ValueError, match="already has a visual readout"):
        tiny_policy.add_visual_readout(2)


def test_a_trained_readout_changes_the_condition_by_its_pool_of_the_frames_visual_outputs(tiny_policy, frames):
    tiny_policy.predict_action(frames[0], INSTR)
    z_cog = tiny_policy.last_cognition
    policy = _with_trained_readout(tiny_policy)
    captured = {}
    hook = policy.language_model.register_forward_hook(lambda m, a, out: captured.__setitem__("h", out.last_hidden_state))
    policy.predict_action(frames[0], INSTR)
    hook.remove()
    h = captured["h"]  # [1, n, D]: [visual][proprio][<cog>]
    n_vis = policy.config.visual_tokens
    assert h.shape[1] == policy.config.tokens_per_frame
    with torch.no_grad():
        want = h[:, -1] + policy.visual_readout(h[:, :n_vis])
    torch.testing.assert_close(policy.last_cognition, want.float(), rtol=0, atol=0)
    assert torch.equal(h[:, -1], z_cog)  # the LM itself is untouched by the readout
    assert not torch.allclose(policy.last_cognition, z_cog, atol=1e-3)


@pytest.mark.parametrize(("source", "pool"), KINDS)
def test_history_mode_matches_full_recompute_with_a_readout(tiny_policy, frames, source, pool):
    policy = _with_trained_readout(tiny_policy, source=source, pool=pool)
    proprio = np.random.default_rng(0).normal(size=(len(frames), 4)).astype(np.float32)
    policy.reset(INSTR)
    step_z = []
    for f, p in zip(frames, proprio):
        policy.step(f, p)
        step_z.append(policy.last_cognition)
    ids, mask = policy.batch_instruction_ids([INSTR])
    pixels = torch.stack([policy.pixels_from_images(f)[0] for f in frames]).unsqueeze(0)  # [1, F, cams, 3, H, W]
    with torch.no_grad():
        full_z = policy.history_cognition(ids, mask, pixels, torch.from_numpy(proprio).unsqueeze(0))[0]  # [F, D]
    torch.testing.assert_close(torch.cat(step_z), full_z, atol=HISTORY_ATOL, rtol=0)


def test_token_pruned_frames_are_read_from_the_kept_visual_tokens_only(tiny_policy, frames):
    policy = _with_trained_readout(tiny_policy)
    seen, captured = [], {}
    hooks = [policy.visual_readout.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1])),
             policy.language_model.register_forward_hook(lambda m, a, out: captured.__setitem__("h", out.last_hidden_state))]
    with vlaccel.applied(policy, TokenPruneConfig(keep_tokens=6, layer=1, method="random", seed=3)):
        policy.reset(INSTR)
        for f in frames[:3]:
            policy.step(f)
            h = captured["h"]  # [1, 6 + 2, D]
            with torch.no_grad():
                want = h[:, -1] + policy.visual_readout(h[:, :6])
            torch.testing.assert_close(policy.last_cognition, want.float(), rtol=0, atol=0)
    for h in hooks:
        h.remove()
    assert seen == [6] * 6  # each step's readout call and the check's, all on the 6 kept tokens


@pytest.mark.parametrize("pool", ["attention", "flatten"])
def test_an_input_readout_pools_the_projector_tokens_and_pruning_does_not_change_what_it_reads(tiny_policy, frames,
                                                                                              pool):
    policy = _with_trained_readout(tiny_policy, source="lm_input", pool=pool)
    n_vis = policy.config.visual_tokens
    captured = {}
    hooks = [policy.projector.register_forward_hook(lambda m, a, out: captured.__setitem__("tokens", out)),
             policy.language_model.register_forward_hook(lambda m, a, out: captured.__setitem__("h", out.last_hidden_state))]
    policy.predict_action(frames[0], INSTR)
    want_full = policy.last_cognition
    with torch.no_grad():
        tokens = captured["tokens"].reshape(1, n_vis, -1)  # [1, n_vis, D] (one camera)
        pool = policy.visual_readout(tokens)  # [1, D]
    torch.testing.assert_close(want_full, (captured["h"][:, -1] + pool).float(), rtol=0, atol=0)
    with vlaccel.applied(policy, TokenPruneConfig(keep_tokens=6, layer=1, method="random", seed=3)):
        policy.predict_action(frames[0], INSTR)
        h = captured["h"]  # [1, 6 + 2, D]: the LM dropped visual tokens, the readout did not
        assert h.shape[1] == 8
        torch.testing.assert_close(policy.last_cognition, (h[:, -1] + pool).float(), rtol=0, atol=0)
    for hook in hooks:
        hook.remove()


@pytest.mark.parametrize(("source", "pool"), KINDS)
def test_save_load_round_trip_keeps_the_readout(tiny_policy, frames, tmp_path, source, pool):
    policy = _with_trained_readout(tiny_policy, source=source, pool=pool)
    want = policy.predict_action(frames[1], INSTR)
    save_policy(policy, tmp_path / "p")
    loaded = load_reference(tmp_path / "p")
    assert loaded.config.visual_readout_heads == 2
    assert isinstance(loaded.visual_readout, FlattenReadout if pool == "flatten" else VisualReadout)
    assert (loaded.config.visual_readout_source, loaded.config.visual_readout_pool) == (source, pool)
    np.testing.assert_array_equal(loaded.predict_action(frames[1], INSTR), want)


@pytest.mark.parametrize("heads", [-1, 3])
def test_bad_head_counts_are_refused(heads):
    with pytest.raises(ValueError, match="visual_readout_heads must be 0"):
        dataclasses.replace(ReferenceVLAConfig.tiny(), visual_readout_heads=heads)  # lm_hidden 64: 3 does not divide


@pytest.mark.parametrize(("source", "pool", "error"), [
    ("lm_middle", "attention", "visual_readout_source must be one of"),
    ("lm_input", "mean", "visual_readout_pool must be one of"),
    ("lm_output", "flatten", "needs a fixed number of tokens"),
])
def test_a_bad_readout_source_or_pool_is_refused(tiny_policy, source, pool, error):
    with pytest.raises(ValueError, match=error):
        tiny_policy.add_visual_readout(2, source, pool)
    assert tiny_policy.visual_readout is None and tiny_policy.config.visual_readout_heads == 0  # nothing half-applied


def test_the_flatten_pool_knows_each_tokens_place_and_the_attention_pool_does_not():
    torch.manual_seed(0)
    tokens = torch.randn(2, 16, 64)  # [B, N, D]
    perm = torch.randperm(16)
    flat, attn = FlattenReadout(64, 16, 4), VisualReadout(64, 2)
    for m in (flat, attn):
        torch.nn.init.normal_(m.out.weight, std=0.3)
    with torch.no_grad():
        torch.testing.assert_close(attn(tokens[:, perm]), attn(tokens), atol=1e-5, rtol=0)  # a set pool
        assert not torch.allclose(flat(tokens[:, perm]), flat(tokens), atol=1e-3)
        with pytest.raises(ValueError, match="expected the frame's 16 visual tokens, got 15"):
            flat(tokens[:, :15])


def test_train_adds_a_readout_and_freezes_the_backbone(tmp_path):
    from tests.training.test_train_reference import make_demos
    from vlaccel.training.reference import TrainConfig, TrainExperiment, train

    make_demos(tmp_path / "demos", n=1, frames=3)
    base = {"data": str(tmp_path / "demos"), "preset": "tiny", "batch_size": 2, "shift_pad": 0, "bf16": False,
            "warmup": 1, "lr": 1e-2}
    train(TrainConfig(**base, run_dir=str(tmp_path / "r1"), out=str(tmp_path / "p1"), steps=1), log=lambda *_: None)
    quiet = {"log": lambda *_: None}

    def attempt(**fields):
        return train(TrainConfig(**base, run_dir=str(tmp_path / "rx"), out=str(tmp_path / "px"), steps=1, **fields),
                     **quiet)

    with pytest.raises(ValueError, match="visual_readout_heads adds a readout to an existing policy: set init"):
        attempt(experiment=TrainExperiment(visual_readout_heads=2))
    with pytest.raises(ValueError, match="set init POLICY"):
        attempt(freeze_backbone=True)
    with pytest.raises(ValueError, match="set experiment.visual_readout_heads N too"):
        attempt(init=str(tmp_path / "p1"), experiment=TrainExperiment(visual_readout_source="lm_input"))
    train(TrainConfig(**base, run_dir=str(tmp_path / "r2"), out=str(tmp_path / "p2"), steps=3, init=str(tmp_path / "p1"),
                      freeze_backbone=True, experiment=TrainExperiment(visual_readout_heads=2)), **quiet)
    first, second = vlaccel.load_policy(tmp_path / "p1"), vlaccel.load_policy(tmp_path / "p2")
    assert second.config.visual_readout_heads == 2
    old = first.state_dict()
    for name, value in second.state_dict().items():
        backbone = name.split(".")[0] in ("vision", "projector", "proprio_proj", "language_model")
        if backbone:
            assert torch.equal(value, old[name]), name  # frozen: bit-identical
    assert not torch.equal(second.action_head.dit.cond_in.weight, first.action_head.dit.cond_in.weight)
    assert second.visual_readout.out.weight.abs().sum() > 0  # the zero-initialized projection was trained

    with pytest.raises(ValueError, match="set freeze_backbone too"):
        attempt(init=str(tmp_path / "p2"), experiment=TrainExperiment(freeze_head=True))
    with pytest.raises(ValueError, match="the policy has none"):
        attempt(init=str(tmp_path / "p1"), experiment=TrainExperiment(readout_norm_weight=1.0))
    with pytest.raises(ValueError, match="readout_norm_weight must be >= 0"):
        attempt(init=str(tmp_path / "p2"), experiment=TrainExperiment(readout_norm_weight=-1.0))
    with pytest.raises(ValueError, match="has no visual readout"):
        attempt(init=str(tmp_path / "p1"), freeze_backbone=True, experiment=TrainExperiment(freeze_head=True))
    flatten = TrainExperiment(visual_readout_heads=2, visual_readout_source="lm_input", visual_readout_pool="flatten",
                              freeze_head=True)
    train(TrainConfig(**base, run_dir=str(tmp_path / "r3"), out=str(tmp_path / "p3"), steps=3, init=str(tmp_path / "p1"),
                      freeze_backbone=True, experiment=flatten), **quiet)
    third = vlaccel.load_policy(tmp_path / "p3")
    assert isinstance(third.visual_readout, FlattenReadout)
    for name, value in third.state_dict().items():
        if not name.startswith("visual_readout."):
            assert torch.equal(value, old[name]), name  # backbone and head frozen: bit-identical
    assert third.visual_readout.out.weight.abs().sum() > 0


def test_the_readout_norm_penalty_adds_its_weight_times_the_readouts_share_of_the_condition(tiny_policy, tmp_path):
    from tests.training.test_train_reference import make_demos
    from vlaccel.demo_files import load_demos
    from vlaccel.training.batches import sample_batch
    from vlaccel.training.reference import TrainConfig, TrainExperiment, batch_loss

    make_demos(tmp_path / "demos", n=2, frames=4, size=tiny_policy.config.image_size)
    batch = sample_batch(load_demos(tmp_path / "demos"), 2, tiny_policy.config.action_chunk, np.random.default_rng(0))
    policy = _with_trained_readout(tiny_policy, source="lm_input", pool="flatten")

    def loss(weight: float) -> tuple[torch.Tensor, dict]:
        torch.manual_seed(0)  # the same diffusion noise and timesteps for every call
        cfg = TrainConfig(shift_pad=0, experiment=TrainExperiment(readout_norm_weight=weight))
        return batch_loss(policy, batch, cfg, torch.Generator().manual_seed(0))

    with torch.no_grad():
        off, parts_off = loss(0.0)
        on, parts_on = loss(2.0)
        ids, mask = policy.batch_instruction_ids(batch.instructions)
        pixels = policy.normalize_pixels(batch.images).unsqueeze(2)
        z = policy.history_cognition(ids, mask, pixels, batch.proprio, batch.frame_index)  # [B, F, D]
        readout, policy.visual_readout = policy.visual_readout, None
        z_cog = policy.history_cognition(ids, mask, pixels, batch.proprio, batch.frame_index)  # the <cog> token alone
        policy.visual_readout = readout
    valid = batch.action_mask.sum(-1) > 0
    want = ((z - z_cog)[valid].pow(2).sum(-1) / z_cog[valid].pow(2).sum(-1)).mean().item()
    assert "readout_norm" not in parts_off and parts_on["readout_norm"] == pytest.approx(want, rel=1e-4)
    assert want > 0.01  # the check is not vacuous
    assert (on - off).item() == pytest.approx(2.0 * want, rel=1e-4)
    assert parts_on["action"] == parts_off["action"]
