"""Calibration observations: real inputs of a policy's tasks that layer pruning measures layer importance on.

An observation is a dict of named fields: ``{"image": uint8 HxWx3, "instruction": str, "proprio": optional}`` for
the reference VLA, ``{"input_ids": ...}`` for plain LMs. They come from a demo folder or demo ``.npz``
(:mod:`vlaccel.demo_files`), an ``.npz`` of per-sample field arrays, or are recorded on the model
(:func:`set_calibration_observations`; ``load_policy`` records a policy folder's ``calibration.npz``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlaccel.demo_files import load_demo, read_npz
from vlaccel.errors import MissingInputError, UsageError

__all__ = ["CALIBRATION_FILE", "set_calibration_observations", "recorded_observations",
           "load_calibration_observations", "demo_folder_observations", "evenly_spaced"]

CALIBRATION_FILE = "calibration.npz"  # in a policy folder: its calibration observations, recorded at load time
_OBS_ATTR = "_vlaccel_calibration_observations"


def set_calibration_observations(model: Any, observations: Sequence[dict[str, Any]]) -> None:
    """Record calibration observations on ``model`` (used by layer pruning's ``LayerPruneConfig`` when it has no
    ``calibration_data``). For the reference VLA each is ``{"image": uint8 HxWx3, "instruction": str,
    "proprio": optional}``; for plain LMs ``{"input_ids": ...}``. Kept as a plain attribute (not in the
    state dict; survives ``copy.deepcopy``). ``None`` or ``[]`` clears them."""
    if not observations:
        model.__dict__.pop(_OBS_ATTR, None)
        return
    observations = list(observations)
    bad = [i for i, o in enumerate(observations) if not isinstance(o, dict)]
    if bad:
        raise TypeError(f"calibration observations must be dicts of named fields; item {bad[0]} is {type(observations[bad[0]]).__name__}")
    model.__dict__[_OBS_ATTR] = observations


def recorded_observations(model: Any) -> list[dict[str, Any]] | None:
    """The observations :func:`set_calibration_observations` recorded on ``model``, or ``None``."""
    return model.__dict__.get(_OBS_ATTR)


def load_calibration_observations(path: str | Path) -> list[dict[str, Any]]:
    """Observations from a demo folder, a demo ``.npz``, or an ``.npz`` of per-sample field arrays. A file that is
    missing or not such an ``.npz`` is refused with one ``UsageError`` line naming it."""
    path = Path(path)
    if path.is_dir():
        return demo_folder_observations(path, None)
    if not path.is_file():
        raise MissingInputError(f"calibration_data {str(path)!r} does not exist (expected a demo folder or an .npz)")
    arrays = read_npz(path, "a calibration .npz (per-sample arrays such as image [N, H, W, 3] and instruction [N], "
                            "or a demo file)", "write it again with numpy.savez, or remove it")
    if "images" in arrays and "states" in arrays:  # one demo file (vlaccel.demo_files format)
        return _demo_observations([load_demo(path)])
    sized = {k: v for k, v in arrays.items() if v.ndim > 0}
    if not sized:
        raise UsageError(f"{path}: no per-sample arrays; expected e.g. image [N, H, W, 3] and instruction [N]")
    n = len(next(iter(sized.values())))
    if any(len(v) != n for v in sized.values()):
        raise UsageError(f"{path}: per-sample arrays disagree on N: { {k: v.shape for k, v in sized.items()} }; "
                         "give every field one entry per sample")
    return [{k: _field(v, i) for k, v in arrays.items()} for i in range(n)]


def _field(array: np.ndarray, i: int) -> Any:
    value = array if array.ndim == 0 else array[i]
    return str(value) if value.dtype.kind in "US" else value


def _demo_observations(demos: Sequence[Any], per_demo: int | None = None) -> list[dict[str, Any]]:
    """Frames of demos as samples: all frames, or ``per_demo`` evenly spaced ones of each."""
    out = []
    for d in demos:
        frames = range(d.num_frames) if per_demo is None else evenly_spaced(range(d.num_frames), per_demo)
        out += [{"image": d.images[f], "instruction": d.instruction, "proprio": d.states[f]} for f in frames]
    return out


def demo_folder_observations(root: Path, k: int | None) -> list[dict[str, Any]]:
    """Samples from a demo folder (``<root>/<task>/*.npz``, the ``vlaccel collect`` layout). With ``k``, only
    ~k evenly spaced demo files are read (a few frames each when there are fewer files than k)."""
    paths = sorted(root.glob("*/*.npz"))
    if not paths:
        raise MissingInputError(f"no demos (<task>/*.npz) under {str(root)!r}; collect some with `vlaccel collect "
                                f"--out {root}`")
    if k is None:
        return _demo_observations([load_demo(p) for p in paths])
    chosen = evenly_spaced(paths, k)
    return _demo_observations([load_demo(p) for p in chosen], per_demo=-(-k // len(chosen)))


def evenly_spaced(items: Sequence[Any], k: int) -> list[Any]:
    """``k`` items spread evenly over ``items`` (first and last included), or all of them when there are fewer."""
    if len(items) <= k:
        return list(items)
    idx = np.unique(np.linspace(0, len(items) - 1, k).round().astype(int))
    return [items[i] for i in idx]
