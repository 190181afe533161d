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

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlaccel.errors import MissingInputError, UsageError

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


def read_npz(path: str | Path, what: str = "an .npz file", fix: str = "write it again") -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path``, read with ``allow_pickle=False``. A file that is missing, not an
    ``.npz`` (torn, empty, a ``.npy`` or a pickle) or that holds an object array (which only pickle can load) is
    refused with one ``UsageError`` line naming the file, ``what`` it should be, and ``fix``."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{path} does not exist ({what})")
    if path.is_dir():
        raise UsageError(f"{path} is a folder, not {what}")
    try:
        with open(path, "rb") as file:  # closed here also when numpy gives up on a torn archive
            z = np.load(file, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):  # a .npy file: one array, no names
                raise UsageError(f"{path} is a single .npy array, not {what} (an .npz archive of named arrays); {fix}")
            arrays = {}
            with z:
                for name in z.files:
                    try:
                        arrays[name] = z[name]
                    except ValueError as err:
                        if "allow_pickle" not in str(err):
                            raise
                        raise UsageError(f"{path}: array {name!r} is an object array, which vlaccel does not load "
                                         f"(no pickle); {what} holds numeric and string arrays only: {fix}") from None
    except UsageError:
        raise
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as err:  # torn, a pickle, ...
        first = str(err).splitlines()[0] if str(err) else ""
        raise UsageError(f"{path} is not a readable .npz archive ({type(err).__name__}: {first}); it may be "
                         f"truncated or another kind of file: {fix}") from None
    return arrays


_DEMO_FIX = "collect it again with `vlaccel collect` (or write it with vlaccel.demo_files.save_demo)"
_DEMO_SCALARS = {"task": "U", "instruction": "U", "seed": "i", "success": "b", "frame_every": "i", "success_step": "i"}


def load_demo(path: str | Path) -> Demo:
    """One demo file, checked whole (every array present, of its dtype and shape; actions and states finite):
    a file that is not a demo is refused with one ``UsageError`` line naming the file and the array."""
    path = Path(path)
    z = read_npz(path, "a demo file", _DEMO_FIX)
    missing = [k for k in ("images", "states", "actions", *_DEMO_SCALARS) if k not in z]
    if missing:
        raise UsageError(f"{path} is not a demo file: it has no {', '.join(missing)} (it holds {sorted(z)}); "
                         f"{_DEMO_FIX}")

    def bad(name: str, want: str) -> UsageError:
        got = z[name]
        return UsageError(f"{path}: {name} must be {want}, got {got.dtype} {list(got.shape)}; {_DEMO_FIX}")

    for name, kind in _DEMO_SCALARS.items():
        value = z[name]
        ok_kind = value.dtype.kind in ("iu" if kind == "i" else "US" if kind == "U" else kind)
        if value.ndim != 0 or not ok_kind:
            want = {"U": "a string", "i": "an integer", "b": "a bool"}[kind]
            raise bad(name, f"{want} (a 0-d array)")
    images, states, actions = z["images"], z["states"], z["actions"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] < 1:
        raise bad("images", "uint8 [frames, height, width, 3]")
    if states.dtype.kind not in "fiu" or states.ndim != 2 or states.shape[0] != images.shape[0]:
        raise bad("states", f"numbers [{images.shape[0]}, proprio] (one row per image)")
    if actions.dtype.kind not in "fiu" or actions.ndim != 2 or actions.shape[0] < 1:
        raise bad("actions", "numbers [steps, action_dim]")
    for name in ("states", "actions"):
        if not np.isfinite(z[name]).all():
            raise UsageError(f"{path}: {name} has non-finite values (NaN or inf); {_DEMO_FIX}")
    if int(z["frame_every"]) < 1:
        raise bad("frame_every", "an integer >= 1 (env steps between saved frames)")
    demo = Demo(
        path=path,
        task=str(z["task"]),
        instruction=str(z["instruction"]),
        seed=int(z["seed"]),
        success=bool(z["success"]),
        frame_every=int(z["frame_every"]),
        success_step=int(z["success_step"]),
        images=images,
        states=states,
        actions=actions,
        objects=z.get("objects"),
        goals=z.get("goals"),
    )
    for name in ("objects", "goals"):
        value = getattr(demo, name)
        if value is not None and (value.shape != (demo.num_frames, 3) or value.dtype.kind not in "fiu"):
            raise bad(name, f"numbers [{demo.num_frames}, 3] (one xyz per frame)")
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
