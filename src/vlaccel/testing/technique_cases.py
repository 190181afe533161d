"""The built-in techniques' settings, and the cases the reference VLA runs.

Settings are functions of the model under test, so one case fits every size of a family (the neutral setting of
layer pruning keeps all of the model's layers). The other subjects' cases (transformers models, pi0, LeRobot's
policies) build on the setting functions here.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from vlaccel.testing.case import CLOSE, TechniqueCase, needs_modules

__all__ = ["denoise", "layer_prune", "token_prune", "head_cache", "precision", "kv_efficient", "PRECISION_CASE",
           "COMPILE_CASE", "QUANTIZE_CASE", "TOKEN_PRUNE_METHODS", "reference_cases"]

TOKEN_PRUNE_METHODS = ("efficientvla", "fastv", "random", "diversity")


def denoise(steps: int) -> Any:
    from vlaccel.techniques import DenoiseStepsConfig

    return DenoiseStepsConfig(steps=steps)


def layer_prune(keep: int, mlp: float = 0.0) -> Any:
    from vlaccel.techniques import LayerPruneConfig

    return LayerPruneConfig(keep_layers=keep, mlp_prune_ratio=mlp)


def token_prune(keep: int, method: str, layer: int = 1) -> Any:
    from vlaccel.techniques import TokenPruneConfig

    return TokenPruneConfig(keep_tokens=keep, layer=layer, method=method)


def head_cache(interval: int) -> Any:
    from vlaccel.techniques import HeadCacheConfig

    return HeadCacheConfig(interval=interval)


def precision(dtype: str) -> Any:
    from vlaccel.techniques import PrecisionConfig

    return PrecisionConfig(dtype=dtype)


def kv_efficient(policy: Any, window: int, **kwargs: Any) -> Any:
    """A KV-Efficient setting for the reference VLA; gated retention (the default) gets a tiny gate trained for
    ``policy`` (:func:`vlaccel.testing.kv_gate.tiny_gate`)."""
    from vlaccel.techniques import KVEfficientConfig
    from vlaccel.testing.kv_gate import tiny_gate

    if kwargs.get("retention", "gated") == "gated":
        kwargs["gate"] = tiny_gate(policy)
    return KVEfficientConfig(window=window, **kwargs)


def _compile(backend: str) -> Any:
    from vlaccel.techniques import CompileConfig

    return CompileConfig(parts=("action_head",), backend=backend)


def _no_cpp_compiler() -> str | None:
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    if any(shutil.which(c) for c in candidates):
        return None
    return "torch.compile's inductor backend needs a C++ compiler on the CPU, and none was found (CXX, c++, g++)"


def _fresh_dynamo() -> None:
    """Forget what dynamo compiled before: each property compiles its own models (dynamo's recompile limit would
    otherwise run later models eagerly)."""
    import torch

    torch._dynamo.reset()


#: float32 against bfloat16 weights: the same FLOPs at a lower cost each
PRECISION_CASE = TechniqueCase("precision_bf16", "precision", accelerated=lambda m: precision("bfloat16"),
                               neutral=lambda m: precision("float32"), cuts_flops=False)

#: torch.compile (inductor) of the DiT action head, the smallest part that runs in both modes (its input shapes
#: never change, so it compiles once per model): outputs equal to eager up to float rounding. The neutral setting
#: is dynamo's eager backend (graphs captured, run with the original kernels: bit-identical).
COMPILE_CASE = TechniqueCase("compile", "compile", accelerated=lambda m: _compile("inductor"),
                             neutral=lambda m: _compile("eager"), outputs=CLOSE, cuts_flops=None,
                             unavailable=_no_cpp_compiler, before_each=_fresh_dynamo)


def _quantize(scheme: str) -> Any:
    from vlaccel.techniques import QuantizeConfig

    return QuantizeConfig(scheme=scheme)


#: torchao int8 weights (the optional ``quant`` extra); no setting leaves the outputs unchanged
QUANTIZE_CASE = TechniqueCase("quantize_int8", "quantize", accelerated=lambda m: _quantize("int8_weight_only"),
                              cuts_flops=None,
                              unavailable=needs_modules("torchao", install="the optional extra: "
                                                        "pip install 'vlaccel[quant]'"))


def reference_cases() -> tuple[TechniqueCase, ...]:
    """Every built-in technique that applies to the reference VLA. Neutral settings keep everything (all layers,
    all tokens, every step, a window over every position); accelerated ones are the lossy settings whose SQNR
    bounds :mod:`vlaccel.testing.bounds` names."""
    return (
        TechniqueCase("denoise_steps", "denoise_steps", accelerated=lambda m: denoise(5),
                      neutral=lambda m: denoise(m.config.inference_steps)),
        # EfficientVLA (arXiv 2506.10100): layer pruning (+ MLP channels), visual-token selection, DiT feature cache
        TechniqueCase("layer_prune", "layer_prune", accelerated=lambda m: layer_prune(m.config.lm_layers - 1, mlp=0.25),
                      neutral=lambda m: layer_prune(m.config.lm_layers), prepare=_calibrate_on_random_frames),
        *[TechniqueCase(f"token_prune_{method}", "token_prune", accelerated=lambda m, k=method: token_prune(6, k),
                        neutral=lambda m, k=method: token_prune(m.config.visual_tokens, k))
          for method in TOKEN_PRUNE_METHODS],
        TechniqueCase("head_cache", "head_cache", accelerated=lambda m: head_cache(5), neutral=lambda m: head_cache(1)),
        # KV-Efficient (arXiv 2509.21354), history mode: neutral = a window over every position the LM can address;
        # accelerated = a one-frame window + 1 summary, gated by a gate trained for the tiny policy
        TechniqueCase("kv_efficient", "kv_efficient",
                      accelerated=lambda m: kv_efficient(m, m.config.tokens_per_frame, budget=1),
                      neutral=lambda m: kv_efficient(m, m.config.max_positions, budget=1)),
        *[TechniqueCase(f"kv_{r}", "kv_efficient",
                        accelerated=lambda m, r=r, b=b: kv_efficient(m, m.config.tokens_per_frame, retention=r, **b),
                        neutral=lambda m, r=r, b=b: kv_efficient(m, m.config.max_positions, retention=r, **b),
                        attention="eager" if r == "h2o" else None)
          for r, b in (("h2o", {"budget": 1}), ("streaming", {}))],  # threshold/mean/random: their own tests
        PRECISION_CASE,
        COMPILE_CASE,
        QUANTIZE_CASE,
    )


def _calibrate_on_random_frames(policy: Any) -> None:
    from vlaccel.testing.reference import calibrate_on_random_frames

    calibrate_on_random_frames(policy)
