"""pi0 (transformers' ``PI0ForConditionalGeneration``) at three sizes, built offline from configs, and its inputs.

``full`` is transformers' default ``PI0Config()``: PaliGemma (SigLIP So400m/14 at 224 px, 256 tokens per image;
Gemma 2B, 18 layers) and the Gemma 300M action expert (18 layers), 3.5 B parameters, 50-step action chunks, 10
flow steps. ``small`` keeps that structure (256 tokens per image, 18 + 18 layers) at narrow widths for quick
bench runs; ``tiny`` is the test suite's (16 tokens per image, 4 + 4 layers). Weights are random: speed, FLOPs and
memory do not depend on them. Inputs follow ``PI0Processor``'s layout: [image tokens of each camera][BOS +
prompt], ``pixel_values`` [B, cameras, 3, H, W], ``pixel_attention_mask`` [B, cameras].
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["SIZES", "CAMERAS", "PROMPT_TOKENS", "build_pi0", "pi0_inputs"]

_VISION = {"model_type": "siglip_vision_model", "vision_use_head": False}
#: size -> PI0Config keyword arguments (``{}``: transformers' defaults, the published pi0)
SIZES: dict[str, dict[str, Any]] = {
    "full": {},
    "small": {
        "vlm_config": {"model_type": "paligemma", "projection_dim": 512, "image_token_id": 1024,
                       "text_config": {"model_type": "gemma", "hidden_size": 512, "num_hidden_layers": 18,
                                       "intermediate_size": 2048, "num_attention_heads": 8, "num_key_value_heads": 1,
                                       "head_dim": 64, "vocab_size": 1024},
                       "vision_config": {**_VISION, "hidden_size": 384, "intermediate_size": 1536, "patch_size": 14,
                                         "image_size": 224, "num_hidden_layers": 6, "num_attention_heads": 6}},
        "dit_config": {"model_type": "gemma", "hidden_size": 256, "num_hidden_layers": 18, "intermediate_size": 1024,
                       "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 64},
    },
    "tiny": {
        "vlm_config": {"model_type": "paligemma", "projection_dim": 64, "image_token_id": 299,
                       "text_config": {"model_type": "gemma", "hidden_size": 64, "num_hidden_layers": 4,
                                       "intermediate_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1,
                                       "head_dim": 32, "vocab_size": 300},
                       "vision_config": {**_VISION, "hidden_size": 32, "intermediate_size": 64, "patch_size": 8,
                                         "image_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}},
        "dit_config": {"model_type": "gemma", "hidden_size": 32, "num_hidden_layers": 4, "intermediate_size": 64,
                       "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32},
        "chunk_size": 8, "max_state_dim": 8, "max_action_dim": 8,
    },
}
CAMERAS = {"full": 3, "small": 3, "tiny": 2}  # pi0's base + two wrist cameras; the tests use two
PROMPT_TOKENS = {"full": 48, "small": 48, "tiny": 6}  # BOS + prompt (pi0's tokenizer length is 48)


def build_pi0(size: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """A random-weight ``PI0ForConditionalGeneration`` of ``size`` (a key of :data:`SIZES`), in eval mode."""
    from transformers import PI0Config, PI0ForConditionalGeneration

    if size not in SIZES:
        raise ValueError(f"unknown pi0 size {size!r}; one of {sorted(SIZES)}")
    torch.manual_seed(seed)
    model = PI0ForConditionalGeneration(PI0Config(**SIZES[size]))
    return model.to(dtype).eval()


def pi0_inputs(model: Any, seed: int = 0, cameras: int = 2, prompt_tokens: int = 6, batch: int = 1) -> dict[str, Any]:
    """``sample_actions`` keyword arguments of ``batch`` random observations, noise included (so a call is
    deterministic): ``cameras`` images and a prompt of ``prompt_tokens`` tokens (BOS first) each."""
    cfg = model.config
    vision, image_token = cfg.vlm_config.vision_config, cfg.vlm_config.image_token_id
    per_image = (vision.image_size // vision.patch_size) ** 2
    vocab = min(cfg.vlm_config.text_config.vocab_size, image_token)
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, vocab, (batch, prompt_tokens), generator=g)
    prompt[:, 0] = 2  # Gemma's BOS
    ids = torch.cat([torch.full((batch, cameras * per_image), image_token), prompt], dim=1)
    dtype = next(model.parameters()).dtype
    return {"state": torch.randn(batch, cfg.max_state_dim, generator=g).to(dtype), "input_ids": ids,
            "pixel_values": torch.randn(batch, cameras, 3, vision.image_size, vision.image_size, generator=g).to(dtype),
            "pixel_attention_mask": torch.ones(batch, cameras, dtype=torch.bool),
            "attention_mask": torch.ones_like(ids),
            "noise": torch.randn(batch, cfg.chunk_size, cfg.max_action_dim, generator=g).to(dtype)}
