"""Simulator suite (Meta-World v3, the `[sim]` extra): tasks, scripted demos, closed-loop evaluation.

    from vlaccel.sim import TASKS, make_env, load_demos, run_eval, summarize
    from vlaccel.sim.collect import collect

Importing this package loads nothing: each name below is imported from its module on first use, and mujoco /
metaworld load on first use of the simulator (with MUJOCO_GL=egl unless set). Demo files: :mod:`vlaccel.demo_files`.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {  # name -> the module that defines it
    "TASKS": "vlaccel.sim.tasks",
    "TaskSpec": "vlaccel.sim.tasks",
    "get_task": "vlaccel.sim.tasks",
    "make_env": "vlaccel.sim.env",
    "SimEnv": "vlaccel.sim.env",
    "Observation": "vlaccel.sim.env",
    "ACTION_DIM": "vlaccel.sim.env",
    "STATE_DIM": "vlaccel.sim.env",
    "Demo": "vlaccel.demo_files",
    "load_demos": "vlaccel.demo_files",
    "action_targets": "vlaccel.demo_files",
    "run_eval": "vlaccel.sim.evaluate",
    "rollout": "vlaccel.sim.evaluate",
    "summarize": "vlaccel.sim.evaluate",
    "render_table": "vlaccel.sim.evaluate",
    "wilson": "vlaccel.sim.stats",
    "paired_difference": "vlaccel.sim.stats",
}

__all__ = [  # noqa: RUF022
    "TASKS",
    "TaskSpec",
    "get_task",
    "make_env",
    "SimEnv",
    "Observation",
    "ACTION_DIM",
    "STATE_DIM",
    "Demo",
    "load_demos",
    "action_targets",
    "run_eval",
    "rollout",
    "summarize",
    "render_table",
    "wilson",
    "paired_difference",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlaccel.sim' has no attribute {name!r}")
