"""Policy roll-in, expert take-over: demos from the states a trained policy actually reaches.

DAgger (Ross, Gordon & Bagnell 2011, "A Reduction of Imitation Learning and Structured Prediction to No-Regret
Online Learning") trains on the state distribution of the learner, labelled by the expert. Meta-World's scripted
experts are functions of the simulator state, so any visited state can be labelled exactly. Here the trained
policy drives the arm (closed loop, history mode, the evaluation loop's action repeat) for the first
``handoff_frame`` frames; then the expert takes over and finishes the task. Every env step stores the expert's
action for the state it was in, whoever drove. The saved episode therefore shows, from wherever the policy got
stuck, how the expert would go on, and it still ends in success, so collection's success filter and the
waypoint targets (the hand's later positions) stay meaningful.

The hand-off frame is drawn per episode, uniformly in ``[1, max_frames]`` from a generator seeded by the
episode's seed, so a collection is reproducible. ``max_frames`` defaults to a third of the task's horizon
(in frames), which leaves the expert enough steps to finish from a policy's typical detour.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlaccel.sim.episode import as_action_chunk
from vlaccel.sim.tasks import get_task

ROLL_IN_SEED = 0xDA66


def default_handoff_max(task: str, frame_every: int) -> int:
    """A third of ``task``'s horizon, in frames (at least 1)."""
    return max(1, get_task(task).max_steps // frame_every // 3)


def handoff_frame(task: str, seed: int, frame_every: int, max_frames: int | None = None) -> int:
    """The frame at which the expert takes over episode ``seed``: uniform in [1, max_frames], reproducible."""
    top = default_handoff_max(task, frame_every) if max_frames is None else int(max_frames)
    if top < 1:
        raise ValueError(f"the roll-in's last hand-off frame must be >= 1, got {max_frames}")
    return int(np.random.default_rng([int(seed), ROLL_IN_SEED]).integers(1, top + 1))


class PolicyRollIn:
    """A driver for :func:`vlaccel.sim.collect.run_expert_episode`: the policy's action until the hand-off.

    Called once per env step with the env, the latest observation and the expert's action for the current
    state; returns the action to execute. The policy's history is reset at the episode's first step, so one
    driver can serve consecutive episodes. At every ``frame_every``-th step before the hand-off the policy sees
    the observation (``policy.step``, history mode) and its chunk's first ``frame_every`` actions are executed,
    as in evaluation.
    """

    def __init__(self, policy: Any, handoff_frame: int, frame_every: int) -> None:
        if handoff_frame < 0 or frame_every < 1:
            raise ValueError(f"handoff_frame must be >= 0 and frame_every >= 1, got {handoff_frame}, {frame_every}")
        self.policy = policy
        self.frame_every = int(frame_every)
        self.handoff_step = int(handoff_frame) * self.frame_every
        self._chunk: np.ndarray | None = None  # [chunk, 4] the policy's latest actions

    def __call__(self, env: Any, obs: Any, expert_action: np.ndarray) -> np.ndarray:
        if env.t >= self.handoff_step:
            return expert_action
        if env.t == 0:
            self.policy.reset(env.instruction)  # a new episode: forget the last one's history
        k = env.t % self.frame_every
        if k == 0:
            self._chunk = as_action_chunk(self.policy.step(obs.image, proprio=obs.state))
            if len(self._chunk) < self.frame_every:
                raise ValueError(
                    f"the policy returns {len(self._chunk)} actions per call, fewer than frame_every="
                    f"{self.frame_every}; collect with --frame-every <= {len(self._chunk)}"
                )
        return self._chunk[k]
