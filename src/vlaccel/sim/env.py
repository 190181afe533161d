"""A small, deterministic wrapper around one Meta-World v3 task, with fast offscreen rendering.

    env = make_env("reach-memory", seed=3)
    obs = env.reset()                          # Observation(image [128,128,3] uint8, state [4], instruction)
    obs, success, done = env.step(action)      # action: [4] in [-1, 1]; render=False skips the image
    env.close()

What the policy sees is deliberately narrow: the camera image and proprioception (hand xyz + gripper
opening). Goal and object positions stay private (the scripted expert reads them through
`expert_action()`), otherwise the memory task would leak its hidden goal through the state vector.

Rendering uses `mujoco.Renderer` on the env's model/data with the settings that matter on llvmpipe
(no MSAA, no shadows): about 11 ms per 128 px frame instead of 70-100 ms with MuJoCo's defaults.
Meta-World's corner cameras come out upside down and mirrored, so frames are flipped on both axes.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlaccel.sim.tasks import TaskSpec, get_task

ACTION_DIM = 4
STATE_DIM = 4
CAMERA = "corner3"
"""Camera used for observations: a high oblique view of the whole table. It keeps the reach/push goal
region, the puck, drawer, window, button and plate in view and unoccluded at the start of an episode
(corner4 is closer but the arm hides goals on the left; topview hides them under the arm)."""


def _import_mujoco_stack() -> tuple[Any, Any, Any]:
    """Import mujoco + metaworld lazily; headless EGL unless the user chose a backend."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    import mujoco
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS
    from metaworld.policies import ENV_POLICY_MAP

    return mujoco, ALL_V3_ENVIRONMENTS, ENV_POLICY_MAP


@dataclass
class Observation:
    """What the policy observes at one control step."""

    image: np.ndarray | None  # uint8 [H, W, 3]; None when the step was taken with render=False
    state: np.ndarray  # float32 [STATE_DIM]: hand x, y, z, gripper opening in [0, 1]
    instruction: str


