"""Scripted demonstrations: run Meta-World's expert and save what a policy would have seen.

    report = collect(["reach-v3", "reach-memory"], episodes_per_task=60, out_dir="data/demos", workers=2)

Episode i of a task uses seed `seed0 + i`. Each episode runs the expert until success, then
`extra_steps` more (so a policy also learns what "done" looks like), or until the task's `max_steps`.
Images are rendered only at the frames that are saved (every `frame_every` env steps, matching the
evaluation loop's `action_repeat`), which keeps collection at roughly 100+ episodes/min per core.
Failed episodes are dropped (and reported). Existing files are kept, so an interrupted run resumes.

``roll_in`` collects DAgger-style demos instead: a trained policy drives the first frames, then the expert takes
over (:mod:`vlaccel.sim.roll_in`).

``action_noise`` > 0 collects DART-style demos (Laskey et al. 2017, "DART: Noise Injection for Robust Imitation
Learning"): the arm executes the expert's action plus Gaussian noise on the xyz components, held for
``noise_hold`` steps so the hand really drifts, while the file stores the expert's clean action at every visited
state. The demos then show how the expert recovers from the off-course states a cloned policy drifts into.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlaccel.errors import UsageError
from vlaccel.progress import progress_bar
from vlaccel.demo_files import demo_path, save_demo
from vlaccel.sim.tasks import get_task, resolve_tasks

EXTRA_STEPS = 8


@dataclass
class CollectReport:
    out_dir: str
    written: int = 0
    existing: int = 0
    dropped: list[tuple[str, int]] = field(default_factory=list)
    episode_lengths: dict[str, list[int]] = field(default_factory=dict)  # success step per kept demo
    seconds: float = 0.0

    @property
    def episodes_per_min(self) -> float:
        done = self.written + len(self.dropped)
        return 60.0 * done / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "out_dir": self.out_dir,
            "written": self.written,
            "existing": self.existing,
            "dropped": [list(d) for d in self.dropped],
            "seconds": round(self.seconds, 2),
            "episodes_per_min": round(self.episodes_per_min, 1),
            "mean_success_step": {t: float(np.mean(v)) for t, v in self.episode_lengths.items() if v},
        }


def _check_noise(action_noise: float, noise_hold: int) -> None:
    if not action_noise >= 0 or noise_hold < 1:
        raise UsageError(f"action_noise (--action-noise) must be >= 0 and noise_hold (--noise-hold) >= 1, got "
                         f"{action_noise}, {noise_hold}")


class DartNoise:
    """A driver for :func:`run_expert_episode`: the expert's action plus Gaussian noise on xyz, drawn anew every
    ``hold`` steps from a generator seeded by the episode's ``seed`` (the gripper command stays the expert's)."""

    def __init__(self, seed: int, sigma: float, hold: int) -> None:
        _check_noise(sigma, hold)
        self.sigma, self.hold = float(sigma), int(hold)
        self._rng = np.random.default_rng([int(seed), 0xDA27])
        self._noise = np.zeros(4, np.float32)

    def __call__(self, env, obs, expert_action: np.ndarray) -> np.ndarray:
        if env.t % self.hold == 0:
            self._noise[:3] = self._rng.normal(0.0, self.sigma, 3)
        return np.clip(expert_action + self._noise, -1.0, 1.0)


def run_expert_episode(
    task: str,
    seed: int,
    *,
    image_size: int = 128,
    frame_every: int = 4,
    extra_steps: int = EXTRA_STEPS,
    env=None,
    action_noise: float = 0.0,
    noise_hold: int = 8,
    driver: Callable | None = None,
) -> dict:
    """Roll out one episode labelled by the scripted expert; returns arrays + metadata (nothing written).

    The file's ``actions`` are always the expert's action for the state the env was in. What is *executed* is
    the expert's action itself, or what ``driver(env, obs, expert_action)`` returns (called before every env
    step; see :class:`DartNoise` and :class:`vlaccel.sim.roll_in.PolicyRollIn`). ``action_noise`` > 0 is
    shorthand for ``driver=DartNoise(seed, action_noise, noise_hold)``.
    """
    from vlaccel.sim.env import cached_env

    _check_noise(action_noise, noise_hold)
    if action_noise > 0:
        if driver is not None:
            raise ValueError("give either action_noise or a driver, not both")
        driver = DartNoise(seed, action_noise, noise_hold)
    env = env if env is not None else cached_env(task, image_size)
    obs = env.reset(seed=seed)
    images, states, actions = [obs.image], [obs.state], []
    objects, goals = [env.object_position()], [env.goal_position()]
    success_step = None
    done = False
    while not done:
        action = env.expert_action()
        executed = action if driver is None else driver(env, obs, action)
        render = (env.t + 1) % frame_every == 0
        obs, success, done = env.step(executed, render=render)
        actions.append(action)
        if success and success_step is None:
            success_step = env.t - 1
        if success_step is not None and env.t >= success_step + 1 + extra_steps:
            done = True
        if render and not done:
            images.append(obs.image)
            states.append(obs.state)
            objects.append(env.object_position())
            goals.append(env.goal_position())
    return {
        "task": task,
        "seed": int(seed),
        "instruction": env.instruction,
        "success": success_step is not None,
        "success_step": -1 if success_step is None else int(success_step),
        "frame_every": int(frame_every),
        "images": np.stack(images),
        "states": np.stack(states),
        "actions": np.stack(actions).astype(np.float32),
        "objects": np.stack(objects).astype(np.float32),
        "goals": np.stack(goals).astype(np.float32),
    }


def _collect_one(job: tuple) -> tuple[str, int, bool, int, str | None]:
    """Worker body: run one episode, write it if successful. Returns (task, seed, success, success_step, err)."""
    task, seed, out_dir, image_size, frame_every, extra_steps, action_noise, noise_hold, roll_in, handoff_max = job
    try:
        driver = None
        if roll_in is not None:
            from vlaccel.sim.policies import get_policy
            from vlaccel.sim.protocol import BASELINE
            from vlaccel.sim.roll_in import PolicyRollIn, handoff_frame

            policy, _ = get_policy(roll_in, BASELINE, image_size)  # loaded once per process
            driver = PolicyRollIn(policy, handoff_frame(task, seed, frame_every, handoff_max), frame_every)
        ep = run_expert_episode(
            task, seed, image_size=image_size, frame_every=frame_every, extra_steps=extra_steps,
            action_noise=action_noise, noise_hold=noise_hold, driver=driver,
        )
        if ep["success"]:
            save_demo(demo_path(out_dir, task, seed), **{k: v for k, v in ep.items()})
        return task, seed, ep["success"], ep["success_step"], None
    except Exception as e:  # noqa: BLE001  (keep the run going; the episode is reported as dropped)
        return task, seed, False, -1, f"{type(e).__name__}: {e}"


def _init_worker(runs_policy: bool = False) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    if runs_policy:  # a roll-in policy runs in every worker: one torch thread each, no oversubscription
        import torch

        torch.set_num_threads(1)


def collect(
    task_names: list[str] | None = None,
    episodes_per_task: int = 60,
    out_dir: str | Path = "data/demos",
    seed0: int = 0,
    frame_every: int = 4,
    workers: int | None = None,
    image_size: int = 128,
    extra_steps: int = EXTRA_STEPS,
    overwrite: bool = False,
    progress: bool = True,
    action_noise: float = 0.0,
    noise_hold: int = 8,
    roll_in: str | None = None,
    handoff_max: int | None = None,
) -> CollectReport:
    """Collect `episodes_per_task` expert demos for each task into `out_dir/<task>/seed_<seed>.npz`.

    workers: processes (spawn); None = all cores, <= 1 runs in this process. action_noise, noise_hold: DART
    noise on the executed actions (see the module docstring); use other seeds than the clean demos' (--seed).
    roll_in: a policy (as ``vlaccel eval --policy`` takes it) that drives each episode until a random hand-off
    frame in [1, handoff_max] before the expert takes over (:mod:`vlaccel.sim.roll_in`; DAgger's data).
    """
    tasks = resolve_tasks(task_names)
    if episodes_per_task <= 0 or frame_every <= 0:
        raise UsageError(f"episodes_per_task (--episodes) and frame_every (--frame-every) must be positive, got "
                         f"{episodes_per_task}, {frame_every}")
    _check_noise(action_noise, noise_hold)
    if roll_in is not None and action_noise > 0:
        raise UsageError("choose one way to leave the expert's path: a roll-in policy or action noise, not both")
    if handoff_max is not None and (roll_in is None or handoff_max < 1):
        raise UsageError(f"handoff_max (--handoff-max, got {handoff_max}) needs a roll-in policy (--roll-in) and must "
                         "be >= 1")
    if roll_in is not None:
        from vlaccel.sim.policies import get_policy
        from vlaccel.sim.protocol import BASELINE

        get_policy(roll_in, BASELINE, image_size)  # a wrong path fails here, once; in-process runs reuse it
    out_dir = str(out_dir)
    report = CollectReport(out_dir=out_dir, episode_lengths={t: [] for t in tasks})
    jobs = []
    for task in tasks:
        get_task(task)
        for i in range(episodes_per_task):
            seed = seed0 + i
            if not overwrite and demo_path(out_dir, task, seed).exists():
                report.existing += 1
                continue
            jobs.append((task, seed, out_dir, image_size, frame_every, extra_steps, action_noise, noise_hold,
                         roll_in, handoff_max))
    workers = (os.cpu_count() or 1) if workers is None else workers
    workers = max(1, min(workers, len(jobs) or 1))
    errors: list[str] = []
    t0 = time.perf_counter()
    with progress_bar("collect", len(jobs), enabled=progress) as bar:

        def record(res: tuple[str, int, bool, int, str | None]) -> None:
            task, seed, ok, success_step, err = res
            if ok:
                report.written += 1
                report.episode_lengths[task].append(success_step + 1)
            else:
                report.dropped.append((task, seed))
                if err:
                    errors.append(f"{task} seed {seed}: {err}")
            bar.advance(description=f"collect {task}", dropped=len(report.dropped))

        if workers <= 1:
            for job in jobs:
                record(_collect_one(job))
        else:
            ctx = mp.get_context("spawn")
            with ctx.Pool(workers, initializer=_init_worker, initargs=(roll_in is not None,)) as pool:
                for res in pool.imap_unordered(_collect_one, jobs):
                    record(res)
    report.seconds = time.perf_counter() - t0
    if errors:
        print(f"{len(errors)} demo episodes raised; first: {errors[0]}")
    return report
