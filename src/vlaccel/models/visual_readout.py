"""Visual readout: attention pooling of the current frame's visual tokens (LM outputs or inputs) into the condition.

CogACT (arXiv 2411.19650) conditions its action head on one vector, the LM's output at the cognition token.
On the push task that vector loses where the puck lies (docs/reference_policy.md, "What we tried": a linear
probe reads the puck's y from the LM outputs at the visual tokens with R^2 0.6-0.7 and from the cognition
feature with 0.04). pi0 (arXiv 2410.24164) lets its action expert attend to every prefix token instead. This
module is the cheap middle: ``heads`` learned queries attend over the LM's last-layer outputs at the current
frame's visual tokens (whatever a token-pruning technique kept of them) and the pooled vector is added to the
cognition feature:

    z = h_cog + W_o [softmax(q_i K^T / sqrt(d)) V]_{i = 1..heads}      K = h_vis W_k, V = h_vis W_v

so the head keeps its interface (one condition vector; CFG, the head cache and the KV gate distillation are
unchanged) and ``W_o`` starts at zero: a policy that gains a readout computes exactly what it did before.

``h_vis`` is either the LM's outputs there (config ``visual_readout_source="lm_output"``) or the projector's
tokens the LM reads (``"lm_input"``). A pool is a weighted average over a set and cannot tell which token it
read; SigLIP's tokens keep their absolute position embedding in their content, the LM's outputs (RoPE, no
absolute position) mostly lose it, and with it the puck's y (docs/reference_policy.md, "What we tried").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def build_visual_readout(config) -> nn.Module | None:
    """The readout a ``ReferenceVLAConfig`` asks for (``visual_readout_heads``/``_source``/``_pool``), or None."""
    if not config.visual_readout_heads:
        return None
    if config.visual_readout_pool == "flatten":
        return FlattenReadout(config.lm_hidden, config.visual_tokens, config.visual_readout_heads)
    return VisualReadout(config.lm_hidden, config.visual_readout_heads)


class VisualReadout(nn.Module):
    """[B, N, D] one frame's visual tokens (LM outputs or LM inputs) -> [B, D] to add to the cognition feature."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if heads < 1 or dim % heads:
            raise ValueError(f"visual readout: heads must be >= 1 and divide lm_hidden={dim}, got {heads}")
        self.heads = heads
        self.query = nn.Parameter(torch.randn(heads, dim // heads))  # one learned query per head
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)  # adding the readout leaves a trained policy's outputs unchanged
        nn.init.zeros_(self.out.bias)

    def forward(self, visual: torch.Tensor) -> torch.Tensor:
        b, n, d = visual.shape
        if n == 0:
            raise ValueError("visual readout: the frame has no visual tokens left to read")
        k = self.key(visual).view(b, n, self.heads, d // self.heads).transpose(1, 2)  # [B, H, N, d/H]
        v = self.value(visual).view(b, n, self.heads, d // self.heads).transpose(1, 2)  # [B, H, N, d/H]
        q = self.query.to(visual.dtype)[None, :, None].expand(b, -1, -1, -1)  # [B, H, 1, d/H]
        pooled = F.scaled_dot_product_attention(q, k, v)  # [B, H, 1, d/H]
        return self.out(pooled.reshape(b, d))  # [B, D]


class FlattenReadout(nn.Module):
    """[B, N, D] one frame's N visual tokens, in patch order -> [B, D] to add to the cognition feature.

    Each token is reduced to ``channels`` values and the N * channels values are read by a 2-layer MLP:

        z = h_cog + W_2 GELU(W_1 LN([h_1 W_r ; ... ; h_N W_r]))

    Unlike the attention pool, the map knows each token's place (its slice of W_1), the capacity of the linear probe
    that reads the puck's y from the projector's tokens at R^2 0.94 (examples/probe_positions.py); a spatial read-out
    of a small feature map as in visuomotor policies that flatten their last feature map. ``W_2`` starts at zero.
    """

    def __init__(self, dim: int, tokens: int, channels: int):
        super().__init__()
        if channels < 1 or tokens < 1:
            raise ValueError(f"flatten readout: channels and tokens must be >= 1, got {channels}, {tokens}")
        self.tokens = tokens
        self.reduce = nn.Linear(dim, channels)
        self.norm = nn.LayerNorm(tokens * channels)
        self.hidden = nn.Linear(tokens * channels, dim)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)  # adding the readout leaves a trained policy's outputs unchanged
        nn.init.zeros_(self.out.bias)

    def forward(self, visual: torch.Tensor) -> torch.Tensor:
        b, n, _ = visual.shape
        if n != self.tokens:
            raise ValueError(f"flatten readout: expected the frame's {self.tokens} visual tokens, got {n}")
        flat = self.reduce(visual).reshape(b, -1)  # [B, N * channels], token-major
        return self.out(F.gelu(self.hidden(self.norm(flat))))  # [B, D]
