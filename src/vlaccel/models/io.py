"""Save / load reference policies (safetensors + JSON config) and ``load_policy``."""

from __future__ import annotations

import hashlib
import json
import weakref
from importlib import resources
from pathlib import Path

import torch

from vlaccel.errors import MissingInputError, UsageError
from vlaccel.models.config import ReferenceVLAConfig
from vlaccel.models.vla import ReferenceVLA
from vlaccel.techniques.layer_prune import CALIBRATION_FILE, load_calibration_observations, set_calibration_observations

WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "model_card.json"
BUNDLED = {"reference": "reference"}  # name -> folder under vlaccel/assets


def bundled_dir(name: str) -> Path:
    return Path(str(resources.files("vlaccel") / "assets" / BUNDLED[name]))


def save_policy(policy: ReferenceVLA, path: str | Path, card: dict | None = None,
                storage_dtype: torch.dtype | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (+ ``model_card.json``) into the folder ``path``: the plain
    policy's weights (applied techniques are not saved; one that changed the parameters is refused).

    ``storage_dtype=torch.bfloat16`` halves the file (the bundled checkpoint uses it); loading casts the
    weights back to the model's float32 parameters, so a reloaded policy computes in float32.
    """
    from safetensors.torch import save_file

    from vlaccel.api import applied_configs

    reshaped = [type(c).__name__ for c in applied_configs(policy) if type(c).changes_state_dict]
    if reshaped:
        raise UsageError(f"{', '.join(reshaped)} is applied and changed this policy's parameters, so the file would "
                         "not match its config.json; save before applying, or remove it first (handle.remove()). "
                         "Techniques that keep the weights (head cache, token pruning, KV-Efficient) may stay "
                         "applied: the plain policy is saved, without them")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in policy.state_dict().items()}
    if storage_dtype is not None:
        state = {k: v.to(storage_dtype) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(path / WEIGHTS), metadata={"format": "pt", "fingerprint": fingerprint(policy)})
    (path / CONFIG).write_text(policy.config.to_json() + "\n")
    if card is not None:
        (path / CARD).write_text(json.dumps(card, indent=2) + "\n")
    return path


def load_reference(path: str | Path) -> ReferenceVLA:
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_file():
        raise MissingInputError(f"{path} is a file; pass the policy's folder (the one holding {WEIGHTS} and {CONFIG})")
    for name in (WEIGHTS, CONFIG):
        if not (path / name).exists():
            raise MissingInputError(f"{path} is not a saved policy: {name} is missing (save one with vlaccel.save_policy)")
    try:
        data = json.loads((path / CONFIG).read_text())
    except json.JSONDecodeError as err:
        raise UsageError(f"{path / CONFIG} is not valid JSON: {err}") from None
    config = ReferenceVLAConfig.from_dict(data)
    policy = ReferenceVLA(config)
    try:
        weights = load_file(str(path / WEIGHTS))
    except Exception as err:  # safetensors raises its own error type (truncated file, bad header)
        raise UsageError(f"{path / WEIGHTS} is not a readable safetensors file ({type(err).__name__}: {err}); "
                         "it may be truncated: save or copy it again") from err
    missing, unexpected = policy.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise UsageError(f"{path / WEIGHTS} does not match its config: missing={missing[:5]} unexpected={unexpected[:5]}")
    if (path / CALIBRATION_FILE).exists():  # the folder's layer-pruning calibration set
        set_calibration_observations(policy, load_calibration_observations(path / CALIBRATION_FILE))
    policy.source_dir = path  # where companion files live (a KV-Efficient gate trained for it: kv_gate/)
    return policy.eval()


def load_policy(name_or_path: str | Path) -> ReferenceVLA:
    """``load_policy("reference")`` loads the bundled trained policy; ``load_policy(path)`` any saved one."""
    key = str(name_or_path)
    if not key.strip():
        raise MissingInputError(f"no policy given: pass a bundled name ({', '.join(sorted(BUNDLED))}) or a folder")
    if key in BUNDLED:
        folder = bundled_dir(key)
        if not (folder / WEIGHTS).exists():
            raise MissingInputError(
                f"the bundled {key!r} checkpoint is not in this install ({folder}); train one with "
                "`vlaccel collect && vlaccel train-reference` or pass the path of a saved policy"
            )
        return load_reference(folder)
    path = Path(key)
    if not path.exists():
        raise MissingInputError(
            f"unknown policy {key!r}: not a bundled name ({', '.join(sorted(BUNDLED))}) and no such folder"
        )
    return load_reference(path)


_FINGERPRINTS: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, str]] = weakref.WeakKeyDictionary()


def fingerprint(policy: torch.nn.Module, refresh: bool = False) -> str:
    """sha256 over parameter names, shapes, dtypes and bytes: identifies the exact weights a gate was trained for.

    Hashed once per state of the weights: the result is kept (outside the model) with each tensor's storage
    address and in-place version counter, and recomputed when any of them changes (an optimizer step,
    ``load_state_dict``, a replaced or pruned parameter). Edits through ``tensor.data`` bypass the version
    counter: pass ``refresh=True`` after such an edit.
    """
    state = policy.state_dict(keep_vars=True)
    key = tuple((name, t.data_ptr(), t._version, tuple(t.shape), t.dtype) for name, t in sorted(state.items()))
    known = _FINGERPRINTS.get(policy)
    if known is not None and known[0] == key and not refresh:
        return known[1]
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    digest = h.hexdigest()[:16]
    _FINGERPRINTS[policy] = (key, digest)
    return digest
