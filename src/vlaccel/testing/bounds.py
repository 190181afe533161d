"""The SQNR bounds the contract holds each accelerated setting's outputs to, and how SQNR is computed."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["MIN_SQNR_DB", "bounds_for", "output_sqnr"]

# Minimum SQNR (dB, :func:`output_sqnr`) of each lossy setting's outputs against the unmodified model's: the value
# measured on these tiny random models (transformers 5.24, CPU) less 3 dB; where the releases differ, the lowest
# of them less 3 dB. The tiny models are random: transformers 5.5 builds SigLIP one level deeper (its initial draws
# come in another order, so the reference policy's random weights differ) and its pi0 is another implementation,
# so the same setting scores differently there without anything being wrong. An unrelated output scores about
# -3 dB on the transformers models (another prompt's logits) and 0 dB for all zeros, so each bound fails for
# an output that ignores the baseline. ``None``: on a random tiny model the setting's output is unrelated to
# the baseline's (ten vs five DDIM steps of a random DiT, a random decoder missing a quarter of its layers),
# so closeness is not a property to check there; FLOPs, finiteness and change still are.
MIN_SQNR_DB: dict[str, float | None] = {
    "reference-layer_prune": 23,  # measured 26.8
    "reference-token_prune_efficientvla": 28,  # measured 31.2
    "reference-token_prune_fastv": 26,  # measured 29.4
    "reference-token_prune_random": 29,  # measured 32.5
    "reference-token_prune_diversity": 29,  # measured 32.6
    "reference-kv_efficient": 26,  # measured 34.7 (transformers 5.20), 29.8 (5.5.4)
    "reference-kv_h2o": 26,  # measured 34.8 (5.20), 29.8 (5.5.4)
    "reference-kv_streaming": 26,  # measured 34.2 (5.20), 29.1 (5.5.4)
    "paligemma-layer_prune": 21,  # measured 24.7
    "paligemma-kv_mean": 16,  # measured 19.4
    "paligemma-kv_random": 16,  # measured 19.6
    "paligemma-kv_h2o": 16,  # measured 19.4
    "paligemma-kv_streaming": 15,  # measured 18.3
    "paligemma-token_prune_efficientvla": 26,  # measured 29.0
    "paligemma-token_prune_fastv": 24,  # measured 27.7
    "paligemma-token_prune_random": 23,  # measured 26.5
    "paligemma-token_prune_diversity": 24,  # measured 27.4
    "llava-kv_mean": 5,  # measured 8.6
    "llava-kv_random": 6,  # measured 9.7
    "llava-kv_h2o": 7,  # measured 10.8
    "llava-kv_streaming": 5,  # measured 8.2
    "llava-token_prune_efficientvla": 9,  # measured 12.8
    "llava-token_prune_fastv": 9,  # measured 12.1
    "llava-token_prune_random": 9,  # measured 12.9
    "llava-token_prune_diversity": 8,  # measured 11.7
    "smolvlm-layer_prune": 6,  # measured 9.2
    "smolvlm-kv_mean": 11,  # measured 14.0
    "smolvlm-kv_random": 11,  # measured 14.6
    "smolvlm-kv_h2o": 11,  # measured 14.8
    "smolvlm-kv_streaming": 10,  # measured 13.3
    "smolvlm-token_prune_efficientvla": 9,  # measured 12.0
    "smolvlm-token_prune_fastv": 8,  # measured 11.3
    "smolvlm-token_prune_random": 11,  # measured 14.6
    "smolvlm-token_prune_diversity": 9,  # measured 12.7
    "llama-kv_mean": 10,  # measured 13.5
    "llama-kv_random": 10,  # measured 13.8
    "llama-kv_h2o": 10,  # measured 13.8
    "llama-kv_streaming": 7,  # measured 10.8
    "qwen2-layer_prune": 2,  # measured 5.3
    "qwen2-kv_mean": 13,  # measured 16.3
    "qwen2-kv_random": 13,  # measured 16.3
    "qwen2-kv_h2o": 13,  # measured 16.3
    "qwen2-kv_streaming": 11,  # measured 14.5
    "gemma-layer_prune": 21,  # measured 24.7
    "gemma-kv_mean": 23,  # measured 26.8
    "gemma-kv_random": 23,  # measured 26.9
    "gemma-kv_h2o": 23,  # measured 26.8
    "gemma-kv_streaming": 21,  # measured 24.4
    "reference-precision_bf16": 27,  # measured 30.8 (transformers 5.20)
    # engine switches: torch.compile's inductor reorders and fuses float32 reductions (rounding only; how much
    # depends on the CPU's vector width, so the bound sits far below the value, as in tests/techniques/test_compile.py)
    "reference-compile": 80,  # measured 122.0 (torch 2.13, CPU)
    # int8 weights, per channel (torchao 0.18, torch 2.13, CPU): 33.7 on transformers 5.25's random init, 47.8 on
    # 5.5.4's (the tiny model's weights differ by version); CI runs it on the newest stack, where torchao is installed
    "reference-quantize_int8": 30,
    "paligemma-precision_bf16": 43,  # measured 46.4
    "llava-precision_bf16": 35,  # measured 38.5
    "smolvlm-precision_bf16": 40,  # measured 43.7
    "llama-precision_bf16": 40,  # measured 43.1
    "qwen2-precision_bf16": 40,  # measured 43.8
    "gemma-precision_bf16": 43,  # measured 46.6
    "pi0-denoise_steps": 25,  # measured 28.6 (4 instead of 10 Euler steps)
    "pi0-layer_prune": 19,  # measured 28.0 (5.20), 22.6 (5.5.4)
    "pi0-token_prune_efficientvla": 26,  # measured 29.5
    "pi0-token_prune_fastv": 23,  # measured 26.2
    "pi0-token_prune_random": 22,  # measured 25.2
    "pi0-token_prune_diversity": 21,  # measured 24.4
    "pi0-head_cache": 33,  # measured 36.2
    "pi0-precision_bf16": 34,  # measured 37.9
    "reference-denoise_steps": None,  # measured -1.0: unrelated on a random tiny model
    "reference-head_cache": None,  # measured 1.4: unrelated on a random tiny model
    "llava-layer_prune": None,  # measured 1.2: unrelated on a random tiny model
    "llama-layer_prune": None,  # measured 1.6: unrelated on a random tiny model
    # LeRobot pi0 / pi0.5 (tiny random PI0Policy / PI05Policy; LeRobot 0.6.1, transformers 5.5.4, torch 2.11, CPU)
    "lerobot-pi0-denoise_steps": 15,  # measured 18.1
    "lerobot-pi0-layer_prune": 11,  # measured 14.7
    "lerobot-pi0-token_prune_efficientvla": 20,  # measured 23.7
    "lerobot-pi0-token_prune_fastv": 18,  # measured 21.8
    "lerobot-pi0-token_prune_random": 19,  # measured 22.7
    "lerobot-pi0-token_prune_diversity": 17,  # measured 20.9
    "lerobot-pi0-head_cache": 17,  # measured 20.4
    "lerobot-pi0-precision_bf16": 45,  # measured 48.6
    "lerobot-pi05-denoise_steps": 31,  # measured 34.6
    "lerobot-pi05-layer_prune": 27,  # measured 30.4
    "lerobot-pi05-token_prune_efficientvla": 44,  # measured 47.5
    "lerobot-pi05-token_prune_fastv": 43,  # measured 46.9
    "lerobot-pi05-token_prune_random": 43,  # measured 46.1
    "lerobot-pi05-token_prune_diversity": 43,  # measured 46.7
    "lerobot-pi05-head_cache": 48,  # measured 51.5
    "lerobot-pi05-precision_bf16": 52,  # measured 55.1
    # LeRobot SmolVLA (tiny random SmolVLAPolicy; LeRobot 0.6.1, transformers 5.5.4, torch 2.11, CPU)
    "lerobot-smolvla-denoise_steps": 13,  # measured 16.9 (4 instead of 10 Euler steps)
    "lerobot-smolvla-layer_prune": 30,  # measured 33.8 (one of two layer pairs, MLP channels -25 %)
    "lerobot-smolvla-token_prune_efficientvla": 37,  # measured 40.6 (before the VLM, 6 of 16 per camera)
    "lerobot-smolvla-token_prune_fastv": 35,  # measured 38.6
    "lerobot-smolvla-token_prune_random": 28,  # measured 31.3
    "lerobot-smolvla-token_prune_diversity": 33,  # measured 36.4
    "lerobot-smolvla-head_cache": 20,  # measured 23.0
    "lerobot-smolvla-precision_bf16": 52,  # measured 55.0
}


def output_sqnr(subject: Any, base: np.ndarray, out: np.ndarray) -> float:
    """SQNR (dB) of ``out`` against ``base``. For a transformers sequence (greedy ``generate()`` logits per step)
    only the steps fed the same tokens count: up to and including the first step whose argmax differs, after
    which the two runs decode different sequences and their logits are no longer comparable."""
    if subject.greedy_sequence:
        differ = np.flatnonzero(base.argmax(-1) != out.argmax(-1))
        steps = differ[0] + 1 if len(differ) else len(base)
        base, out = base[:steps], out[:steps]
    noise = float(((out - base) ** 2).sum())
    return float("inf") if noise == 0 else 10 * np.log10(float((base ** 2).sum()) / noise)


def bounds_for(subject_id: str) -> dict[str, float | None]:
    """Case id -> bound of the built-in subject ``subject_id``, from :data:`MIN_SQNR_DB`."""
    prefix = f"{subject_id}-"
    return {key[len(prefix):]: bound for key, bound in MIN_SQNR_DB.items() if key.startswith(prefix)}
