"""The Meta-World v3 task suite: one `TaskSpec` per task, registered in `TASKS`.

Every task here was checked with Meta-World's scripted expert: 20/20 seeds succeed within `max_steps`
(see `tests/sim` and the `vlaccel collect` report). Tasks whose expert is not reliable (door-open-v3 fails
about 3 % of seeds) are deliberately left out, so a failed demo always means a bug, never bad luck.

Two deliberate changes to the stock task distributions, both recorded in the spec so they are visible:

* reach: the goal is drawn from a wider, flat region (x in [-0.25, 0.25], y in [0.7, 0.9], z = 0.15)
  instead of the stock 0.2 x 0.1 x 0.25 m box. From one camera the goal's height cannot be read off the
  image, and in the stock box a policy that ignores the goal and reaches for its centre already succeeds
  ~40 % of the time; on the wider plane that "blind" baseline is ~8 %, so success really needs the goal.
* reach / push: the goal marker sphere is enlarged (radius 0.04 m) so it covers ~20 pixels at 128 px;
  reach's marker is recoloured green (the stock red is hard to tell from the red arm).

The long-horizon memory task ``reach-memory-long`` (suite "long-horizon", run only when named) is where a KV
retention has to earn its keep: the arm holds at a waypoint; the goal is shown for 3 policy frames at a time drawn
per seed in env steps [48, 172) (after the 2 sink frames); the walls turn blue at a go step drawn in [356, 396],
45+ frames later, when the recent window no longer holds the cue; only then may the arm reach where the goal was
(success before go does not count). The expert solves every seed in about 104 policy calls; a policy that never
saw the cue can only guess (the centre of the goal region succeeds on 3 of 100 seeds).

``reach-choice-long`` (same suite) isolates memory from precision: three grey targets at fixed places stay visible
the whole episode; one of them, drawn per seed, turns green for 3 policy frames in env steps [24, 68); at the go
signal (env steps [136, 152], 17+ frames later) the arm must reach that one, and reaching another ends the episode
as a failure. Outside the cue frames, the frames are the same whatever the goal is, so a cache that lost the cue
is at chance (1/3). The expert solves every seed in about 45 policy calls.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from vlaccel.errors import UnknownNameError

Vec3 = tuple[float, float, float]

_REACH_GOAL: tuple[Vec3, Vec3] = ((-0.25, 0.7, 0.15), (0.25, 0.9, 0.15))
_GREEN: Vec3 = (0.1, 0.9, 0.1)
_CHOICE_TARGETS: tuple[Vec3, ...] = ((-0.2, 0.8, 0.15), (0.0, 0.8, 0.15), (0.2, 0.8, 0.15))
"""reach-choice-long's three targets: 0.2 m apart (4 success radii), all in reach's goal region, all >= 0.25 m from the
holding waypoint."""
CORE_SUITE = "core"
LONG_HORIZON_SUITE = "long-horizon"


@dataclass(frozen=True)
class CueTimes:
    """One episode's drawn schedule (env steps): the goal is visible for cue_start <= t < cue_end, the go
    signal appears at go_step, and success only counts from go_step on."""

    cue_start: int
    cue_end: int
    go_step: int
    choice: int | None = None
    """Which of the schedule's ``targets`` is the goal (choice tasks; None otherwise)."""


