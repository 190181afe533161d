"""Adapter for plain transformers decoder LMs (Llama, Qwen2, Qwen3, Mistral, Gemma; ``*ForCausalLM`` or the bare model).

What techniques need from them is the decoder stack: layer pruning (EfficientVLA B1) works on any of these, so a
pruned LM keeps ``generate()`` and its KV cache, and KV-Efficient's cache replaces the one ``generate()`` makes
(:mod:`vlaccel.adapters.hf_common`). They have no visual tokens and no action head, so token pruning and head
caching refuse them with a clear error (the base adapter's ``NotImplementedError`` messages).

Knowledge is data: the table below says which attribute holds the decoder (``LlamaModel``) for each class.
"""

from __future__ import annotations

from vlaccel.adapters.hf_common import TransformersAdapter
from vlaccel.adapters.layer_conventions import decoder_layer_queries

__all__ = ["HFDecoderAdapter", "DECODER_OWNER", "decoder_layer_queries"]

#: class name -> attribute path from the model to the module holding ``.layers`` ("" = the model itself)
DECODER_OWNER: dict[str, str] = {
    "LlamaForCausalLM": "model", "LlamaModel": "",
    "Qwen2ForCausalLM": "model", "Qwen2Model": "",
    "Qwen3ForCausalLM": "model", "Qwen3Model": "",
    "MistralForCausalLM": "model", "MistralModel": "",
    "GemmaForCausalLM": "model", "GemmaModel": "",
}


class HFDecoderAdapter(TransformersAdapter):
    DECODER_PATH = DECODER_OWNER
    CAPABILITIES = frozenset({"decoder_layers", "history"})
    model_names = tuple(f"transformers {name}" for name in DECODER_OWNER)
