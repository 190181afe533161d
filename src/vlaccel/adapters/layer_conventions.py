"""The transformers decoder-layer convention (Llama, Qwen2/3, Mistral, Gemma) that adapters share.

:func:`decoder_layer_queries` recomputes the post-RoPE queries of such a layer; every adapter whose LM is one
of these models uses it (the reference VLA's LM is a ``LlamaModel``). A leaf module: it imports no adapter.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

__all__ = ["decoder_layer_queries"]


def decoder_layer_queries(layer: nn.Module, hidden_states: torch.Tensor,
                          position_embeddings: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Queries [B, H, T, d_h] of a transformers decoder layer for its input ``hidden_states`` [B, T, D].

    Recomputes exactly what the layer's attention does before the score matmul: ``input_layernorm`` ->
    ``q_proj`` -> (``q_norm`` per head, Qwen3) -> RoPE with the layer's ``position_embeddings`` (cos, sin),
    using ``apply_rotary_pos_emb`` from the layer's own modeling module (so each family's RoPE variant is used).
    """
    attn = layer.self_attn
    rope = getattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb", None)
    if rope is None or not hasattr(attn, "q_proj") or not hasattr(layer, "input_layernorm"):
        raise NotImplementedError(
            f"{type(layer).__name__} does not follow the transformers Llama layer layout "
            "(input_layernorm, self_attn.q_proj, apply_rotary_pos_emb); override ModelAdapter.attention_queries"
        )
    b, t, _ = hidden_states.shape
    q = attn.q_proj(layer.input_layernorm(hidden_states)).view(b, t, -1, attn.head_dim)  # [B, T, H, d]
    if getattr(attn, "q_norm", None) is not None:
        q = attn.q_norm(q)
    q = q.transpose(1, 2)  # [B, H, T, d]
    cos, sin = position_embeddings  # [B, T, d] each
    return rope(q, q, cos, sin)[0]
