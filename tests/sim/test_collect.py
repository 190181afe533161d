"""Scripted demos: collect writes loadable, self-consistent episodes."""

import numpy as np
import pytest

pytest.importorskip("metaworld")

from vlaccel.sim.collect import EXTRA_STEPS, collect
from vlaccel.sim.data import action_targets, demo_path, load_demos

pytestmark = pytest.mark.sim


def test_collect_writes_consistent_npz(tmp_path):
    report = collect(
        ["reach-memory"], episodes_per_task=1, out_dir=tmp_path, seed0=5, workers=0, progress=False
    )
    assert report.written == 1 and not report.dropped
    assert demo_path(tmp_path, "reach-memory", 5).exists()
    (demo,) = load_demos(tmp_path)
    assert demo.task == "reach-memory" and demo.seed == 5 and demo.success and demo.frame_every == 4
    assert demo.instruction.startswith("reach")
    T, F = demo.num_steps, demo.num_frames
    assert demo.actions.shape == (T, 4) and demo.actions.dtype == np.float32
    assert demo.images.shape == (F, 128, 128, 3) and demo.images.dtype == np.uint8
    assert demo.states.shape == (F, 4) and demo.states.dtype == np.float32
    assert T == demo.success_step + 1 + EXTRA_STEPS  # ran on a few steps past success
    assert F == -(-T // 4)  # one frame every 4 steps, each followed by at least one action
    assert np.all(np.abs(demo.actions) <= 1)
    # frames really differ over time (the arm moves), and hand height is in the state
    assert not np.array_equal(demo.images[0], demo.images[-1])
    assert np.linalg.norm(demo.states[-1, :3] - demo.states[0, :3]) > 0.05
    # the simulator's object and goal positions at every saved frame, the first one from the reset scene
    assert demo.objects.shape == demo.goals.shape == (F, 3)
    from vlaccel.sim.env import make_env

    with make_env("reach-memory") as env:
        env.reset(seed=5, render=False)
        np.testing.assert_allclose(demo.objects[0], env.object_position(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(demo.goals, np.broadcast_to(env.goal_position(), (F, 3)), rtol=0, atol=1e-6)

    acts, mask = action_targets(demo, 0)
    assert acts.shape == (16, 4) and mask.all()
    np.testing.assert_array_equal(acts, demo.actions[:16])
    acts, mask = action_targets(demo, F - 1)
    n_real = T - (F - 1) * 4
    assert mask.sum() == n_real and not mask[n_real:].any() and np.all(acts[n_real:] == 0)
    np.testing.assert_array_equal(acts[:n_real], demo.actions[-n_real:])
    with pytest.raises(IndexError):
        action_targets(demo, F)

    # a rerun keeps the file (resume) instead of re-collecting it
    again = collect(
        ["reach-memory"], episodes_per_task=1, out_dir=tmp_path, seed0=5, workers=0, progress=False
    )
    assert again.written == 0 and again.existing == 1
    assert load_demos(tmp_path, tasks=["push-v3"]) == []


def test_dart_noise_moves_the_arm_but_keeps_the_experts_labels():
    from vlaccel.sim.collect import run_expert_episode

    clean = run_expert_episode("reach-v3", 7)
    noisy = run_expert_episode("reach-v3", 7, action_noise=0.3, noise_hold=4)
    again = run_expert_episode("reach-v3", 7, action_noise=0.3, noise_hold=4)
    np.testing.assert_array_equal(noisy["actions"], again["actions"])  # the seed fixes the noise
    np.testing.assert_array_equal(noisy["states"][0], clean["states"][0])
    # step 0 sees the same state, so its label is the clean expert's action, not the noisy one that was executed
    np.testing.assert_array_equal(noisy["actions"][0], clean["actions"][0])
    n = min(len(noisy["states"]), len(clean["states"]))
    assert np.abs(noisy["states"][1:n, :3] - clean["states"][1:n, :3]).max() > 0.01  # the arm went off course
    assert noisy["success"] and np.all(np.abs(noisy["actions"]) <= 1)
    with pytest.raises(ValueError, match="action_noise"):
        run_expert_episode("reach-v3", 7, action_noise=-0.1)
