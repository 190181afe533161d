"""Fidelity of an accelerated policy against the unaccelerated one, on recorded observations.

Metrics (reference ``ref`` = baseline output, ``x`` = accelerated output, both flattened):

* MSE   = mean((x - ref)^2)
* cosine = <x, ref> / (|x| |ref|)
* SQNR  = 10 log10( sum(ref^2) / sum((x - ref)^2) ) dB  (torchao's ``compute_error``; +inf when identical)

They are computed for the action chunk and for the cognition feature (``policy.last_cognition``, the
LM output that conditions the action head). Over a set of observations, MSE and cosine are averaged per
observation and SQNR pools the signal and error energies of all observations.

Observations come from the simulator demonstrations (``vlaccel.demo_files.load_demos``) when they exist
and fit the policy; otherwise from synthetic random frames, and the returned label says so.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any

import numpy as np

from vlaccel.demo_files import load_demos

__all__ = [
    "FidelityAccumulator",
    "Observation",
    "compare_policies",
    "cosine",
    "episode_frames",
    "load_observations",
    "mse",
    "sqnr_db",
    "synthetic_observations",
]

#: instructions for synthetic observations (the suite's task phrasing; the policy only needs a string)
SYNTHETIC_INSTRUCTIONS = ("push the puck to the goal", "reach the goal", "open the drawer",
                          "press the button from the top")


def _flat(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).reshape(-1)


def mse(ref: Any, x: Any) -> float:
    r, y = _flat(ref), _flat(x)
    return float(np.mean((y - r) ** 2))


def cosine(ref: Any, x: Any) -> float:
    r, y = _flat(ref), _flat(x)
    denom = np.linalg.norm(r) * np.linalg.norm(y)
    if denom == 0:
        return 1.0 if np.array_equal(r, y) else 0.0
    return float(np.dot(r, y) / denom)


def _sqnr_from_energies(signal: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def sqnr_db(ref: Any, x: Any) -> float:
    """Signal-to-quantisation-noise ratio of ``x`` against ``ref`` in dB (inf for identical outputs)."""
    r, y = _flat(ref), _flat(x)
    return _sqnr_from_energies(float(np.sum(r ** 2)), float(np.sum((y - r) ** 2)))


@dataclasses.dataclass
class FidelityAccumulator:
    """Running MSE / cosine (per-sample means) and pooled SQNR over many (ref, x) pairs."""

    mse_sum: float = 0.0
    cos_sum: float = 0.0
    signal: float = 0.0
    noise: float = 0.0
    n: int = 0

    def add(self, ref: Any, x: Any) -> None:
        r, y = _flat(ref), _flat(x)
        self.mse_sum += mse(r, y)
        self.cos_sum += cosine(r, y)
        self.signal += float(np.sum(r ** 2))
        self.noise += float(np.sum((y - r) ** 2))
        self.n += 1

    def result(self, prefix: str) -> dict[str, float]:
        if not self.n:
            return {}
        return {f"{prefix}_mse": self.mse_sum / self.n, f"{prefix}_cosine": self.cos_sum / self.n,
                f"{prefix}_sqnr_db": _sqnr_from_energies(self.signal, self.noise)}


@dataclasses.dataclass(frozen=True)
class Observation:
    image: np.ndarray  # uint8 [H, W, 3]
    instruction: str
    proprio: np.ndarray | None  # float32 [P] or None


def synthetic_observations(config: Any, n: int, seed: int = 0) -> list[Observation]:
    """Random uint8 frames and proprio in [-1, 1]: the fallback when no demos fit the policy."""
    rng = np.random.default_rng(seed)
    size = config.image_size
    out = []
    for i in range(n):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        proprio = rng.uniform(-1, 1, config.proprio_dim).astype(np.float32) if config.proprio_dim else None
        out.append(Observation(image, SYNTHETIC_INSTRUCTIONS[i % len(SYNTHETIC_INSTRUCTIONS)], proprio))
    return out


@functools.lru_cache(maxsize=2)
def _load_demos(demos_dir: str) -> tuple[Any, ...]:
    return tuple(load_demos(demos_dir))


def _demo_frames(config: Any, demos_dir: str | Path) -> tuple[list[Any], str | None]:
    """Demos that fit the policy, or ([], reason) if there are none."""
    if config.num_cameras != 1:
        return [], f"the policy wants {config.num_cameras} cameras, demos have 1"
    try:
        demos = _load_demos(str(Path(demos_dir).resolve()))
    except FileNotFoundError:
        return [], f"no demos in {demos_dir}"
    if not demos:
        return [], f"no demos in {demos_dir}"
    want = (config.image_size, config.image_size, 3)
    fitting = [d for d in demos if d.images.shape[1:] == want]
    if not fitting:
        return [], f"demo frames are {demos[0].images.shape[1:3]}, the policy wants {want[:2]}"
    return fitting, None


def load_observations(config: Any, n: int, demos_dir: str | Path = "data/demos", seed: int = 0,
                      half: int | None = None) -> tuple[list[Observation], str]:
    """``n`` observations evenly spaced over the frames of every demo (so every task is covered), and a
    source label. ``half=0`` / ``half=1`` draw only from the even / odd frames of the pool, so two calls
    get disjoint frames (calibration vs evaluation). ``seed`` only affects the synthetic fallback."""
    demos, reason = _demo_frames(config, demos_dir)
    if not demos:
        return synthetic_observations(config, n, seed), f"SYNTHETIC random frames ({reason})"
    index = [(d, f) for d in demos for f in range(d.num_frames)]
    if half is not None:
        index = index[half::2]
    n = min(n, len(index))
    picks = []
    for i in range(n):
        d, f = index[i * len(index) // n]
        proprio = d.states[f] if config.proprio_dim == d.states.shape[1] else None
        picks.append(Observation(d.images[f], d.instruction, proprio))
    tasks = sorted({d.task for d in demos})
    part = "" if half is None else (" even-numbered", " odd-numbered")[half]
    return picks, (f"demos ({n} of {len(index)}{part} frames, evenly spaced over {len(demos)} episodes of "
                   f"{len(tasks)} tasks in {demos_dir})")


def episode_frames(config: Any, steps: int, demos_dir: str | Path = "data/demos",
                   seed: int = 0) -> tuple[str, list[np.ndarray], list[np.ndarray | None], str]:
    """One long episode for history mode: (instruction, frames, proprio, source label).

    A real expert episode of a long-horizon memory task (``vlaccel collect --tasks reach-memory-long``): the
    first demo, by seed, with at least ``steps`` frames; its cue sits in the middle of the episode, where a KV
    retention has to keep it. Without such demos, another memory task, else the first task; when no single demo
    is long enough, consecutive demos of the task are concatenated, and the label says so. Synthetic random
    frames when there are no demos at all (``seed`` only affects those).
    """
    demos, reason = _demo_frames(config, demos_dir)
    if not demos:
        obs = synthetic_observations(config, steps, seed)
        return (SYNTHETIC_INSTRUCTIONS[0], [o.image for o in obs], [o.proprio for o in obs],
                f"SYNTHETIC random frames ({reason})")
    task = _history_task([d.task for d in demos])
    same = [d for d in demos if d.task == task]

    def states(d: Any, take: int) -> list[np.ndarray | None]:
        return list(d.states[:take]) if config.proprio_dim == d.states.shape[1] else [None] * take

    long_enough = [d for d in same if d.num_frames >= steps]
    if long_enough:
        d = long_enough[0]
        return (d.instruction, list(d.images[:steps]), states(d, steps),
                f"one episode of {task} (seed {d.seed}, {d.num_frames} frames; {demos_dir})")
    frames: list[np.ndarray] = []
    proprio: list[np.ndarray | None] = []
    i = 0
    while len(frames) < steps:
        d = same[i % len(same)]
        take = min(d.num_frames, steps - len(frames))
        frames.extend(d.images[:take])
        proprio.extend(states(d, take))
        i += 1
    longest = max(d.num_frames for d in same)
    return (same[0].instruction, frames, proprio,
            f"demos of {task} ({i} episodes concatenated: the longest has {longest} frames, not {steps}; {demos_dir})")


def _history_task(tasks: list[str]) -> str:
    """The task whose episodes history mode is measured on: long-horizon memory, else memory, else the first."""
    from vlaccel.sim.tasks import LONG_HORIZON_SUITE, TASKS

    def kind(task: str) -> int:
        spec = TASKS.get(task)
        if spec is not None and spec.suite == LONG_HORIZON_SUITE:
            return 0
        return 1 if (spec is not None and spec.memory) or "memory" in task else 2

    return min(dict.fromkeys(tasks), key=kind)


def compare_policies(baseline: Any, accelerated: Any, observations: list[Observation]) -> dict[str, float]:
    """Action and cognition fidelity of ``accelerated`` against ``baseline`` over ``observations``."""
    actions, cognition = FidelityAccumulator(), FidelityAccumulator()
    for obs in observations:
        ref = baseline.predict_action(obs.image, obs.instruction, obs.proprio)
        ref_z = baseline.last_cognition.cpu().numpy()
        out = accelerated.predict_action(obs.image, obs.instruction, obs.proprio)
        out_z = accelerated.last_cognition.cpu().numpy()
        actions.add(ref, out)
        cognition.add(ref_z, out_z)
    return {**actions.result("action"), **cognition.result("cognition")}
