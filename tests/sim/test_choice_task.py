"""reach-choice-long: a long-horizon memory task where what must be remembered is a choice among three targets."""

from __future__ import annotations

import numpy as np
import pytest

from vlaccel.sim.env import make_env
from vlaccel.sim.tasks import get_task, resolve_tasks

TASK = "reach-choice-long"
FRAME = 4  # env steps per policy call (the reference policy executes 4 of its 16 actions per call)


def _episode(env, seed, driver=None, choice=None, render=False):
    """One episode with the scripted expert (or ``driver(env)`` from the go signal on); returns (success, frames
    {env step: image} when rendering)."""
    obs = env.reset(seed=seed, render=render, choice=choice)
    frames = {0: obs.image}
    done = succeeded = False
    while not (succeeded or done):
        go = env.t >= env.cue_times.go_step
        action = driver(env) if (driver is not None and go) else env.expert_action()
        obs, succeeded, done = env.step(action, render=render and (env.t + 1) % FRAME == 0)
        if obs.image is not None:
            frames[env.t] = obs.image
    return succeeded, frames


def _go_to(target):
    def drive(env):
        hand = np.asarray(env._raw_obs[:3])
        return np.clip(np.append(5.0 * (np.asarray(target) - hand), 0.0), -1, 1).astype(np.float32)

    return drive


def test_choice_task_is_scheduled_per_seed_with_a_uniform_choice():
    spec = get_task(TASK)
    assert spec.memory and spec.suite == "long-horizon" and TASK not in resolve_tasks(None)
    times = [spec.cue.draw(TASK, s) for s in range(600)]
    assert times == [spec.cue.draw(TASK, s) for s in range(600)]  # the same seed, the same schedule and choice
    counts = np.bincount([t.choice for t in times], minlength=3)
    assert counts.min() >= 170  # uniform over 3 targets (expected 200 each)
    for t in times:
        assert t.cue_start >= 2 * FRAME  # after the 2 sink frames
        assert (t.go_step - t.cue_end) // FRAME >= 17  # the 2-frame recent window has long lost the cue at go
    # holding at the waypoint never reaches a target
    gaps = np.linalg.norm(np.asarray(spec.cue.targets) - np.asarray(spec.cue.waypoint), axis=1)
    assert gaps.min() >= 0.2


def test_choice_task_expert_solves_every_seed_in_40_plus_calls():
    with make_env(TASK) as env:
        calls = []
        for seed in range(20):
            solved, _ = _episode(env, seed)
            assert solved and not env.wrong_choice, f"expert failed {TASK} seed {seed}"
            assert env.t >= env.cue_times.go_step
            calls.append(env.t / FRAME)
    assert min(calls) >= 40


def test_without_the_cue_frames_every_choice_looks_the_same():
    """What a cache without the cue frames holds is the same whatever the goal is: on one seed, every frame the
    expert sees up to the go signal is pixel-identical across the three choices except the cue frames, and those
    differ. So a window-only cache (instruction + last 2 frames) decides at chance, 1/3."""
    with make_env(TASK) as env:
        seed = 3
        runs = []
        for choice in range(3):
            obs = env.reset(seed=seed, choice=choice)
            times = env.cue_times
            frames = {0: obs.image}
            while env.t < times.go_step:
                obs, _, _ = env.step(env.expert_action(), render=(env.t + 1) % FRAME == 0)
                if obs.image is not None:
                    frames[env.t] = obs.image
            runs.append(frames)
        cue = set(range(times.cue_start, times.cue_end, FRAME))
        assert cue and set(runs[0]) == set(runs[1]) == set(runs[2])
        for t in runs[0]:
            same = all(np.array_equal(runs[0][t], r[t]) for r in runs[1:])
            assert same == (t not in cue), f"env step {t}: identical across choices is {same}"


def test_reaching_another_target_after_go_fails_the_episode():
    spec = get_task(TASK)
    targets = spec.cue.targets
    with make_env(TASK) as env:
        wins = 0
        for seed in range(12):
            choice = spec.cue.draw(TASK, seed).choice
            # always reaching target 0 is a blind guess: it wins exactly when target 0 is the goal
            solved, _ = _episode(env, seed, driver=_go_to(targets[0]))
            assert solved == (choice == 0) and env.wrong_choice == (choice != 0)
            wins += solved
        assert 0 < wins < 12
        # a wrong target ends the episode at once, and stepping on refuses
        _episode(env, 0, driver=_go_to(targets[(spec.cue.draw(TASK, 0).choice + 1) % 3]))
        assert env.wrong_choice and env.t < spec.max_steps
        with pytest.raises(RuntimeError, match="wrong target reached"):
            env.step(np.zeros(4, dtype=np.float32))
        with pytest.raises(ValueError, match="choice must be in"):
            env.reset(seed=0, choice=3)
