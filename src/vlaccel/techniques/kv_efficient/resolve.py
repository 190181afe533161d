"""Resolve a :class:`KVEfficientConfig` against a model: chunk size, the gate file, RoPE and layer types.

Every check raises before anything is changed, with an error that says how to fix the setting.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from vlaccel.errors import MissingInputError
from vlaccel.techniques.kv_efficient.config import KVEfficientConfig
from vlaccel.techniques.kv_efficient.gate import (
    GATE_WEIGHTS,
    POLICY_GATE_DIR,
    GateFingerprintError,
    KVGate,
    load_gate,
    policy_gate_dir,
    shipped_gate_dir,
)
from vlaccel.techniques.kv_efficient.rope import find_rotary

__all__ = ["shipped_gate_dir", "resolve_chunk", "resolve_gate", "check_model"]


def resolve_chunk(config: KVEfficientConfig, model: Any, adapter: Any) -> int:
    if config.chunk is not None:
        chunk = config.chunk
    else:
        per_frame = getattr(adapter, "tokens_per_frame", None)
        if per_frame is None:
            raise ValueError(
                f"KVEfficientConfig(chunk=None) means 'the tokens of one observation', which {type(model).__name__} "
                "does not have; pass chunk=N explicitly"
            )
        chunk = int(per_frame(model))
    if config.summary_slots > chunk:
        raise ValueError(f"summary_slots={config.summary_slots} > chunk={chunk} tokens: a summary must be smaller "
                         "than its chunk")
    return chunk


def _head_sizes(lm_cfg: Any) -> tuple[int, int]:
    head_dim = getattr(lm_cfg, "head_dim", None) or lm_cfg.hidden_size // lm_cfg.num_attention_heads
    return int(head_dim), int(getattr(lm_cfg, "num_key_value_heads", None) or lm_cfg.num_attention_heads)


def resolve_gate(config: KVEfficientConfig, model: Any, adapter: Any) -> KVGate:
    """Load ``config.gate`` (else the gate stored with the policy, else the shipped one) and check it fits ``model``
    (fingerprint and head sizes)."""
    from vlaccel.errors import UsageError
    from vlaccel.weights import plain_fingerprint, unrecoverable_techniques

    blocking = unrecoverable_techniques(model)
    if blocking:
        names = ", ".join(blocking)
        raise UsageError(f"a KV gate is matched to the plain policy's weights, and {names} (applied) changed them "
                         f"and cannot give them back; apply KVEfficientConfig in the same vlaccel.apply call as "
                         f"{names}, or before it")
    fp = plain_fingerprint(model)  # the gate belongs to the plain weights, also under bf16 or int8
    folder = config.gate if config.gate is not None else policy_gate_dir(model)
    shipped = folder is None
    if shipped:
        folder = shipped_gate_dir()
        if not (folder / GATE_WEIGHTS).exists():
            raise MissingInputError(
                "retention='gated' with gate=None uses the gate shipped for the bundled reference policy, and this "
                f"install has none ({folder}). Train one with `vlaccel train-kv-gate --policy reference` and pass "
                "gate=PATH, or choose a gate-free baseline: retention='mean', 'streaming', 'random' or 'h2o'."
            )
    try:
        gate = load_gate(folder, fingerprint=fp)
    except GateFingerprintError as err:  # a malformed gate file is refused by load_gate, naming the file
        cast = _cast_hint(model)
        if not shipped:
            if cast:
                raise GateFingerprintError(f"{err}{cast}") from None
            raise
        raise GateFingerprintError(
            f"no trained gate for this policy (fingerprint {fp}): the shipped gate belongs to the bundled "
            f"reference policy. Train one with `vlaccel train-kv-gate --policy PATH --out PATH/{POLICY_GATE_DIR}` "
            "(found there by gate=None), or pass gate=GATE_DIR, or choose "
            f"a gate-free baseline: retention='mean', 'streaming', 'random' or 'h2o'.{cast}"
        ) from None
    head_dim, kv_heads = _head_sizes(adapter.lm_config(model))
    gate.check_fits(head_dim, kv_heads, config.summary_slots)
    _warn_other_settings(gate, folder, config, model, adapter)
    return gate


def _cast_hint(model: Any) -> str:
    """When every floating-point weight of the plain policy is in one dtype other than float32, what to do if it
    was cast outside vlaccel after its gate was trained (a gate matches the exact weights, so a cast policy has
    none); else ""."""
    from vlaccel.weights import plain_state_dict

    dtypes = {t.dtype for t in plain_state_dict(model).values() if t.is_floating_point()}
    if len(dtypes) != 1 or torch.float32 in dtypes:
        return ""
    name = str(dtypes.pop()).removeprefix("torch.")
    return (f" This policy's weights are {name}: if it was cast outside vlaccel (policy.to(torch.{name})) after its "
            f"gate was trained on the float32 weights, keep it float32 and apply PrecisionConfig({name!r}) with "
            "vlaccel.apply instead; the gate is then found (it is matched to the plain weights).")


_WARNED: set[tuple[str, str]] = set()


def _warn_other_settings(gate: KVGate, folder: Any, config: KVEfficientConfig, model: Any, adapter: Any) -> None:
    """Warn (once per gate and settings) when the cache settings that shape what the gate scores (chunk, window,
    sinks, summary slots) differ from those ``gate.json`` records it was trained for: it still runs, but what it
    learned to keep was for the other settings. ``budget`` is not compared: it only caps how many of the gate's
    best-scored chunks are kept (the shipped preset keeps 4 with a gate trained at 8)."""
    recorded = gate.meta.get("kv")
    if not isinstance(recorded, dict):
        return
    applied = {"window": config.window, "chunk": resolve_chunk(config, model, adapter), "sinks": config.sinks,
               "summary_slots": config.summary_slots}
    differ = {k: (recorded[k], applied[k]) for k in applied if k in recorded and recorded[k] != applied[k]}
    key = (str(folder), repr(sorted(differ.items())))
    if not differ or key in _WARNED:
        return
    _WARNED.add(key)
    trained = ", ".join(f"{k}={was}" for k, (was, _) in differ.items())
    now = ", ".join(f"{k}={is_}" for k, (_, is_) in differ.items())
    warnings.warn(f"the KV-Efficient gate at {folder} was trained for {trained} (its gate.json) but is applied with "
                  f"{now}; its choices may not carry over: apply those settings, or train a gate for these "
                  "(`vlaccel train-kv-gate`)", UserWarning, stacklevel=2)


def check_model(config: KVEfficientConfig, model: Any, adapter: Any) -> None:
    """Layer types the cache supports, RoPE when summaries are re-rotated, and the cache plumbing."""
    from vlaccel.adapters.base import ModelAdapter

    if type(adapter).set_cache_factory is ModelAdapter.set_cache_factory:
        raise TypeError(
            f"{type(model).__name__} has no history mode vlaccel can give a cache to; build "
            "ChunkedGatedCache.for_model(model, config) and pass it to forward()/generate() as the cache argument "
            "(vlaccel.transformers_compat.cache_kwargs(model, cache) names it for the installed transformers)"
        )
    lm_cfg = adapter.lm_config(model)
    types = set(getattr(lm_cfg, "layer_types", None) or ["full_attention"])
    if types != {"full_attention"}:
        raise ValueError(f"KV-Efficient supports full-attention decoders only; this LM has layer types {sorted(types)}")
    if config.summarises and find_rotary(adapter.decoder_owner(model)) is None:
        raise ValueError(
            f"retention={config.retention!r} re-rotates summary keys at their chunk's position, which needs RoPE "
            f"attention; {type(adapter.decoder_owner(model)).__name__} has no rotary embedding. Use "
            "retention='streaming' (no summaries) or 'full'."
        )
