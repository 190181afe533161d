"""The task suite: every task resets, renders, steps, and its scripted expert succeeds."""

import numpy as np
import pytest

pytest.importorskip("metaworld")

from vlaccel.sim.env import ACTION_DIM, STATE_DIM, make_env  # noqa: E402 (after importorskip)
from vlaccel.sim.tasks import TASKS, get_task, resolve_tasks  # noqa: E402 (after importorskip)

pytestmark = pytest.mark.sim


def test_registry_has_the_suite():
    assert len(TASKS) >= 7
    assert any(spec.memory for spec in TASKS.values())
    for spec in TASKS.values():
        assert spec.instruction and spec.max_steps <= (150 if spec.suite == "core" else 480)
    with pytest.raises(KeyError, match="choose from"):
        get_task("no-such-task")


@pytest.mark.parametrize("task", list(TASKS))
def test_reset_render_step_and_expert_succeeds(task):
    with make_env(task, seed=0) as env:
        obs = env.reset()
        assert obs.image.shape == (128, 128, 3) and obs.image.dtype == np.uint8
        assert obs.image.std() > 10 and obs.image.max() > 50  # a real scene, not a blank frame
        assert obs.state.shape == (STATE_DIM,) and obs.state.dtype == np.float32
        assert obs.instruction == TASKS[task].instruction
        obs, _, done = env.step(np.zeros(ACTION_DIM, dtype=np.float32), render=False)
        assert obs.image is None and not done
        succeeded = False
        while not (succeeded or done):
            action = env.expert_action()
            assert action.shape == (ACTION_DIM,) and np.all(np.abs(action) <= 1)
            obs, succeeded, done = env.step(action, render=False)
        assert succeeded, f"expert failed {task} seed 0 after {env.t} steps"


def test_same_seed_same_episode_and_seeds_differ():
    with make_env("push-v3", seed=3) as env:
        a = env.reset()
        goal_a = env.goal_position()
        env.step(np.ones(ACTION_DIM))
        b = env.reset()
        assert np.array_equal(a.image, b.image) and np.array_equal(goal_a, env.goal_position())
        env.reset(seed=4)
        assert not np.allclose(goal_a, env.goal_position())


@pytest.mark.parametrize("task", ["push-v3", "window-open-v3"])
def test_object_position_is_current_at_reset_and_follows_the_object(task):
    with make_env(task) as env:
        env.reset(seed=3, render=False)
        env.reset(seed=4, render=False)  # after another scene: nothing stale from seed 3 may remain
        at_reset = env.object_position()
        obs, _, _ = env.step(np.zeros(ACTION_DIM), render=False)  # a zero action leaves the object in place
        np.testing.assert_allclose(at_reset, env._raw_obs[4:7], rtol=0, atol=1e-3)  # Meta-World's own obs slot
        env.reset(seed=3, render=False)
        assert np.linalg.norm(env.object_position() - at_reset) > 0.01  # seeds place the object differently


def test_proprio_is_hand_and_gripper_only():
    with make_env("reach-memory", seed=1) as env:
        obs = env.reset()
        assert obs.state.shape == (4,)
        goal = env.goal_position()
        hand = env._env.get_endeff_pos()
        np.testing.assert_allclose(obs.state[:3], hand, atol=0.02)  # xyz of the hand
        assert 0.0 <= obs.state[3] <= 1.0  # gripper opening
        # the goal is 3+ cm away from anything in the state vector
        assert np.linalg.norm(obs.state[:3] - goal) > 0.1
        assert not any(np.isclose(obs.state, g, atol=1e-4).any() for g in goal)


def _goal_is_drawn(env, image):
    """Is the goal marker drawn at its projected pixel? (green, unlike the table and arm)"""
    r, c = env.goal_pixel()
    patch = image[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2].reshape(-1, 3).astype(int)
    return bool(((patch[:, 1] > 150) & (patch[:, 0] < 120) & (patch[:, 2] < 120)).any())


def test_memory_task_hides_goal_after_first_frames():
    spec = TASKS["reach-memory"]
    assert spec.memory and spec.hide_goal_after == 8
    with make_env("reach-memory", seed=2) as env:
        frames = [env.reset().image]
        hold = np.zeros(ACTION_DIM, dtype=np.float32)  # keep the arm still so only the goal can change
        for _ in range(12):
            obs, _, _ = env.step(hold)
            frames.append(obs.image)
        assert (
            _goal_is_drawn(env, frames[0])
            and _goal_is_drawn(env, frames[4])
            and _goal_is_drawn(env, frames[7])
        )
        for t in (8, 12):
            assert not _goal_is_drawn(env, frames[t])
        # and the only thing that changed between step 7 and 8 is the goal marker (~tens of pixels)
        changed = (np.abs(frames[7].astype(int) - frames[8].astype(int)).sum(-1) > 30).sum()
        assert 10 < changed < 400
        # reset shows it again
        assert _goal_is_drawn(env, env.reset().image)
    # the plain reach task never hides it
    with make_env("reach-v3", seed=2) as env:
        env.reset()
        for _ in range(12):
            obs, _, _ = env.step(np.zeros(ACTION_DIM))
        assert _goal_is_drawn(env, obs.image)


