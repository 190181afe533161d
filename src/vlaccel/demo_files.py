"""Scripted demonstrations on disk: one compressed `.npz` per episode, written by `vlaccel.sim.collect`.

The file format only (numpy, no simulator): training, the benchmarks and layer pruning's calibration read demos
through it without importing the simulator suite.

File layout (`<root>/<task>/seed_<seed>.npz`):

    images    uint8   [F, H, W, 3]  observation at env steps 0, frame_every, 2*frame_every, ... (< T)
    states    float32 [F, 4]        proprio (hand xyz + gripper) at those steps
    actions   float32 [T, 4]        the expert action taken at every env step
    objects   float32 [F, 3]        the task object's xyz at the saved frames (simulator state; optional:
                                    demos collected before this field existed lack it)
    goals     float32 [F, 3]        the goal's xyz at the saved frames (optional, as objects)
    task, instruction               str
    seed, frame_every, success_step int   (success_step: first env step index whose result was success)
    success                         bool  (always True on disk; failed demos are dropped)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlaccel.errors import MissingInputError

CHUNK = 16


@dataclass
class Demo:
    """One expert episode."""

    path: Path
    task: str
    instruction: str
    seed: int
    success: bool
    frame_every: int
    success_step: int
    images: np.ndarray  # uint8 [F, H, W, 3]
    states: np.ndarray  # float32 [F, 4]
    actions: np.ndarray  # float32 [T, 4]
    objects: np.ndarray | None = None  # float32 [F, 3] task object xyz per frame (None: older demo file)
    goals: np.ndarray | None = None  # float32 [F, 3] goal xyz per frame (None: older demo file)

    @property
    def num_frames(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_steps(self) -> int:
        return int(self.actions.shape[0])

    def frame_step(self, frame_idx: int) -> int:
        """Env step at which frame `frame_idx` was observed."""
        return int(frame_idx) * self.frame_every


def demo_path(root: str | Path, task: str, seed: int) -> Path:
    return Path(root) / task / f"seed_{int(seed):05d}.npz"


def save_demo(
    path: str | Path,
    *,
    images: np.ndarray,
    states: np.ndarray,
    actions: np.ndarray,
    task: str,
    instruction: str,
    seed: int,
    success: bool,
    frame_every: int,
    success_step: int,
    objects: np.ndarray | None = None,
    goals: np.ndarray | None = None,
) -> Path:
    """Write one demo atomically (a temp file renamed into place, so a killed run leaves no torn file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    positions = {k: np.asarray(v, dtype=np.float32) for k, v in (("objects", objects), ("goals", goals))
                 if v is not None}
    with open(tmp, "wb") as f:
        np.savez_compressed(
            f,
            images=np.asarray(images, dtype=np.uint8),
            states=np.asarray(states, dtype=np.float32),
            actions=np.asarray(actions, dtype=np.float32),
            task=np.str_(task),
            instruction=np.str_(instruction),
            seed=np.int64(seed),
            success=np.bool_(success),
            frame_every=np.int64(frame_every),
            success_step=np.int64(success_step),
            **positions,
        )
    tmp.replace(path)
    return path


def load_demo(path: str | Path) -> Demo:
    path = Path(path)
    with np.load(path, allow_pickle=False) as z:
        demo = Demo(
            path=path,
            task=str(z["task"]),
            instruction=str(z["instruction"]),
            seed=int(z["seed"]),
            success=bool(z["success"]),
            frame_every=int(z["frame_every"]),
            success_step=int(z["success_step"]),
            images=z["images"],
            states=z["states"],
            actions=z["actions"],
            objects=z["objects"] if "objects" in z else None,
            goals=z["goals"] if "goals" in z else None,
        )
    if demo.images.ndim != 4 or demo.images.shape[0] != demo.states.shape[0]:
        raise ValueError(f"{path}: images {demo.images.shape} and states {demo.states.shape} disagree")
    for name in ("objects", "goals"):
        value = getattr(demo, name)
        if value is not None and value.shape != (demo.num_frames, 3):
            raise ValueError(f"{path}: {name} {value.shape} should be [{demo.num_frames}, 3] (one xyz per frame)")
    return demo


def load_demos(
    root: str | Path = "data/demos", tasks: list[str] | tuple[str, ...] | None = None
) -> list[Demo]:
    """All demos under `root` (sorted by task, then seed), optionally only those of `tasks`."""
    root = Path(root)
    if not root.is_dir():
        raise MissingInputError(f"no demo directory {root}; create demos with `vlaccel collect --out {root}`")
    wanted = set(tasks) if tasks else None
    demos = []
    for path in sorted(root.glob("*/*.npz")):
        if wanted is not None and path.parent.name not in wanted:
            continue
        demos.append(load_demo(path))
    return demos


def action_targets(demo: Demo, frame_idx: int, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """The `chunk` expert actions starting at frame `frame_idx`'s env step, and which of them are real.

    Returns (actions float32 [chunk, 4], mask bool [chunk]); past the end of the episode actions are 0 and
    the mask is False.
    """
    if not 0 <= frame_idx < demo.num_frames:
        raise IndexError(f"frame {frame_idx} out of range for a demo with {demo.num_frames} frames")
    t0 = demo.frame_step(frame_idx)
    real = demo.actions[t0 : t0 + chunk]
    out = np.zeros((chunk, demo.actions.shape[1]), dtype=np.float32)
    out[: len(real)] = real
    mask = np.zeros(chunk, dtype=bool)
    mask[: len(real)] = True
    return out, mask
