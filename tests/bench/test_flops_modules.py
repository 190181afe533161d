"""``flops_by_module``: FLOPs attributed to named top-level modules, SDPA inside a module included."""

import torch
import torch.nn.functional as F
from torch import nn

from vlaccel.bench.flops import flops_by_module


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)

    def forward(self, x):  # [B, S, W]
        b, s, w = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, w)  # [B, S, W]


def test_flops_attributed_per_module_exactly():
    b, s, w, h = 2, 10, 32, 4
    attn, head = _Attention(w, h), nn.Linear(w, 5)
    x = torch.randn(b, s, w)
    out = flops_by_module({"attn": attn, "head": head, "unused": nn.Identity()}, lambda: head(attn(x).mean(1)))
    qkv = 2 * b * s * w * 3 * w
    sdpa = 4 * b * h * s * s * (w // h)
    assert out["attn"] == qkv + sdpa
    assert out["head"] == 2 * b * w * 5
    assert out["unused"] == 0
    assert out["total"] == out["attn"] + out["head"]
