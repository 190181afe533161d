"""How the contract suite builds and runs the reference VLA (its :class:`~tests.contract.cases.Subject`)."""

from __future__ import annotations

import copy
import functools

import numpy as np

from tests.conftest import random_frames

INSTRUCTIONS = ("push the puck to the goal", "open the drawer")
PROPRIO = np.array([0.1, -0.2, 0.3, 0.5], dtype=np.float32)
FRAMES = 4


@functools.lru_cache(maxsize=1)
def _master():
    from vlaccel.models import ReferenceVLA, ReferenceVLAConfig

    return ReferenceVLA(ReferenceVLAConfig.tiny())


def build():
    """A fresh random tiny ReferenceVLA (deep copy of one built per session)."""
    return copy.deepcopy(_master())


def run_single(policy) -> np.ndarray:
    """Two independent ``predict_action`` calls (no history)."""
    frames = random_frames(policy.config, 2, seed=0)
    return np.stack([policy.predict_action(f, INSTRUCTIONS[0], PROPRIO) for f in frames])


def run_history(policy, seed: int = 0) -> np.ndarray:
    """One episode in history mode: reset(instruction), then ``step`` over FRAMES random frames."""
    policy.reset(INSTRUCTIONS[seed % 2])
    return np.stack([policy.step(f, PROPRIO) for f in random_frames(policy.config, FRAMES, seed=seed)])
