"""FLOP counting: exact for a known matmul and for SDPA on CPU (which torch alone counts as 0)."""

import torch
import torch.nn.functional as F

from vlaccel.bench.flops import count_flops


def test_matmul_flops_exact():
    a, b = torch.randn(8, 32), torch.randn(32, 16)
    total, _ = count_flops(lambda: a @ b)
    assert total == 2 * 8 * 32 * 16


def test_sdpa_flops_counted_on_cpu():
    q = k = v = torch.randn(1, 8, 288, 64)
    total, _ = count_flops(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert total == 4 * 1 * 8 * 288 * 288 * 64  # 169,869,312 (QK^T and AV, causal sparsity not discounted)