@dataclass(frozen=True)
class CueSchedule:
    """A long-horizon memory episode: hold at a waypoint, see the goal for a short stretch in the middle,
    keep holding, and only when the walls turn blue (the go signal) reach where the goal was.

    cue_start:  (low, high) env steps the cue's onset is drawn from (uniform, per seed, a multiple of
                `frame_every` so that each cue covers the same number of policy frames).
    cue_steps:  how many env steps the goal stays visible (12 = 3 policy frames at 4 actions per call).
    go_step:    (low, high) env steps the go signal's onset is drawn from (same rules).
    waypoint:   where the scripted expert holds the hand before go; at least 0.15 m from every goal, so
                holding there can never count as success.
    go_rgba:    the colour the walls turn at go.
    frame_every: env steps per policy frame (the policy's action repeat).
    targets:    a choice task's fixed target positions (empty: the goal is drawn from the task's goal_range and is
                invisible outside the cue). With targets, all of them are drawn in ``target_rgba`` for the whole
                episode; one, drawn per seed independently of the times, is the goal, and only it turns the task's
                goal colour during the cue. What must be remembered is then a choice among ``len(targets)``, not a
                coordinate, and a cache without the cue frames sees the same frames whatever the goal is.
    target_rgba: the colour of the targets outside the cue.
    """

    cue_start: tuple[int, int]
    cue_steps: int
    go_step: tuple[int, int]
    waypoint: Vec3
    go_rgba: tuple[float, float, float, float] = (0.3, 0.4, 1.0, 1.0)
    frame_every: int = 4
    targets: tuple[Vec3, ...] = ()
    target_rgba: tuple[float, float, float, float] = (0.55, 0.55, 0.55, 1.0)

    def __post_init__(self) -> None:
        if len(self.targets) == 1:
            raise ValueError("CueSchedule.targets: a choice needs at least 2 targets (or none)")
        for name in ("cue_start", "go_step"):
            low, high = getattr(self, name)
            if not 0 < low <= high or low % self.frame_every or high % self.frame_every:
                raise ValueError(
                    f"CueSchedule.{name} must be 0 < low <= high, both multiples of frame_every "
                    f"({self.frame_every}); got {(low, high)}"
                )
        if self.cue_steps <= 0 or self.cue_steps % self.frame_every:
            raise ValueError(f"CueSchedule.cue_steps must be a positive multiple of {self.frame_every}")
        if self.cue_start[1] + self.cue_steps >= self.go_step[0]:
            raise ValueError("CueSchedule: the cue must end before the earliest go step")

    def draw(self, task_name: str, seed: int) -> CueTimes:
        """The schedule of episode `seed`: the same seed always gives the same times."""
        rng = np.random.default_rng([zlib.crc32(task_name.encode()), int(seed)])
        step = self.frame_every
        cue = step * int(rng.integers(self.cue_start[0] // step, self.cue_start[1] // step + 1))
        go = step * int(rng.integers(self.go_step[0] // step, self.go_step[1] // step + 1))
        # the choice has its own stream, so the times do not depend on it (nor it on them)
        choice = None
        if self.targets:
            choice = int(np.random.default_rng([zlib.crc32(task_name.encode()), int(seed), 1]).integers(len(self.targets)))
        return CueTimes(cue_start=cue, cue_end=cue + self.cue_steps, go_step=go, choice=choice)


@dataclass(frozen=True)
class TaskSpec:
    """One evaluation task.

    name:          registry key (what users type), e.g. "reach-memory".
    env_name:      the Meta-World v3 environment it is built from, e.g. "reach-v3".
    instruction:   natural-language instruction given to the policy.
    max_steps:     env steps before the episode is cut off (a failure).
    memory:        True when success depends on frames older than a short recent window.
    goal_site_size: radius (m) for the `goal` site sphere, or None to keep Meta-World's marker.
    goal_range:    (low, high) xyz box the goal is sampled from, replacing the last 3 entries of
                   Meta-World's reset space; None keeps the stock distribution.
    hide_goal_after: the goal site is made transparent from this env step on (memory tasks);
                   None keeps it visible. The observation at env step t is rendered after t steps, so
                   with 8 the frames at steps 0 and 4 show the goal and every later frame does not.
    goal_rgb:      recolour the goal site (reach's stock red marker is hard to tell from the red arm).
    cue:           a long-horizon memory schedule (`CueSchedule`): goal shown only in a drawn window in
                   the middle of the episode, a go signal later; replaces hide_goal_after.
    suite:         which suite the task belongs to: "core" (the default evaluation and training suite) or
                   "long-horizon" (run only when named).
    """

    name: str
    env_name: str
    instruction: str
    max_steps: int
    memory: bool = False
    goal_site_size: float | None = None
    goal_range: tuple[Vec3, Vec3] | None = None
    hide_goal_after: int | None = None
    goal_rgb: Vec3 | None = None
    cue: CueSchedule | None = None
    suite: str = CORE_SUITE

    def __post_init__(self) -> None:
        if not self.env_name.endswith("-v3"):
            raise ValueError(
                f"TaskSpec {self.name!r}: env_name must be a Meta-World v3 name, got {self.env_name!r}"
            )
        if self.max_steps <= 0:
            raise ValueError(f"TaskSpec {self.name!r}: max_steps must be positive, got {self.max_steps}")
        if self.memory and (self.hide_goal_after is None) == (self.cue is None):
            raise ValueError(
                f"TaskSpec {self.name!r}: a memory task needs exactly one of hide_goal_after (env steps) "
                "or cue (a CueSchedule)"
            )
        if self.cue is not None and not self.memory:
            raise ValueError(f"TaskSpec {self.name!r}: a task with a cue schedule must set memory=True")
        if self.cue is not None and self.cue.go_step[1] >= self.max_steps:
            raise ValueError(f"TaskSpec {self.name!r}: the latest go step must come before max_steps")
        if self.suite not in (CORE_SUITE, LONG_HORIZON_SUITE):
            raise ValueError(
                f"TaskSpec {self.name!r}: suite must be {CORE_SUITE!r} or {LONG_HORIZON_SUITE!r}, got {self.suite!r}"
            )
        if self.hide_goal_after is not None and not 0 < self.hide_goal_after < self.max_steps:
            raise ValueError(f"TaskSpec {self.name!r}: hide_goal_after must be in (0, max_steps)")


def _specs() -> list[TaskSpec]:
    return [
        TaskSpec(
            "reach-v3",
            "reach-v3",
            "reach the green ball with the gripper",
            max_steps=120,
            goal_site_size=0.04,
            goal_range=_REACH_GOAL,
            goal_rgb=_GREEN,
        ),
        TaskSpec("push-v3", "push-v3", "push the puck to the green ball", max_steps=120, goal_site_size=0.04),
        TaskSpec("drawer-open-v3", "drawer-open-v3", "open the drawer", max_steps=150),
        TaskSpec("drawer-close-v3", "drawer-close-v3", "close the drawer", max_steps=150),
        TaskSpec(
            "button-press-topdown-v3",
            "button-press-topdown-v3",
            "press the button from the top",
            max_steps=120,
        ),
        TaskSpec("window-open-v3", "window-open-v3", "slide the window open", max_steps=150),
        TaskSpec("plate-slide-v3", "plate-slide-v3", "slide the plate into the net", max_steps=120),
        TaskSpec(
            "reach-memory",
            "reach-v3",
            "reach where the green ball was shown at the start",
            max_steps=120,
            memory=True,
            goal_site_size=0.04,
            goal_range=_REACH_GOAL,
            goal_rgb=_GREEN,
            hide_goal_after=8,
        ),
        TaskSpec(
            "reach-memory-long",
            "reach-v3",
            "hold still and watch for the green ball; when the walls turn blue, reach where it was",
            max_steps=480,
            memory=True,
            goal_site_size=0.04,
            goal_range=_REACH_GOAL,
            goal_rgb=_GREEN,
            cue=CueSchedule(
                cue_start=(48, 160), cue_steps=12, go_step=(356, 396), waypoint=(0.0, 0.6, 0.3)
            ),
            suite=LONG_HORIZON_SUITE,
        ),
        TaskSpec(
            "reach-choice-long",
            "reach-v3",
            "watch which ball turns green; when the walls turn blue, reach that ball",
            max_steps=240,
            memory=True,
            goal_site_size=0.04,
            goal_range=_REACH_GOAL,
            goal_rgb=_GREEN,
            cue=CueSchedule(
                cue_start=(24, 56), cue_steps=12, go_step=(136, 152), waypoint=(0.0, 0.6, 0.3),
                targets=_CHOICE_TARGETS,
            ),
            suite=LONG_HORIZON_SUITE,
        ),
    ]


TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in _specs()}


def get_task(name: str) -> TaskSpec:
    """The registered spec for `name`; a clear error listing the choices otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownNameError(f"unknown task {name!r}; choose from: {', '.join(TASKS)}") from None


def suite_tasks(suite: str = CORE_SUITE) -> list[str]:
    """The tasks of one suite, in registry order."""
    return [name for name, spec in TASKS.items() if spec.suite == suite]


def resolve_tasks(names: list[str] | tuple[str, ...] | None) -> list[str]:
    """Validate task names; None or empty means the core suite (registry order). Long-horizon tasks run
    only when named."""
    if not names:
        return suite_tasks(CORE_SUITE)
    for n in names:
        get_task(n)
    return list(dict.fromkeys(names))
