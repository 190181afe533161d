"""The weights a policy holds without its techniques, and their fingerprint.

:func:`fingerprint` identifies the exact weights of a policy (a KV-Efficient gate records the one it was trained
for); :func:`plain_state_dict` is the state dict ``handle.remove()`` would leave, which ``save_policy`` writes and
:func:`plain_fingerprint` hashes while techniques that changed the weights are applied.
"""

from __future__ import annotations

import hashlib
import weakref

import torch

from vlaccel.api import applied_changes
from vlaccel.errors import UsageError

__all__ = ["fingerprint", "plain_fingerprint", "plain_state_dict", "state_dict_fingerprint", "unrecoverable_techniques"]


def plain_state_dict(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict ``policy`` has without the techniques applied to it (detached, contiguous, on the CPU),
    without removing them: what ``vlaccel.handle_for(policy).remove()`` would leave.

    ``vlaccel.apply`` measures which entries each technique changed (:func:`vlaccel.api.applied_changes`). A
    technique that changed some gives the plain tensors back through its applied state's ``plain_tensors()``
    (``{id(current tensor): plain tensor}``: precision its float32 originals, quantization its float weights);
    one without that method (layer pruning: layers and channels are gone) is refused with ``UsageError``. The
    result is checked against the shapes and dtypes the entries had before the first change.
    """
    entries = applied_changes(policy)
    refused = _unrecoverable(entries)
    if refused:
        names = ", ".join(type(cfg).__name__ for cfg, _ in refused)
        changed = sorted({name for _, c in refused for name in c})
        raise UsageError(f"{names} is applied and changed this policy's parameters ({_few(changed)}), so the file "
                         "would not match its config.json; save before applying, or remove it first (handle.remove()). "
                         "Techniques that keep or can give back the weights (head cache, token pruning, KV-Efficient, "
                         "precision, compile) may stay applied: the plain policy is saved, without them")
    state = dict(policy.state_dict(keep_vars=True))
    before: dict[str, tuple | None] = {}
    for _, applied_state, changed in reversed(entries):  # undo the latest first, as remove() does
        if changed:
            swap = applied_state.plain_tensors()
            state = {name: swap.get(id(t), t) for name, t in state.items()}
            before.update(changed)  # the earliest technique's "before" wins: it is the plain one
    wrong = [name for name, meta in before.items() if not _is_plain(state.get(name), meta)]
    if wrong:
        names = ", ".join(type(cfg).__name__ for cfg, _, changed in entries if set(changed) & set(wrong))
        raise UsageError(f"{names} could not give back the plain {_few(wrong)} (shape, dtype or tensor type differ "
                         "from before it was applied); save before applying, or remove it first (handle.remove())")
    return {name: t.detach().contiguous().cpu() for name, t in state.items()}


def _unrecoverable(entries: list) -> list[tuple]:
    """``(config, changed)`` of each applied technique that changed the weights and cannot give the plain ones back."""
    return [(cfg, changed) for cfg, state, changed in entries
            if getattr(type(cfg), "changes_state_dict", False) or (changed and not hasattr(state, "plain_tensors"))]


def unrecoverable_techniques(policy: torch.nn.Module) -> list[str]:
    """Names of the applied techniques that changed ``policy``'s weights and cannot give the plain ones back (layer
    pruning): while one is applied, :func:`plain_state_dict` and :func:`plain_fingerprint` refuse."""
    return [type(cfg).__name__ for cfg, _ in _unrecoverable(applied_changes(policy))]


def _is_plain(tensor: torch.Tensor | None, meta: tuple | None) -> bool:
    """Whether ``tensor`` looks like the plain entry described by ``meta`` (``(shape, dtype)``; None = absent)."""
    if meta is None or tensor is None:
        return meta is None and tensor is None
    return type(tensor) in (torch.Tensor, torch.nn.Parameter) and (tuple(tensor.shape), tensor.dtype) == meta


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


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
    digest = state_dict_fingerprint(state)
    _FINGERPRINTS[policy] = (key, digest)
    return digest


def plain_fingerprint(policy: torch.nn.Module) -> str:
    """The :func:`fingerprint` of the plain policy (what ``remove()`` would leave): a gate trained for the policy is
    found while an engine switch that changed the weights (precision, int8) is applied. Raises ``UsageError`` when
    an applied technique cannot give the plain weights back (layer pruning)."""
    if not any(changed for _, _, changed in applied_changes(policy)):
        return fingerprint(policy)
    return state_dict_fingerprint(plain_state_dict(policy))


def state_dict_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """The :func:`fingerprint` of a state dict (what ``save_policy`` records in the file's metadata)."""
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
