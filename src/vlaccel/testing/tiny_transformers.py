"""Tiny random transformers models built offline from configs, and their inputs (contract subjects).

Families: the VLMs VLAs are built on (PaliGemma: pi0, LLaVA-style Llama + vision tower: OpenVLA/CogACT,
SmolVLM: SmolVLA) and plain decoder LMs. Each VLM prompt holds one image (``VISUAL_TOKENS[family]`` image
tokens, counted from the config as the adapter does) with text around it as the family's processor lays it out.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["VOCAB", "IMAGE_TOKEN", "FAMILIES", "VISUAL_TOKENS", "build", "family_of", "hf_inputs", "last_logits",
           "generate_logits"]

VOCAB = 128
IMAGE_TOKEN = VOCAB - 1
FAMILIES = ("paligemma", "llava", "smolvlm", "llama", "qwen2", "gemma")
VISUAL_TOKENS = {"paligemma": 16, "llava": 16, "smolvlm": 16}
#: text tokens before / after the image in each VLM prompt (PaliGemma: image first; LLaVA/SmolVLM: a header first)
_TEXT_AROUND = {"paligemma": (0, 6), "llava": (3, 5), "smolvlm": (2, 5)}


def _text_config(cls, **extra):
    return cls(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=256, **extra)


def build(family: str) -> torch.nn.Module:
    import transformers as tf

    torch.manual_seed(0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32)
    if family == "paligemma":
        model = tf.PaliGemmaForConditionalGeneration(tf.PaliGemmaConfig(
            vision_config=tf.SiglipVisionConfig(**vision, patch_size=8),
            text_config=_text_config(tf.GemmaConfig, head_dim=16), image_token_index=IMAGE_TOKEN, vocab_size=VOCAB,
            projection_dim=64, hidden_size=64))
    elif family == "llava":
        model = tf.LlavaForConditionalGeneration(tf.LlavaConfig(
            vision_config=tf.CLIPVisionConfig(**vision, patch_size=8, projection_dim=32),
            text_config=_text_config(tf.LlamaConfig), image_token_index=IMAGE_TOKEN, image_seq_length=16,
            vision_feature_layer=-1, vision_feature_select_strategy="default", vocab_size=VOCAB))
    elif family == "smolvlm":
        model = tf.SmolVLMForConditionalGeneration(tf.SmolVLMConfig(
            vision_config=tf.SmolVLMVisionConfig(**vision, patch_size=4), text_config=_text_config(tf.LlamaConfig),
            image_token_id=IMAGE_TOKEN, scale_factor=2, vocab_size=VOCAB))
    elif family == "llama":
        model = tf.LlamaForCausalLM(_text_config(tf.LlamaConfig))
    elif family == "qwen2":
        model = tf.Qwen2ForCausalLM(_text_config(tf.Qwen2Config))
    elif family == "gemma":
        model = tf.GemmaForCausalLM(_text_config(tf.GemmaConfig, head_dim=16))
    else:
        raise ValueError(f"unknown family {family!r}; one of {FAMILIES}")
    return model.eval()


def family_of(model) -> str:
    return {"PaliGemmaForConditionalGeneration": "paligemma", "LlavaForConditionalGeneration": "llava",
            "SmolVLMForConditionalGeneration": "smolvlm", "LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2",
            "GemmaForCausalLM": "gemma"}[type(model).__name__]


def hf_inputs(model, seed: int = 0) -> dict[str, torch.Tensor]:
    """Forward keyword arguments of one prompt (batch 1): random text, and one random image for VLMs."""
    family = family_of(model)
    g = torch.Generator().manual_seed(seed)
    text = lambda n: torch.randint(1, IMAGE_TOKEN, (1, n), generator=g)  # noqa: E731 (never the image token)
    if family not in VISUAL_TOKENS:
        ids = text(12)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    before, after = _TEXT_AROUND[family]
    ids = torch.cat([text(before), torch.full((1, VISUAL_TOKENS[family]), IMAGE_TOKEN), text(after)], dim=1)
    pixels = torch.randn(1, 3, 32, 32, generator=g)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
           "pixel_values": pixels.unsqueeze(1) if family == "smolvlm" else pixels}  # SmolVLM: [B, images, 3, H, W]
    if family == "paligemma":
        out["token_type_ids"] = torch.zeros_like(ids)  # prefix (image + prompt); no suffix at inference
    return out


def last_logits(model) -> np.ndarray:
    """Next-token logits of two independent prompts (each forward without a cache): [2, V]."""
    with torch.no_grad():
        return np.stack([model(**hf_inputs(model, s)).logits[0, -1].float().numpy() for s in (0, 1)])


def generate_logits(model, seed: int = 0, new_tokens: int = 8) -> np.ndarray:
    """Greedy ``generate()`` of one prompt: the logits of every generated step [new_tokens, V]."""
    out = model.generate(**hf_inputs(model, seed), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         do_sample=False, return_dict_in_generate=True, output_logits=True)
    return torch.cat(out.logits).float().numpy()
