"""FLOP counting with ``torch.utils.flop_counter.FlopCounterMode``, SDPA on CPU included.

On CPU, ``F.scaled_dot_product_attention`` dispatches to ``aten._scaled_dot_product_flash_attention_for_cpu``,
which the flop registry lacks, so attention counts as 0. We register the
standard SDPA formula for it (full S_q x S_k, causal sparsity ignored, as for the CUDA kernels).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

_REGISTERED = False


def register_cpu_sdpa_formula() -> None:
    """Idempotently register the FLOP formula for the CPU flash-attention op."""
    global _REGISTERED
    if _REGISTERED:
        return
    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    from torch.utils.flop_counter import flop_registry

    if op not in flop_registry and op.default not in flop_registry:

        @register_flop_formula(op, get_raw=True)
        def _sdpa_cpu_flop(query, key, value, *args, out_val=None, **kwargs):  # noqa: ANN001
            # grouped-query attention: keys/values with fewer heads count as repeated to the query's heads, as
            # torch 2.13's sdpa_flop_count does itself (torch 2.11's asserts equal head counts)
            heads = query.shape[-3]
            return sdpa_flop_count(query.shape, (*key.shape[:-3], heads, *key.shape[-2:]),
                                   (*value.shape[:-3], heads, *value.shape[-2:]))

    _REGISTERED = True


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """Run ``fn()`` under FlopCounterMode; return (total FLOPs, FLOPs per top-level module name)."""
    register_cpu_sdpa_formula()
    with FlopCounterMode(display=False) as counter:
        fn()
    per_module = {k: int(sum(v.values())) for k, v in counter.get_flop_counts().items()}
    return int(counter.get_total_flops()), per_module


def flops_by_module(modules: dict[str, Any], fn: Callable[[], Any]) -> dict[str, int]:
    """FLOPs of ``fn()``: ``total`` plus the share of each named top-level module of ``modules``.

    FlopCounterMode names a module called outside any parent forward by its class name, so each entry of
    ``modules`` (name -> nn.Module, e.g. ``{"vision": policy.vision}``) is looked up by its class name.
    """
    total, per_module = count_flops(fn)
    out = {name: per_module.get(type(m).__name__, 0) for name, m in modules.items()}
    return {**out, "total": total}
