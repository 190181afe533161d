"""Tiny random transformers VLMs and decoder LMs as contract subjects (history = one greedy ``generate()``)."""

from __future__ import annotations

from typing import Any

from vlaccel.testing.case import Subject, TechniqueCase
from vlaccel.testing.technique_cases import PRECISION_CASE, TOKEN_PRUNE_METHODS, layer_prune, token_prune

__all__ = ["NOT_SAVED", "transformers_cases", "transformers_subject"]

NOT_SAVED = ("a transformers model is saved with its own save_pretrained; vlaccel.save_policy writes "
             "vlaccel's reference policies")


def _calibrate(model: Any) -> None:
    from vlaccel.techniques.layer_prune import set_calibration_observations
    from vlaccel.testing.tiny_transformers import hf_inputs

    set_calibration_observations(model, [hf_inputs(model, seed=s) for s in (11, 12)])


def _kv(window: int, retention: str, **kwargs: Any) -> Any:
    from vlaccel.techniques import KVEfficientConfig

    return KVEfficientConfig(window=window, chunk=4, retention=retention, protect_prefix=False, **kwargs)


def _text_layers(model: Any) -> int:
    return model.config.get_text_config().num_hidden_layers


def _max_positions(model: Any) -> int:
    return model.config.get_text_config().max_position_embeddings


def transformers_cases(visual_tokens: int | None) -> tuple[TechniqueCase, ...]:
    """Layer pruning, the gate-free KV retentions, precision, and (VLMs: ``visual_tokens`` per image) token
    pruning."""
    cases = [
        TechniqueCase("layer_prune", "layer_prune", accelerated=lambda m: layer_prune(3, mlp=0.25),
                      neutral=lambda m: layer_prune(_text_layers(m)), prepare=_calibrate),
        *[TechniqueCase(f"kv_{r}", "kv_efficient", accelerated=lambda m, r=r, b=b: _kv(8, r, **b),
                        neutral=lambda m, r=r, b=b: _kv(_max_positions(m), r, **b),
                        attention="eager" if r == "h2o" else None)
          for r, b in (("mean", {"budget": 1}), ("random", {"budget": 1}), ("h2o", {"budget": 1}), ("streaming", {}))],
        PRECISION_CASE,
    ]
    if visual_tokens is not None:
        cases += [TechniqueCase(f"token_prune_{method}", "token_prune",
                                accelerated=lambda m, k=method: token_prune(6, k),
                                neutral=lambda m, k=method, n=visual_tokens: token_prune(n, k))
                  for method in TOKEN_PRUNE_METHODS]
    return tuple(cases)


def transformers_subject(family: str) -> Subject:
    """One family of :mod:`vlaccel.testing.tiny_transformers` (``FAMILIES``)."""
    from vlaccel.testing import tiny_transformers as tiny
    from vlaccel.testing.bounds import bounds_for

    return Subject(family, lambda: tiny.build(family), tiny.last_logits, tiny.generate_logits,
                   transformers_cases(tiny.VISUAL_TOKENS.get(family)), greedy_sequence=True,
                   min_sqnr_db=bounds_for(family), not_saved_because=NOT_SAVED)