class SimEnv:
    """One Meta-World task with per-seed randomisation. Use `make_env` to build one."""

    def __init__(self, spec: TaskSpec, seed: int = 0, image_size: int = 128, camera: str = CAMERA) -> None:
        mujoco, envs, policies = _import_mujoco_stack()
        self._mj = mujoco
        self.spec = spec
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.camera = camera
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            env = envs[spec.env_name]()
        # What MT1 + set_task would do, but with per-reset randomisation from our own seed, and the goal
        # in Meta-World's internal obs (the expert needs it; the policy never sees that vector).
        env._partially_observable = False
        env._set_task_called = True
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env.max_path_length = spec.max_steps
        if spec.goal_range is not None:
            self._widen_goal_space(env, spec.goal_range)
        env.__dict__.pop("sawyer_observation_space", None)  # cached; depends on the two changes above
        self._env = env
        self._expert = policies[spec.env_name]()
        model = env.model
        self._goal_site = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "goal")
        if spec.goal_site_size is not None or spec.hide_goal_after is not None or spec.goal_rgb is not None:
            if self._goal_site < 0:
                raise ValueError(f"task {spec.name!r}: {spec.env_name} has no 'goal' site to resize or hide")
        if spec.goal_site_size is not None:
            model.site_size[self._goal_site] = spec.goal_site_size
        if spec.goal_rgb is not None:
            model.site_rgba[self._goal_site][:3] = spec.goal_rgb
        self._goal_alpha = float(model.site_rgba[self._goal_site][3]) if self._goal_site >= 0 else 1.0
        model.vis.quality.offsamples = 0  # must happen before the renderer creates its GL context
        self._renderer = None
        self._camera_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if self._camera_id < 0:
            raise ValueError(f"unknown camera {camera!r}")
        self._raw_obs: np.ndarray | None = None
        self.t = 0
        self.success = False

    @staticmethod
    def _widen_goal_space(env: Any, goal_range: tuple[tuple[float, ...], tuple[float, ...]]) -> None:
        from gymnasium.spaces import Box

        low, high = (np.asarray(v, dtype=np.float64) for v in goal_range)
        space = env._random_reset_space
        if space is None or space.low.size < 3:
            raise ValueError("goal_range needs a reset space whose last 3 entries are the goal")
        env._random_reset_space = Box(np.concatenate([space.low[:-3], low]),
                                      np.concatenate([space.high[:-3], high]), dtype=np.float64)
        # The internal obs clips the goal to goal_space; the expert would chase a clipped goal otherwise.
        env.goal_space = Box(low, high, dtype=np.float64)

    # ------------------------------------------------------------------ public API
    @property
    def instruction(self) -> str:
        return self.spec.instruction

    @property
    def max_steps(self) -> int:
        return self.spec.max_steps

    def reset(self, seed: int | None = None, render: bool = True) -> Observation:
        """Start an episode. The same seed always gives the same initial scene."""
        if seed is not None:
            self.seed = int(seed)
        env = self._env
        env.seed(self.seed)
        if self._goal_site >= 0:
            env.model.site_rgba[self._goal_site][3] = self._goal_alpha
        raw, _ = env.reset()
        self._raw_obs = raw
        self.t = 0
        self.success = False
        return self._observe(render)

    def step(self, action: np.ndarray, render: bool = True) -> tuple[Observation, bool, bool]:
        """Apply one action; returns (observation, success at this step, done).

        `done` is True when the time limit (`max_steps`) is reached; stepping further raises. Success does
        not end the episode by itself: evaluation stops at the first success, demo collection runs on for a
        few steps so the policy sees what "finished" looks like.
        """
        if self._raw_obs is None:
            raise RuntimeError("call reset() before step()")
        if self.t >= self.spec.max_steps:
            raise RuntimeError(f"episode is over ({self.spec.max_steps} steps); call reset()")
        a = np.asarray(action, dtype=np.float32).reshape(-1)
        if a.shape != (ACTION_DIM,):
            raise ValueError(f"action must have shape ({ACTION_DIM},), got {np.shape(action)}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action contains non-finite values: {a}")
        a = np.clip(a, -1.0, 1.0)
        raw, _reward, _term, _trunc, info = self._env.step(a)
        self._raw_obs = raw
        self.t += 1
        hide = self.spec.hide_goal_after
        if hide is not None and self.t >= hide:
            self._env.model.site_rgba[self._goal_site][3] = 0.0
        success = bool(info["success"])
        self.success = self.success or success
        return self._observe(render), success, self.t >= self.spec.max_steps

    def expert_action(self) -> np.ndarray:
        """Meta-World's scripted expert action for the current state, float32 [4] in [-1, 1]."""
        if self._raw_obs is None:
            raise RuntimeError("call reset() before expert_action()")
        with warnings.catch_warnings():  # the experts warn that their gains are high; harmless
            warnings.simplefilter("ignore")
            a = np.asarray(self._expert.get_action(self._raw_obs), dtype=np.float32)
        return np.clip(a, -1.0, 1.0)

    def render(self) -> np.ndarray:
        """The current camera image, uint8 [H, W, 3], upright."""
        if self._renderer is None:
            self._renderer = self._mj.Renderer(self._env.model, self.image_size, self.image_size)
            self._renderer.scene.flags[self._mj.mjtRndFlag.mjRND_SHADOW] = 0
            self._renderer.scene.flags[self._mj.mjtRndFlag.mjRND_REFLECTION] = 0
        self._renderer.update_scene(self._env.data, camera=self._camera_id)
        img = self._renderer.render()
        return np.ascontiguousarray(img[::-1, ::-1])  # corner cameras are flipped on both axes

    def close(self) -> None:
        """Release the GL context (avoids EGL tracebacks at interpreter exit) and the env."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        if self._env is not None:
            self._env.close()
            self._env = None

    def __enter__(self) -> SimEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _observe(self, render: bool) -> Observation:
        state = np.asarray(self._raw_obs[:STATE_DIM], dtype=np.float32).copy()
        return Observation(image=self.render() if render else None, state=state,
                           instruction=self.spec.instruction)

    def goal_position(self) -> np.ndarray:
        """Privileged goal xyz (for tests and analysis only; never part of an Observation)."""
        return np.asarray(self._env._target_pos, dtype=np.float64).copy()

    def goal_pixel(self) -> tuple[int, int] | None:
        """(row, col) where the goal site's centre projects in the (flipped) image, or None if off-screen."""
        model, data = self._env.model, self._env.data
        if self._goal_site < 0:
            return None
        cam = self._camera_id
        pos = data.site_xpos[self._goal_site] - data.cam_xpos[cam]
        rel = data.cam_xmat[cam].reshape(3, 3).T @ pos  # camera frame: x right, y up, looking along -z
        if rel[2] >= 0:
            return None
        f = 0.5 * self.image_size / np.tan(np.deg2rad(model.cam_fovy[cam]) / 2)
        u = self.image_size / 2 + f * rel[0] / -rel[2]
        v = self.image_size / 2 - f * rel[1] / -rel[2]
        # the returned image is flipped on both axes
        row, col = self.image_size - 1 - v, self.image_size - 1 - u
        if not (0 <= row < self.image_size and 0 <= col < self.image_size):
            return None
        return int(round(row)), int(round(col))


def make_env(task_name: str, seed: int = 0, image_size: int = 128) -> SimEnv:
    """Build the env for a registered task (see `vlaccel.sim.tasks.TASKS`)."""
    return SimEnv(get_task(task_name), seed=seed, image_size=image_size)
