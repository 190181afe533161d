"""The evaluation protocol's constants (see ``vlaccel.sim.evaluate`` for the protocol itself)."""

from __future__ import annotations

BASELINE = "none"  # the condition without an acceleration preset
DEFAULT_SEED0 = 1000  # first evaluation seed: disjoint from the demo seeds 0..N
ACTION_REPEAT = 4  # actions of each returned chunk executed before the policy observes again
