"""The reference VLA for the contract: a tiny random ``ReferenceVLA``, how it is run, and how it is saved."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["INSTRUCTIONS", "PROPRIO", "FRAMES", "build", "random_frames", "run_single", "run_history",
           "calibrate_on_random_frames", "saving"]

INSTRUCTIONS = ("push the puck to the goal", "open the drawer")
PROPRIO = np.array([0.1, -0.2, 0.3, 0.5], dtype=np.float32)
FRAMES = 4


@functools.lru_cache(maxsize=1)
def _master() -> Any:
    from vlaccel.models import ReferenceVLA, ReferenceVLAConfig

    return ReferenceVLA(ReferenceVLAConfig.tiny())


def build() -> Any:
    """A fresh random tiny ReferenceVLA (a deep copy of one built per process)."""
    return copy.deepcopy(_master())


def random_frames(config: Any, n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` random uint8 camera frames of the policy's image size."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (config.image_size, config.image_size, 3), dtype=np.uint8) for _ in range(n)]


def run_single(policy: Any) -> np.ndarray:
    """Two independent ``predict_action`` calls (no history)."""
    frames = random_frames(policy.config, 2, seed=0)
    return np.stack([policy.predict_action(f, INSTRUCTIONS[0], PROPRIO) for f in frames])


def run_history(policy: Any, seed: int = 0) -> np.ndarray:
    """One episode in history mode: reset(instruction), then ``step`` over FRAMES random frames."""
    policy.reset(INSTRUCTIONS[seed % 2])
    return np.stack([policy.step(f, PROPRIO) for f in random_frames(policy.config, FRAMES, seed=seed)])


def calibrate_on_random_frames(policy: Any) -> None:
    """Layer pruning calibrates on real observations; the contract's random tiny policy gets random frames."""
    from vlaccel.techniques.layer_prune import set_calibration_observations

    frames = random_frames(policy.config, 4, seed=7)
    set_calibration_observations(policy, [{"image": f, "instruction": INSTRUCTIONS[0]} for f in frames])


def _save(policy: Any, folder: Path) -> Any:
    from vlaccel.models.io import save_policy

    return save_policy(policy, folder)


def _load(folder: Path) -> Any:
    from vlaccel.models.io import load_policy

    return load_policy(folder)


def saving() -> Any:
    """``vlaccel.save_policy`` / ``load_policy``; a refused save raises ``UsageError`` and writes nothing."""
    from vlaccel.errors import UsageError
    from vlaccel.testing.case import Saving

    return Saving(save=_save, load=_load, refusal=UsageError)