def test_bad_actions_are_rejected():
    with make_env("reach-v3", seed=0) as env:
        env.reset(render=False)
        with pytest.raises(ValueError, match="action must have shape"):
            env.step(np.zeros(3))
        with pytest.raises(ValueError, match="action contains non-finite values"):
            env.step(np.array([np.nan, 0, 0, 0]))


# ---------------------------------------------------------------------- the long-horizon memory task
LONG = "reach-memory-long"


def _run_expert(env, seed, driver=None):
    """Run one episode with the scripted expert (or ``driver(env)`` after the go signal); returns success."""
    env.reset(seed=seed, render=False)
    done = succeeded = False
    while not (succeeded or done):
        go = env.t >= env.cue_times.go_step
        action = driver(env) if (driver is not None and go) else env.expert_action()
        _, succeeded, done = env.step(action, render=False)
    return succeeded


def test_long_memory_task_is_named_and_scheduled_as_one():
    spec = get_task(LONG)
    assert spec.memory and spec.max_steps >= 400 and spec.hide_goal_after is None and spec.cue is not None
    assert spec.suite == "long-horizon" and LONG not in resolve_tasks(None) and resolve_tasks([LONG]) == [LONG]
    times = [spec.cue.draw(LONG, s) for s in range(200)]
    assert times == [spec.cue.draw(LONG, s) for s in range(200)]  # the same seed, the same schedule
    starts = {t.cue_start for t in times}
    assert len(starts) > 10 and min(starts) >= 48 and max(starts) <= 160  # drawn per seed, after the 2 sink frames
    for t in times:
        assert t.cue_end - t.cue_start == 12 and t.go_step - t.cue_end >= 180  # 45+ frames between cue and go
    # the waypoint is >= 0.15 m from every goal the task can draw (z = 0.15 plane), so holding never succeeds
    low, high = spec.goal_range
    assert spec.cue.waypoint[2] - high[2] >= 0.15


@pytest.mark.slow
def test_long_memory_task_expert_solves_every_seed_in_100_plus_calls():
    with make_env(LONG) as env:
        lengths = []
        for seed in range(20):
            assert _run_expert(env, seed), f"expert failed {LONG} seed {seed}"
            assert env.t >= env.cue_times.go_step  # success can only count after the go signal
            lengths.append(env.t)
    assert np.mean(lengths) / 4 >= 100  # policy calls at 4 actions per call


def test_long_memory_task_shows_the_cue_only_in_its_window_and_walls_turn_at_go():
    with make_env(LONG) as env:
        obs = env.reset(seed=5)
        ct = env.cue_times
        frames = {0: obs.image}
        while env.t < ct.go_step + 4:
            obs, _, _ = env.step(env.expert_action())
            if env.t % 4 == 0:
                frames[env.t] = obs.image
        shown = [t for t, img in frames.items() if _goal_is_drawn(env, img)]
        assert shown == list(range(ct.cue_start, ct.cue_end, 4))  # exactly the 3 cue frames
        def blue_on_left_edge(image):  # pixels of the 6 leftmost columns where blue is clearly above red
            px = image[:, :6].reshape(-1, 3).astype(int)
            return int(((px[:, 2] - px[:, 0]) > 60).sum())

        # the wall along the image's left edge turns blue at go (207 px on this seed), not before
        assert blue_on_left_edge(frames[ct.go_step - 4]) < 20 and blue_on_left_edge(frames[ct.go_step]) > 100
        # reset restores the walls and hides the goal again
        first = env.reset(seed=5).image
        assert np.array_equal(first, frames[0])


@pytest.mark.slow
def test_long_memory_task_needs_the_cue():
    """A policy that never saw the cue can only guess: going to the centre of the goal region after the go
    signal (the best blind guess) succeeds rarely, the expert always."""
    spec = get_task(LONG)
    centre = np.mean(np.asarray(spec.goal_range), axis=0)

    def blind(env):
        hand = np.asarray(env._raw_obs[:3])
        return np.clip(np.append(5.0 * (centre - hand), 0.0), -1, 1).astype(np.float32)

    with make_env(LONG) as env:
        wins = sum(_run_expert(env, seed, blind) for seed in range(40))
    assert wins <= 6  # measured 3/100 seeds; the success ball covers pi 0.05^2 of the 0.5 x 0.2 m goal region
