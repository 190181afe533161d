"""Scripted demos: collect writes loadable, self-consistent episodes."""

import numpy as np
import pytest

pytest.importorskip("metaworld")

from vlaccel.sim.collect import EXTRA_STEPS, collect  # noqa: E402 (after importorskip)
from vlaccel.demo_files import action_targets, demo_path, load_demos  # noqa: E402 (after importorskip)

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
    with pytest.raises(IndexError, match=f"frame {F} out of range"):
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


class _LiftPolicy:
    """Stand-in for a trained policy in history mode: always lifts the arm straight up; counts its calls."""

    def __init__(self):
        self.resets, self.calls = [], 0

    def reset(self, instruction):
        self.resets.append(instruction)

    def step(self, image, proprio=None):
        assert image.shape == (128, 128, 3) and proprio.shape == (4,)
        self.calls += 1
        return np.tile(np.array([0.0, 0.0, 1.0, 0.0], np.float32), (16, 1))


def test_roll_in_policy_drives_until_handoff_and_the_expert_labels_every_step():
    from vlaccel.sim.collect import run_expert_episode
    from vlaccel.sim.roll_in import PolicyRollIn

    clean = run_expert_episode("reach-v3", 7)
    policy = _LiftPolicy()
    ep = run_expert_episode("reach-v3", 7, driver=PolicyRollIn(policy, handoff_frame=3, frame_every=4))
    assert policy.resets == [ep["instruction"]] and policy.calls == 3  # frames 0, 1, 2 (env steps 0, 4, 8)
    # the policy's actions were executed: the hand rose, although the expert's labels point elsewhere
    assert ep["states"][3, 2] - ep["states"][0, 2] > 0.03
    assert np.abs(ep["actions"][:12, 2] - 1.0).min() > 0.1
    # step 0 sees the reset state, so its label is the clean expert's action
    np.testing.assert_array_equal(ep["actions"][0], clean["actions"][0])
    assert ep["success"]  # the expert finished the task after the hand-off
    assert ep["success_step"] > clean["success_step"]  # ... later, because of the detour

    # a driver reused for the next episode resets the policy's history there
    driver = PolicyRollIn(policy, handoff_frame=1, frame_every=4)
    run_expert_episode("reach-v3", 8, driver=driver)
    run_expert_episode("reach-v3", 9, driver=driver)
    assert len(policy.resets) == 3 and policy.calls == 5


def test_handoff_frames_are_reproducible_and_in_range():
    from vlaccel.sim.roll_in import default_handoff_max, handoff_frame

    frames = [handoff_frame("push-v3", s, 4, max_frames=6) for s in range(200)]
    assert frames == [handoff_frame("push-v3", s, 4, max_frames=6) for s in range(200)]
    assert set(frames) == set(range(1, 7))  # uniform over [1, 6]: every value occurs in 200 draws
    assert default_handoff_max("push-v3", 4) == 120 // 4 // 3
    assert 1 <= handoff_frame("push-v3", 3, 4) <= default_handoff_max("push-v3", 4)
    with pytest.raises(ValueError, match="hand-off"):
        handoff_frame("push-v3", 0, 4, max_frames=0)


def test_collect_refuses_roll_in_settings_that_cannot_work(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        collect(["reach-v3"], 1, out_dir=tmp_path, roll_in="reference", action_noise=0.1, progress=False)
    with pytest.raises(ValueError, match="needs a roll-in policy"):
        collect(["reach-v3"], 1, out_dir=tmp_path, handoff_max=5, progress=False)
    with pytest.raises(Exception, match="nowhere"):
        collect(["reach-v3"], 1, out_dir=tmp_path, roll_in=str(tmp_path / "nowhere"), progress=False)
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
def test_collect_with_a_saved_policy_rolling_in(tmp_path, tiny_policy):
    from vlaccel.models.io import save_policy
    from vlaccel.sim.collect import run_expert_episode
    from vlaccel.sim.roll_in import handoff_frame

    save_policy(tiny_policy, tmp_path / "policy")
    size = tiny_policy.config.image_size
    report = collect(["reach-v3"], episodes_per_task=2, out_dir=tmp_path / "demos", seed0=3, workers=0,
                     image_size=size, roll_in=str(tmp_path / "policy"), handoff_max=2, progress=False)
    assert report.written == 2, report.dropped  # the expert recovers from two frames of a random policy
    demos = load_demos(tmp_path / "demos")
    assert [d.seed for d in demos] == [3, 4] and demos[0].images.shape[1:] == (size, size, 3)
    clean = [run_expert_episode("reach-v3", d.seed, image_size=size) for d in demos]
    for demo, expert_only in zip(demos, clean):
        h = handoff_frame("reach-v3", demo.seed, 4, max_frames=2)
        # the random policy drove the first h frames: the arm is elsewhere than under the expert alone
        assert np.abs(demo.states[h, :3] - expert_only["states"][h, :3]).max() > 1e-3

