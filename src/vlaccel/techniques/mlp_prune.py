"""Structured FFN channel pruning for gated decoder MLPs: ``down(act(gate(x)) * up(x))``.

EfficientVLA (arXiv 2506.10100, Sec. 4.1) compresses the MLPs of the kept layers to 25% sparsity with PruneNet
(arXiv 2501.15296, a calibration-free *learned* pruning policy). This module is **a labelled stand-in, not
PruneNet**: it removes the ``ratio`` fraction of intermediate channels with the smallest calibration activation
magnitude ``mean |act_fn(gate(x)) * up(x)|`` (the input of ``down_proj``, collected by
:func:`vlaccel.techniques.layer_prune.calibrate`). As in the paper, parameters really go: ``gate_proj`` and
``up_proj`` lose rows, ``down_proj`` loses columns. Used through ``LayerPruneConfig(mlp_prune_ratio=...)``.

The three Linear modules are replaced by smaller ones (originals kept for :meth:`MLPPruned.remove`); the MLP
module's own ``intermediate_size`` attribute follows, the shared model config is left alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["mlp_parts", "channels_to_keep", "prune", "MLPPruned"]


def mlp_parts(mlp: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    """(gate_proj, up_proj, down_proj) of a gated MLP, or a clear error for another MLP shape."""
    parts = tuple(getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj"))
    if not all(isinstance(p, nn.Linear) for p in parts):
        raise NotImplementedError(
            f"MLP pruning supports gated MLPs with nn.Linear gate_proj/up_proj/down_proj (Llama, Qwen2, Gemma ...), "
            f"got {type(mlp).__name__}"
        )
    return parts  # type: ignore[return-value]


def channels_to_keep(importance: torch.Tensor, ratio: float) -> torch.Tensor:
    """Indices (ascending) of the ``round(I * (1 - ratio))`` (>= 1) channels with the largest importance [I];
    ties keep the lower index."""
    n = importance.numel()
    keep = max(1, int(n * (1.0 - ratio) + 0.5))
    order = torch.sort(importance, descending=True, stable=True).indices
    return order[:keep].sort().values


def _rows(linear: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    new = nn.Linear(linear.in_features, len(idx), bias=linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(linear.weight[idx])  # [keep, D]
        if linear.bias is not None:
            new.bias.copy_(linear.bias[idx])
    return new.requires_grad_(linear.weight.requires_grad).train(linear.training)


def _columns(linear: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    new = nn.Linear(len(idx), linear.out_features, bias=linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(linear.weight[:, idx])  # [D, keep]
        if linear.bias is not None:
            new.bias.copy_(linear.bias)
    return new.requires_grad_(linear.weight.requires_grad).train(linear.training)


class MLPPruned:
    """The replaced modules of every pruned MLP; ``remove()`` puts the originals back."""

    def __init__(self) -> None:
        self.saved: list[tuple[nn.Module, dict[str, nn.Module], int | None]] = []

    def remove(self) -> None:
        for mlp, originals, size in reversed(self.saved):
            for name, module in originals.items():
                setattr(mlp, name, module)
            if size is not None:
                mlp.intermediate_size = size
        self.saved.clear()


def prune(mlps: Sequence[nn.Module], importances: Sequence[torch.Tensor], ratio: float) -> MLPPruned:
    """Remove ``ratio`` of the channels of each MLP (``importances[i]``: [I] per channel of ``mlps[i]``)."""
    state = MLPPruned()
    try:
        for mlp, importance in zip(mlps, importances, strict=True):
            gate, up, down = mlp_parts(mlp)
            idx = channels_to_keep(importance.to(gate.weight.device), ratio)
            replaced = {"gate_proj": _rows(gate, idx), "up_proj": _rows(up, idx), "down_proj": _columns(down, idx)}
            state.saved.append((mlp, {"gate_proj": gate, "up_proj": up, "down_proj": down},
                                getattr(mlp, "intermediate_size", None)))
            for name, module in replaced.items():
                setattr(mlp, name, module)
            if hasattr(mlp, "intermediate_size"):
                mlp.intermediate_size = len(idx)
    except BaseException:
        state.remove()
        raise
    return state
