"""Analytic cost of history mode with and without the KV-Efficient cache (our model, not
taken from arXiv 2509.21354).

Per decoder layer after an instruction prefix of P tokens and F observation steps of q tokens each (chunk C,
window W, s slots per summary)::

    prot    = min(P + F*q, P' + sinks)     slots never evicted (P' = P with protect_prefix, the default, else 0)
    raw     = P + F*q - prot               tokens that ever entered the evictable region
    n       = max(0, raw - W) // C         chunks closed (summarised or dropped); 0 if the retention never evicts
    k       = 0 if it keeps no summaries (streaming, full), else min(n, M) (budget) or n (no budget)
    u       = raw - n*C                    tokens still raw (tail + window)
    T_eff   = prot + k*s + u               slots held (T_eff = P + F*q for the full cache)
    KV bytes = 2 * L * H_kv * d_h * T_eff * bytes_per_element * batch

Whether a retention evicts, summarises or runs a gate is read from the retention table
(:data:`vlaccel.techniques.kv_efficient.retentions.RETENTION_TABLE`), the one the cache runs by.

FLOPs of one step that appends q tokens to a cache holding T slots, counted the way
``torch.utils.flop_counter`` counts them (matmuls only; SDPA over the full q x (T + q) score block, causal
sparsity not discounted; GQA keys repeated to H heads; RoPE angles left out: transformers 5.20 computes them
elementwise, 0 counted FLOPs, 5.5 as a matmul counted under the LM's ``rotary_emb``, d_h per position)::

    attention = L * 4 * H * d_h * q * (T + q)                               (QK^T and AV; ~ 4 H d_h T per token)
    dense     = L * q * 2 * (D*H*d_h + 2*D*H_kv*d_h + H*d_h*D + 3*D*I)      (projections + gated MLP: unchanged)
    gate      = per completed chunk and layer: aggregator MLP 2*C*H_kv*(2*d_h*h_a + h_a*s), pooling
                2 * 2*s*C*d_h*H_kv, LSTM cell 2*4*h_g*(2*H_kv*d_h + h_g) * batch, head 2*h_g
                (the mean aggregator has only the pooling term; streaming has none)

End to end adds the vision encoder, projector and action head, which do not depend on the history: pass their
FLOPs as ``other``. As in the paper (1.61x attention vs 1.34x end to end), the attention-level saving is an
upper bound of the end-to-end one because the dense part is unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vlaccel.techniques.kv_efficient.retentions import retention_spec

__all__ = ["LMShape", "GateShape", "effective_tokens", "kv_bytes", "attention_flops", "dense_flops", "gate_flops",
           "step_cost", "history_costs"]


@dataclasses.dataclass(frozen=True)
class LMShape:
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    bytes_per_element: int = 4

    @classmethod
    def from_config(cls, lm_config: Any, bytes_per_element: int = 4) -> LMShape:
        heads = lm_config.num_attention_heads
        head_dim = getattr(lm_config, "head_dim", None) or lm_config.hidden_size // heads
        return cls(lm_config.num_hidden_layers, heads, getattr(lm_config, "num_key_value_heads", None) or heads,
                   head_dim, lm_config.hidden_size, lm_config.intermediate_size, bytes_per_element)


@dataclasses.dataclass(frozen=True)
class GateShape:
    """Sizes of the trainable gate (``KVGate.sizes``); ``None`` = mean aggregator, no LSTM."""

    agg_hidden: int = 64
    lstm_hidden: int = 64


def _protected(config: Any, prefix: int, q: int, frames: int) -> tuple[int, int]:
    """(slots never evicted, tokens that entered the evictable region) after the prefix and ``frames`` steps."""
    seen = prefix + frames * q
    protected = min(seen, (prefix if config.protect_prefix else 0) + config.sinks)
    return protected, seen - protected


def _chunks(config: Any, prefix: int, q: int, chunk: int, frames: int) -> tuple[int, int]:
    """(chunks closed, tokens still raw) after the prefix and ``frames`` steps of ``q`` tokens."""
    _, raw = _protected(config, prefix, q, frames)
    if not retention_spec(config.retention).evicts or raw - config.window < chunk:
        return 0, raw
    n = (raw - config.window) // chunk
    return n, raw - n * chunk


def effective_tokens(config: Any, prefix: int, q: int, chunk: int, frames: int, kept: int | None = None) -> int:
    """T_eff: slots held per layer after ``frames`` steps (``kept`` overrides k, e.g. for threshold mode)."""
    protected, _ = _protected(config, prefix, q, frames)
    n, raw = _chunks(config, prefix, q, chunk, frames)
    if kept is None:
        if not retention_spec(config.retention).summarises:
            kept = 0
        elif config.budget is None:
            if getattr(config, "threshold", None) is not None:
                raise ValueError("threshold mode keeps a data-dependent number of chunks: pass kept=k")
            kept = n
        else:
            kept = min(n, config.budget)
    return protected + kept * config.summary_slots + raw


def kv_bytes(shape: LMShape, tokens: int, batch: int = 1) -> int:
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * tokens * shape.bytes_per_element * batch


def attention_flops(shape: LMShape, past: int, q: int, batch: int = 1) -> int:
    return shape.layers * 4 * shape.heads * shape.head_dim * q * (past + q) * batch


def dense_flops(shape: LMShape, q: int, batch: int = 1) -> int:
    d, hd, kvd = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    per_token = 2 * (d * hd + 2 * d * kvd + hd * d + 3 * d * shape.intermediate)
    return shape.layers * q * per_token * batch


def gate_flops(shape: LMShape, chunks: int, chunk: int, slots: int, gate: GateShape | None, summarises: bool = True,
               batch: int = 1) -> int:
    """FLOPs of summarising and gating ``chunks`` completed chunks in every layer."""
    if not summarises or chunks == 0:
        return 0
    h, d = shape.kv_heads, shape.head_dim
    per = 2 * 2 * slots * chunk * d * h  # pooling keys and values
    if gate is not None:
        per += 2 * chunk * h * (2 * d * gate.agg_hidden + gate.agg_hidden * slots)  # token-scoring MLP
        per += 2 * 4 * gate.lstm_hidden * (2 * h * d + gate.lstm_hidden) + 2 * gate.lstm_hidden  # LSTM + head
    return shape.layers * chunks * per * batch


def step_cost(shape: LMShape, config: Any, prefix: int, q: int, chunk: int, frame: int,
              gate: GateShape | None = None, other: int = 0, batch: int = 1) -> dict[str, int]:
    """Predicted cost of observation step ``frame`` (1-based): the cache holds the state after ``frame - 1`` steps."""
    past = effective_tokens(config, prefix, q, chunk, frame - 1)
    done_before, _ = _chunks(config, prefix, q, chunk, frame - 1)
    done_after, _ = _chunks(config, prefix, q, chunk, frame)
    spec = retention_spec(config.retention)
    gate_shape = gate if spec.needs_gate else None
    attn = attention_flops(shape, past, q, batch)
    dense = dense_flops(shape, q, batch)
    g = gate_flops(shape, done_after - done_before, chunk, config.summary_slots, gate_shape, spec.summarises, batch)
    held = effective_tokens(config, prefix, q, chunk, frame)
    return {"tokens_before": past, "tokens_after": held, "kv_bytes": kv_bytes(shape, held, batch),
            "attention_flops": attn, "dense_flops": dense, "gate_flops": g, "lm_flops": attn + dense + g,
            "e2e_flops": attn + dense + g + other}


def history_costs(shape: LMShape, config: Any, prefix: int, q: int, chunk: int, frames: int,
                  gate: GateShape | None = None, other: int = 0) -> list[dict[str, int]]:
    """:func:`step_cost` for frames 1..``frames``."""
    return [step_cost(shape, config, prefix, q, chunk, f, gate, other) for f in range(1, frames + 1)]
