"""RoPE bookkeeping for chunk summaries: de-rotate cached keys, re-rotate a summary at its chunk's position.

Cached keys are already rotated, ``k_rot(p) = a * (k cos(p theta) + rotate_half(k) sin(p theta))`` (``a`` is the
RoPE ``attention_scaling``, folded into cos/sin by transformers). Averaging rotated keys of different positions
mixes phases (the official KV-Efficient code averages them as they are). We invert the rotation
with the tokens' known positions, aggregate in the position-free frame, and rotate the summary at the chunk's
representative position. Both directions use the model's own ``rotary_emb`` module, so every RoPE variant
transformers implements (default, linear, llama3, yarn ... scaling) is handled by its own code.

Inverse: with c = a cos, s = a sin and R = rotate_half (R^2 = -I), ``(cI + sR)(cI - sR) = (c^2 + s^2) I``,
so ``k = (c k_rot - s R k_rot) / (c^2 + s^2)``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["rotate_half", "apply_rotation", "remove_rotation", "RotaryFrame", "find_rotary", "representative_positions"]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[..., d] -> [..., d]: (x1, x2) -> (-x2, x1), the transformers convention (halves, not interleaved)."""
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotation(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [..., T, d] by cos/sin broadcastable to it (same expression as transformers' RoPE)."""
    return (x * cos) + (rotate_half(x) * sin)


def remove_rotation(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`apply_rotation` (exact up to rounding; handles RoPE attention scaling)."""
    return (x * cos - rotate_half(x) * sin) / (cos * cos + sin * sin)


def representative_positions(chunk_positions: torch.Tensor) -> torch.Tensor:
    """[n, C] logical positions -> [n]: the chunk's centre, floor of the mean position (a frame-aligned chunk's
    summary sits like a token in the middle of its frame; our choice)."""
    c = chunk_positions.shape[-1]
    return torch.div(chunk_positions.sum(-1), c, rounding_mode="floor")


def find_rotary(module: nn.Module) -> nn.Module | None:
    """The ``rotary_emb`` module of a transformers decoder (``LlamaModel``, ``*ForCausalLM``), or ``None``."""
    for path in ("rotary_emb", "model.rotary_emb", "model.language_model.rotary_emb", "language_model.rotary_emb"):
        obj: object = module
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.Module):
            return obj
    return None


class RotaryFrame:
    """cos/sin at arbitrary logical positions from a model's ``rotary_emb`` (called as the model calls it)."""

    def __init__(self, rotary: nn.Module, head_dim: int):
        self.rotary = rotary
        self.head_dim = head_dim

    def cos_sin(self, positions: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: LongTensor [N] -> cos, sin [N, d] in ``like``'s dtype/device."""
        cos, sin = self.rotary(like, positions.to(like.device).unsqueeze(0))  # [1, N, d'] each
        if cos.shape[-1] != self.head_dim:
            raise NotImplementedError(
                f"partial rotary embeddings (rotary dim {cos.shape[-1]} < head dim {self.head_dim}) are not supported "
                "by the KV-Efficient summaries; use retention='streaming' or 'full' for this model"
            )
        return cos[0], sin[0]
