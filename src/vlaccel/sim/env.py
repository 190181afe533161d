"""A small, deterministic wrapper around one Meta-World v3 task, with fast offscreen rendering.

    env = make_env("reach-memory", seed=3)
    obs = env.reset()                          # Observation(image [128,128,3] uint8, state [4], instruction)
    obs, success, done = env.step(action)      # action: [4] in [-1, 1]; render=False skips the image
    env.close()

What the policy sees is deliberately narrow: the camera image and proprioception (hand xyz + gripper
opening). Goal and object positions stay private (the scripted expert reads them through
`expert_action()`), otherwise the memory task would leak its hidden goal through the state vector.

Rendering uses `mujoco.Renderer` on the env's model/data with the settings that matter on llvmpipe
(no MSAA, no shadows): about 11 ms per 128 px frame instead of 70-100 ms with MuJoCo's defaults. The
camera is our own look-at pose (see `CAMERA_POS`), so frames need no flipping (Meta-World's corner
cameras would come out flipped on both axes).
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import sys
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from vlaccel.sim.tasks import CueTimes, TaskSpec, get_task

ACTION_DIM = 4
STATE_DIM = 4
CAMERA_POS = (0.6, 0.55, 1.1)
CAMERA_TARGET = (0.0, 0.7, 0.05)
CAMERA_FOVY = 50.0
"""The observation camera: high above the right edge of the table, looking down at the workspace (about
60 degrees elevation), robot on the left of the image. Chosen by measurement over the suite: it keeps the
reach/push goal unoccluded at the first frame on every seed checked (>= 50 visible pixels at 128 px over
200 seeds, vs < 10 px on 11 % of seeds for Meta-World's corner3/corner4, where the forearm hides it),
shows the drawer handle, window, button and plate, and needs no flipping. It is installed by moving the
`corner3` camera of the env's own model copy, so Meta-World itself is untouched."""
_CAMERA_SLOT = "corner3"
_WALL_MATERIAL = "wall_metal"
"""The material of the workspace's walls; long-horizon memory tasks recolour it as their go signal (a change
of a few hundred pixels along the image's edges, visible in every frame from go on)."""
_EXPERT_GAIN = 5.0  # proportional gain of Meta-World's reach expert (metaworld.policies.action.move)
_TOUCH_RADIUS = 0.05
"""How close the hand must come to a choice task's target to count as reaching it: reach-v3's own success radius,
so reaching a target that is not the goal is exactly as decisive as reaching the goal."""


def _lookat_quat(mujoco: Any, pos: tuple[float, ...], target: tuple[float, ...]) -> np.ndarray:
    """MuJoCo camera quaternion (w, x, y, z) looking from `pos` at `target` with world z up."""
    forward = np.asarray(target, dtype=np.float64) - np.asarray(pos, dtype=np.float64)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    rot = np.stack([right, up, -forward], axis=1)  # camera axes: x right, y up, looking along -z
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, rot.reshape(-1))
    return quat


_GL_SET_TOO_LATE = False


