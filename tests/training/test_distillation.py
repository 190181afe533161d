"""Action distillation (training.distillation): the recorded DDIM path is the sampler's; the term is exactly 0 for
a student equal to its teacher and positive once the head moves; the teacher's condition drops the student's
readout; only the kept tasks count; a few steps on the term bring the student's sampled actions back to the
teacher's; bad set-ups are refused before training."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import vlaccel
from tests.models.test_visual_readout import _with_trained_readout
from tests.training.test_train_reference import make_demos
from vlaccel.models import save_policy
from vlaccel.demo_files import load_demos
from vlaccel.training.batches import sample_batch
from vlaccel.training.distillation import ActionDistillation
from vlaccel.training.reference import TrainConfig, TrainExperiment, train


def _batch(policy, root, tasks=("push-v3",), seed=0):
    for i, task in enumerate(tasks):
        make_demos(root, n=2, frames=4, size=policy.config.image_size, task=task, seed=i)
    return sample_batch(load_demos(root), 4, policy.config.action_chunk, np.random.default_rng(seed))


def _conditions(policy, batch) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = policy.batch_instruction_ids(batch.instructions)
    pixels = policy.normalize_pixels(batch.images).unsqueeze(2)
    z = policy.history_cognition(ids, mask, pixels, batch.proprio, batch.frame_index)  # [B, F, D]
    return z, batch.action_mask.sum(-1) > 0


def _distill_loss(distill, student, batch, seed=0):
    hook = distill.capture(student)
    try:
        z, valid = _conditions(student, batch)
    finally:
        if hook is not None:
            hook.remove()
    return distill.loss(student.action_head, z, valid, batch.tasks, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("init_noise_scale", [0.0, 1.0])
def test_the_recorded_path_is_the_samplers(tiny_policy, init_noise_scale):
    head = tiny_policy.action_head.eval()
    head.init_noise_scale = init_noise_scale
    z = torch.randn(3, tiny_policy.config.lm_hidden)
    with torch.no_grad():
        xs, eps, timesteps = head.ddim_path(z, torch.Generator().manual_seed(4))
        actions = head.sample(z, torch.Generator().manual_seed(4))
        assert xs.shape == (len(timesteps) + 1, 3, head.chunk, head.action_dim) and eps.shape[0] == len(timesteps)
        assert torch.equal(xs[-1], actions)
        for k in (0, len(timesteps) - 1):  # the recorded estimate is the guided one at that point
            assert torch.equal(head.guided_eps(xs[k], timesteps[k].expand(3), z), eps[k])
            nxt = head.scheduler.step(eps[k], timesteps[k], xs[k], eta=0.0).prev_sample
            assert torch.equal(nxt, xs[k + 1])


def test_the_term_is_zero_for_the_teacher_itself_and_grows_as_the_head_moves(tiny_policy, tmp_path):
    batch = _batch(tiny_policy, tmp_path / "demos")
    student = copy.deepcopy(tiny_policy)
    distill = ActionDistillation(copy.deepcopy(tiny_policy), student, {"push-v3"}, frames=8)
    with torch.no_grad():
        assert _distill_loss(distill, student, batch).item() == 0.0
        student.action_head.dit.action_out.bias.add_(0.05)  # every noise estimate moves by 0.05: the term is 0.05^2
        assert _distill_loss(distill, student, batch).item() == pytest.approx(0.05**2, rel=1e-4)


def test_the_teachers_condition_drops_the_students_readout(tiny_policy, tmp_path):
    batch = _batch(tiny_policy, tmp_path / "demos")
    teacher = copy.deepcopy(tiny_policy)
    student = _with_trained_readout(copy.deepcopy(tiny_policy), source="lm_input", pool="flatten")
    distill = ActionDistillation(teacher, student, {"push-v3"})
    hook = distill.capture(student)
    with torch.no_grad():
        z_student, _ = _conditions(student, batch)
        z_teacher = distill.teacher_condition(z_student)
        z_plain, _ = _conditions(teacher, batch)
    hook.remove()
    torch.testing.assert_close(z_teacher, z_plain, atol=1e-5, rtol=0)
    assert (z_student - z_plain).abs().max() > 1e-2  # the readout did move the student's condition


def test_only_the_kept_tasks_frames_count(tiny_policy, tmp_path):
    batch = _batch(tiny_policy, tmp_path / "demos", tasks=("reach-v3",))
    student = copy.deepcopy(tiny_policy)
    student.action_head.dit.action_out.bias.data.add_(0.05)
    with torch.no_grad():
        assert _distill_loss(ActionDistillation(copy.deepcopy(tiny_policy), student, {"push-v3"}), student,
                             batch) is None
        assert _distill_loss(ActionDistillation(copy.deepcopy(tiny_policy), student, {"reach-v3"}), student,
                             batch).item() > 1e-4


@pytest.mark.slow
def test_steps_on_the_term_bring_the_sampled_actions_back_to_the_teachers(tiny_policy, tmp_path):
    batch = _batch(tiny_policy, tmp_path / "demos")
    tiny_policy.action_head.init_noise_scale = 0.0  # deterministic sampling from x_T = 0, as the bundled policy
    teacher = copy.deepcopy(tiny_policy).eval()
    student = copy.deepcopy(tiny_policy).eval()
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for param in student.action_head.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=gen))
    distill = ActionDistillation(copy.deepcopy(tiny_policy), student, {"push-v3"}, frames=32)

    def action_gap() -> float:
        with torch.no_grad():
            z, valid = _conditions(teacher, batch)
            z = z[valid]  # [N, D]
            return (student.action_head.sample(z) - teacher.action_head.sample(z)).abs().mean().item()

    before = action_gap()
    opt = torch.optim.Adam(student.action_head.parameters(), lr=2e-3)
    for step in range(60):
        loss = _distill_loss(distill, student, batch, seed=step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = action_gap()
    assert after < 0.2 * before, (before, after)


def test_train_with_distillation_logs_the_term_and_refuses_bad_set_ups(tiny_policy, tmp_path):
    make_demos(tmp_path / "demos", n=1, frames=3, size=tiny_policy.config.image_size)
    make_demos(tmp_path / "demos", n=1, frames=3, size=tiny_policy.config.image_size, task="reach-v3")
    save_policy(tiny_policy, tmp_path / "p0")
    base = {"data": str(tmp_path / "demos"), "batch_size": 2, "shift_pad": 0, "bf16": False, "warmup": 1,
            "lr": 1e-2, "init": str(tmp_path / "p0"), "run_dir": str(tmp_path / "rx"), "out": str(tmp_path / "px"),
            "steps": 1, "window_prob": 0.0}
    quiet = {"log": lambda *_: None}
    with pytest.raises(ValueError, match="set freeze_backbone"):
        train(TrainConfig(**base, experiment=TrainExperiment(distill_weight=1.0)), **quiet)
    with pytest.raises(ValueError, match="set experiment.distill_weight W > 0 too"):
        train(TrainConfig(**base, freeze_backbone=True, experiment=TrainExperiment(distill_tasks=["reach-v3"])), **quiet)
    with pytest.raises(ValueError, match="distill_weight must be >= 0"):
        train(TrainConfig(**base, freeze_backbone=True, experiment=TrainExperiment(distill_weight=-1.0)), **quiet)
    with pytest.raises(ValueError, match=r"no demos: \['window-open-v3'\]"):
        train(TrainConfig(**base, freeze_backbone=True,
                          experiment=TrainExperiment(distill_weight=1.0, distill_tasks=["window-open-v3"])), **quiet)
    other = copy.deepcopy(tiny_policy)
    with torch.no_grad():
        other.language_model.norm.weight.add_(0.1)
    save_policy(other, tmp_path / "other")
    with pytest.raises(ValueError, match="must have the student's backbone"):
        train(TrainConfig(**base, freeze_backbone=True,
                          experiment=TrainExperiment(distill_weight=1.0, distill_from=str(tmp_path / "other"))), **quiet)
    card = train(TrainConfig(**{**base, "steps": 20, "run_dir": str(tmp_path / "r1"), "out": str(tmp_path / "p1")},
                             freeze_backbone=True,
                             experiment=TrainExperiment(distill_weight=1.0, distill_tasks=["reach-v3"])), **quiet)
    assert "distill_ema" in card["training"]["loss_curve"][-1]
    assert "--experiment.distill-weight 1.0 --experiment.distill-tasks reach-v3" in card["command"]
    assert not torch.equal(vlaccel.load_policy(tmp_path / "p1").action_head.dit.cond_in.weight,
                           tiny_policy.action_head.dit.cond_in.weight)
