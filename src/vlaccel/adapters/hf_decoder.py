"""Adapter for plain transformers decoder LMs (Llama, Qwen2, Qwen3, Mistral, Gemma; ``*ForCausalLM`` or the bare model).

What techniques need from them is the decoder stack: layer pruning (EfficientVLA B1) works on any of these, so a
pruned LM keeps ``generate()`` and its KV cache, and KV-Efficient's cache replaces the one ``generate()`` makes
(:mod:`vlaccel.adapters.hf_common`). They have no visual tokens and no action head, so token pruning and head
caching refuse them with a clear error (the base adapter's ``NotImplementedError`` messages).

Knowledge is data: the table below says which attribute holds the decoder (``LlamaModel``) for each class.
Also home of :func:`decoder_layer_queries`, the post-RoPE queries of a transformers decoder layer, shared by
every adapter whose LM is one of these models (the reference VLA's LM is a ``LlamaModel``).
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from vlaccel.adapters.base import register_adapter
from vlaccel.adapters.hf_common import TransformersAdapter

#: class name -> attribute path from the model to the module holding ``.layers`` ("" = the model itself)
DECODER_OWNER: dict[str, str] = {
    "LlamaForCausalLM": "model", "LlamaModel": "",
    "Qwen2ForCausalLM": "model", "Qwen2Model": "",
    "Qwen3ForCausalLM": "model", "Qwen3Model": "",
    "MistralForCausalLM": "model", "MistralModel": "",
    "GemmaForCausalLM": "model", "GemmaModel": "",
}


@register_adapter
class HFDecoderAdapter(TransformersAdapter):
    DECODER_PATH = DECODER_OWNER
    model_names = tuple(f"transformers {name}" for name in DECODER_OWNER)


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