def _import_mujoco_stack() -> tuple[Any, Any, Any]:
    """Import mujoco + metaworld lazily; headless EGL unless the user chose a backend."""
    global _GL_SET_TOO_LATE
    if "MUJOCO_GL" not in os.environ and "mujoco" in sys.modules:
        _GL_SET_TOO_LATE = True  # mujoco already picked its default (GLFW) backend; rendering will fail
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

    def __init__(self, spec: TaskSpec, seed: int = 0, image_size: int = 128) -> None:
        mujoco, envs, policies = _import_mujoco_stack()
        self._mj = mujoco
        self.spec = spec
        self.seed = int(seed)
        self.image_size = int(image_size)
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
        uses_goal = (
            spec.goal_site_size is not None
            or spec.hide_goal_after is not None
            or spec.goal_rgb is not None
            or spec.cue is not None
        )
        if uses_goal and self._goal_site < 0:
            raise ValueError(f"task {spec.name!r}: {spec.env_name} has no 'goal' site to resize or hide")
        if spec.goal_site_size is not None:
            model.site_size[self._goal_site] = spec.goal_site_size
        if spec.goal_rgb is not None:
            model.site_rgba[self._goal_site][:3] = spec.goal_rgb
        self._goal_alpha = float(model.site_rgba[self._goal_site][3]) if self._goal_site >= 0 else 1.0
        self._wall_material = -1
        if spec.cue is not None:
            self._wall_material = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_MATERIAL, _WALL_MATERIAL)
            if self._wall_material < 0:
                raise ValueError(f"task {spec.name!r}: {spec.env_name} has no {_WALL_MATERIAL!r} material")
            self._wall_rgba = model.mat_rgba[self._wall_material].copy()
        self.cue_times: CueTimes | None = None
        """This episode's drawn schedule (long-horizon memory tasks; None otherwise), set by reset()."""
        self._targets = np.asarray(spec.cue.targets if spec.cue is not None else (), dtype=np.float64).reshape(-1, 3)
        self.wrong_choice = False
        """True once the hand reached a choice task's target that is not the goal after the go signal (the
        episode is then over, a failure); set by step()."""
        model.vis.quality.offsamples = 0  # must happen before the renderer creates its GL context
        self._renderer = None
        self._atexit_hook: Any = None
        self._camera_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, _CAMERA_SLOT)
        model.cam_pos[self._camera_id] = CAMERA_POS
        model.cam_quat[self._camera_id] = _lookat_quat(mujoco, CAMERA_POS, CAMERA_TARGET)
        model.cam_fovy[self._camera_id] = CAMERA_FOVY
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
        env._random_reset_space = Box(
            np.concatenate([space.low[:-3], low]), np.concatenate([space.high[:-3], high]), dtype=np.float64
        )
        # The internal obs clips the goal to goal_space; the expert would chase a clipped goal otherwise.
        env.goal_space = Box(low, high, dtype=np.float64)

    # ------------------------------------------------------------------ public API
    @property
    def instruction(self) -> str:
        return self.spec.instruction

    @property
    def max_steps(self) -> int:
        return self.spec.max_steps

    def reset(self, seed: int | None = None, render: bool = True, choice: int | None = None) -> Observation:
        """Start an episode. The same seed always gives the same initial scene.

        choice: on a choice task, make target ``choice`` the goal instead of the one drawn for the seed (the
        schedule and everything else stay the seed's; for tests and analysis)."""
        if seed is not None:
            self.seed = int(seed)
        env = self._env
        env.seed(self.seed)
        if self.spec.cue is not None:
            self.cue_times = self.spec.cue.draw(self.spec.name, self.seed)
        if choice is not None:
            if not 0 <= choice < len(self._targets):
                raise ValueError(f"task {self.spec.name!r}: choice must be in [0, {len(self._targets)}), got {choice}")
            self.cue_times = dataclasses.replace(self.cue_times, choice=int(choice))
        self.t = 0
        self.wrong_choice = False
        self._show_schedule()
        raw, _ = env.reset()
        if len(self._targets):
            # The goal is the chosen target. Meta-World drew its own goal (and, away from that, the object) from
            # the seed; only the goal is replaced, so nothing else in the scene depends on the choice.
            goal = self._targets[self.cue_times.choice].copy()
            env._target_pos = goal
            env.model.site("goal").pos = goal
            raw = raw.copy()
            raw[-3:] = goal  # the goal slot of Meta-World's internal obs (what the scripted expert reads)
        # Meta-World moves the goal site after its last simulation step in reset, so the derived
        # positions (what gets rendered) are stale until the next step: the first frame would show the
        # previous episode's goal. Recompute them.
        self._mj.mj_forward(env.model, env.data)
        self._raw_obs = raw
        self.success = False
        return self._observe(render)

    def step(self, action: np.ndarray, render: bool = True) -> tuple[Observation, bool, bool]:
        """Apply one action; returns (observation, success at this step, done).

        `done` is True when the time limit (`max_steps`) is reached, or on a choice task when the hand reached a
        target that is not the goal after the go signal (`wrong_choice`, a failure); stepping further raises. Success does
        not end the episode by itself: evaluation stops at the first success, demo collection runs on for a
        few steps so the policy sees what "finished" looks like.
        """
        if self._raw_obs is None:
            raise RuntimeError("call reset() before step()")
        if self.t >= self.spec.max_steps or self.wrong_choice:
            raise RuntimeError(f"episode is over ({self.spec.max_steps} steps or a wrong target reached); call reset()")
        a = np.asarray(action, dtype=np.float32).reshape(-1)
        if a.shape != (ACTION_DIM,):
            raise ValueError(f"action must have shape ({ACTION_DIM},), got {np.shape(action)}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action contains non-finite values: {a}")
        a = np.clip(a, -1.0, 1.0)
        raw, _reward, _term, _trunc, info = self._env.step(a)
        self._raw_obs = raw
        self.t += 1
        self._show_schedule()
        went = self.cue_times is None or self.t >= self.cue_times.go_step
        success = bool(info["success"]) and went
        if len(self._targets) and went and not success:
            near = np.linalg.norm(self._targets - np.asarray(self._env.tcp_center), axis=1) < _TOUCH_RADIUS  # [targets]
            near[self.cue_times.choice] = False
            self.wrong_choice = self.wrong_choice or bool(near.any())
        self.success = self.success or success
        return self._observe(render), success, self.wrong_choice or self.t >= self.spec.max_steps

    def expert_action(self) -> np.ndarray:
        """Meta-World's scripted expert action for the current state, float32 [4] in [-1, 1]. On a
        long-horizon memory task, before the go signal the expert holds the hand at the schedule's waypoint
        (the same proportional move as Meta-World's reach expert, gripper effort 0)."""
        if self._raw_obs is None:
            raise RuntimeError("call reset() before expert_action()")
        if self.cue_times is not None and self.t < self.cue_times.go_step:
            hand = np.asarray(self._raw_obs[:3], dtype=np.float64)
            move = _EXPERT_GAIN * (np.asarray(self.spec.cue.waypoint) - hand)
            return np.clip(np.append(move, 0.0), -1.0, 1.0).astype(np.float32)
        with warnings.catch_warnings():  # the experts warn that their gains are high; harmless
            warnings.simplefilter("ignore")
            a = np.asarray(self._expert.get_action(self._raw_obs), dtype=np.float32)
        return np.clip(a, -1.0, 1.0)

    def render(self) -> np.ndarray:
        """The current camera image, uint8 [H, W, 3], upright."""
        if self._renderer is None:
            try:
                self._renderer = self._mj.Renderer(self._env.model, self.image_size, self.image_size)
            except Exception as e:  # mujoco.FatalError when the GL backend is wrong for this machine
                why = (
                    "mujoco was imported before MUJOCO_GL was set, so it chose GLFW"
                    if _GL_SET_TOO_LATE
                    else f"MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}"
                )
                raise RuntimeError(
                    f"MuJoCo could not create an offscreen GL context ({why}): {e}. "
                    "Set MUJOCO_GL=egl (or osmesa) in the environment before anything imports mujoco."
                ) from e
            # Free the GL context at exit *before* MuJoCo's own atexit hook terminates the EGL display
            # (atexit runs last-registered first; MuJoCo registers its hook when the first context is
            # made, i.e. just above). Otherwise every unclosed env prints EGLError tracebacks at exit.
            ref = weakref.ref(self)

            def _close_at_exit() -> None:
                env = ref()
                if env is not None:
                    env.close()

            self._atexit_hook = _close_at_exit
            atexit.register(_close_at_exit)
            self._renderer.scene.flags[self._mj.mjtRndFlag.mjRND_SHADOW] = 0
            self._renderer.scene.flags[self._mj.mjtRndFlag.mjRND_REFLECTION] = 0
        self._renderer.update_scene(self._env.data, camera=self._camera_id)
        self._draw_targets(self._renderer.scene)
        return self._renderer.render().copy()

    def close(self) -> None:
        """Release the GL context (avoids EGL tracebacks at interpreter exit) and the env."""
        if self._atexit_hook is not None:
            atexit.unregister(self._atexit_hook)
            self._atexit_hook = None
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        if self._env is not None:
            self._env.close()
            self._env = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _show_schedule(self) -> None:
        """Goal marker and wall colour for env step `self.t` (what the next rendered frame shows)."""
        model = self._env.model
        if self._goal_site >= 0:
            visible = True
            if self.spec.hide_goal_after is not None:
                visible = self.t < self.spec.hide_goal_after
            if self.cue_times is not None:
                visible = self.cue_times.cue_start <= self.t < self.cue_times.cue_end and not len(self._targets)
            model.site_rgba[self._goal_site][3] = self._goal_alpha if visible else 0.0
        if self.cue_times is not None:
            went = self.t >= self.cue_times.go_step
            model.mat_rgba[self._wall_material] = self.spec.cue.go_rgba if went else self._wall_rgba

    def _draw_targets(self, scene: Any) -> None:
        """A choice task's targets, added to the rendered scene as spheres of the goal marker's size: every
        target in the schedule's grey, the goal in the task's goal colour while the cue is shown. (The goal site
        itself stays transparent, so the goal is drawn exactly like the others.)"""
        if not len(self._targets):
            return
        mj, times, spec = self._mj, self.cue_times, self.spec
        cue_on = times.cue_start <= self.t < times.cue_end
        green = (*spec.goal_rgb, 1.0) if spec.goal_rgb is not None else spec.cue.target_rgba
        radius = spec.goal_site_size or 0.04
        for k, pos in enumerate(self._targets):
            if scene.ngeom >= scene.maxgeom:
                raise RuntimeError(f"task {spec.name!r}: the renderer's scene has no room for the choice targets")
            rgba = green if (cue_on and k == times.choice) else spec.cue.target_rgba
            mj.mjv_initGeom(scene.geoms[scene.ngeom], mj.mjtGeom.mjGEOM_SPHERE, np.array([radius, 0.0, 0.0]),
                            pos, np.eye(3).reshape(-1), np.asarray(rgba, dtype=np.float32))
            scene.ngeom += 1

    def _observe(self, render: bool) -> Observation:
        state = np.asarray(self._raw_obs[:STATE_DIM], dtype=np.float32).copy()
        return Observation(
            image=self.render() if render else None, state=state, instruction=self.spec.instruction
        )

    def goal_position(self) -> np.ndarray:
        """Privileged goal xyz (for tests, analysis and training targets; never part of an Observation)."""
        return np.asarray(self._env._target_pos, dtype=np.float64).copy()

    def object_position(self) -> np.ndarray:
        """Privileged xyz of the task's object (puck, drawer or window handle, button), read from the current
        simulator state. Unlike the object slot of Meta-World's reset observation, this is never stale."""
        return np.asarray(self._env._get_pos_objects()[:3], dtype=np.float64).copy()

    def goal_pixel(self) -> tuple[int, int] | None:
        """(row, col) where the goal site's centre projects in the image, or None if off-screen."""
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
        row, col = v, u
        if not (0 <= row < self.image_size and 0 <= col < self.image_size):
            return None
        return round(row), round(col)


def make_env(task_name: str, seed: int = 0, image_size: int = 128) -> SimEnv:
    """Build the env for a registered task (see `vlaccel.sim.tasks.TASKS`)."""
    return SimEnv(get_task(task_name), seed=seed, image_size=image_size)


# ---------------------------------------------------------------------- per-process env cache
_ENV_CACHE: dict[tuple[str, int], SimEnv] = {}


def cached_env(task_name: str, image_size: int = 128) -> SimEnv:
    """A per-process env for `task_name`, built once and reused across episodes (reset(seed=...) per
    episode). Worker processes use this; like every SimEnv, they are closed at interpreter exit."""
    key = (task_name, int(image_size))
    env = _ENV_CACHE.get(key)
    if env is None:
        env = _ENV_CACHE[key] = make_env(task_name, seed=0, image_size=image_size)
    return env


def close_cached_envs() -> None:
    while _ENV_CACHE:
        _, env = _ENV_CACHE.popitem()
        env.close()
