"""Memory actually held: KV-cache tensor bytes and parameter counts (measured, not estimated).

``kv_bytes`` is the sum of ``nbytes`` of every cache layer's ``keys`` and ``values`` tensors, for any
transformers ``Cache`` (``DynamicCache`` or a technique's subclass) whose layers expose them.
``kv_storage_bytes`` counts the distinct underlying storages instead: a cache that keeps a narrow view
of a bigger buffer (a slice of a preallocated ring buffer, say) still holds the whole buffer, and that
is what this number shows. ``cache_tensor_bytes`` adds every other tensor the cache object keeps
(gate state, summaries, masks ...), each storage counted once.

The benchmarks (:mod:`vlaccel.bench`) and the closed-loop evaluation (:mod:`vlaccel.sim`, the KV bytes an
episode ends with) both measure with these.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = [
    "cache_tensor_bytes",
    "count_parameters",
    "kv_bytes",
    "kv_storage_bytes",
    "kv_tensors",
    "parameter_bytes",
]


def _layers(cache: Any) -> list[Any]:
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(
            f"{type(cache).__name__} has no .layers; kv_bytes expects a transformers Cache (v5 API: "
            "cache.layers[i].keys / .values)"
        )
    return list(layers)


def kv_tensors(cache: Any) -> Iterator[torch.Tensor]:
    """Every ``keys`` / ``values`` tensor of every cache layer (uninitialised layers are skipped)."""
    for layer in _layers(cache):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                yield t


def kv_bytes(cache: Any) -> int:
    """Sum of ``nbytes`` of the cache layers' keys and values tensors: the KV bytes the cache holds."""
    if cache is None:
        return 0
    return int(sum(t.nbytes for t in kv_tensors(cache)))


def _storage_bytes(tensors: Iterator[torch.Tensor]) -> int:
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[(str(t.device), storage.data_ptr())] = storage.nbytes()
    return int(sum(seen.values()))


def kv_storage_bytes(cache: Any) -> int:
    """Bytes of the distinct storages behind the keys/values (>= ``kv_bytes`` when views of buffers are kept)."""
    if cache is None:
        return 0
    return _storage_bytes(kv_tensors(cache))


def _walk_tensors(obj: Any, depth: int, seen: set[int]) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
        return
    if depth <= 0 or id(obj) in seen or isinstance(obj, (str, bytes, int, float, bool, type(None), nn.Module)):
        return  # modules (a gate network) are parameters, not cache state
    seen.add(id(obj))
    if isinstance(obj, dict):
        items = obj.values()
    elif isinstance(obj, (list, tuple, set)):
        items = obj
    elif hasattr(obj, "__dict__"):
        items = vars(obj).values()
    else:
        return
    for item in items:
        yield from _walk_tensors(item, depth - 1, seen)


def cache_tensor_bytes(cache: Any) -> int:
    """Bytes of every distinct tensor storage reachable from the cache object (KV plus any technique state)."""
    if cache is None:
        return 0
    return _storage_bytes(_walk_tensors(cache, depth=6, seen=set()))


def count_parameters(module: nn.Module) -> int:
    """Parameters reachable from ``module`` (shared ones once), i.e. what a pruned model still holds."""
    return int(sum(p.numel() for p in module.parameters()))


def parameter_bytes(module: nn.Module) -> int:
    return int(sum(p.nbytes for p in module.parameters()))
