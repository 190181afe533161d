"""The ``KVEfficientConfig`` handler: give the policy's history mode a ``ChunkedGatedCache`` factory.

``apply`` installs a factory through the adapter (``set_cache_factory``), so every ``reset(instruction)``
starts the episode on a fresh cache built from the *current* LM config (layer pruning applied before this
just works) with the gate loaded once. ``remove`` puts the previous factory back. The H2O-like baseline also
switches the LM to eager attention and adds a forward hook per attention module that hands the attention
probabilities to the cache; both are undone on ``remove``.

Token pruning (another technique that drops tokens inside the LM) makes layers store different tokens per
frame; the cache needs them equal (chunks and the one shared attention mask), so the combination is refused:
here when ``TokenPruneConfig`` is already applied (or applied in the same call), and at run time by the cache.
"""

from __future__ import annotations

from typing import Any

from vlaccel.config import register_handler
from vlaccel.techniques.kv_efficient.cache import ChunkedGatedCache
from vlaccel.techniques.kv_efficient.config import KVEfficientConfig
from vlaccel.techniques.kv_efficient.gate import KVGate
from vlaccel.techniques.kv_efficient.resolve import check_model, resolve_chunk, resolve_gate
from vlaccel.transformers_compat import forward_cache

__all__ = ["KVEfficientHandler"]

_CONFLICTS = ("TokenPruneConfig",)


def _check_conflicts(model: Any) -> None:
    from vlaccel.api import applied_configs

    names = [type(c).__name__ for c in applied_configs(model)]
    clash = [n for n in names if n in _CONFLICTS]
    if clash:
        raise ValueError(
            f"KVEfficientConfig cannot be combined with {clash[0]}: token pruning stores fewer tokens per frame in "
            "later layers, but the chunked cache needs every layer to store the same tokens. Remove one of them."
        )


class _Applied:
    def __init__(self, model: Any, adapter: Any, previous: Any, hooks: list[Any], attn_restore: Any):
        self.model, self.adapter, self.previous = model, adapter, previous
        self.hooks, self.attn_restore = hooks, attn_restore

    def reset(self) -> None:
        """Nothing to clear here: every episode builds a fresh cache (storage, utilities and LSTM state)."""

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        if self.attn_restore is not None:
            self.attn_restore()
        self.adapter.set_cache_factory(self.model, self.previous)


def _attention_hook(module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
    cache = forward_cache(kwargs)
    if isinstance(cache, ChunkedGatedCache) and isinstance(output, tuple) and output[1] is not None:
        cache.observe_attention(module.layer_idx, output[1])  # [B, H, q, N] probabilities (eager)


@register_handler(KVEfficientConfig)
class KVEfficientHandler:
    def __init__(self) -> None:
        self._gates: dict[tuple[int, KVEfficientConfig], KVGate] = {}

    def validate(self, model: Any, config: KVEfficientConfig, adapter: Any) -> None:
        check_model(config, model, adapter)
        resolve_chunk(config, model, adapter)
        _check_conflicts(model)
        if config.retention == "gated":
            # Loaded (and its fingerprint checked) on the model as validate sees it, kept for apply.
            self._gates[(id(model), config)] = resolve_gate(config, model, adapter)
        if config.retention == "h2o" and not hasattr(adapter.decoder_owner(model), "set_attn_implementation"):
            raise ValueError("retention='h2o' needs a transformers LM whose attention can be switched to 'eager'")

    def apply(self, model: Any, config: KVEfficientConfig, adapter: Any) -> _Applied:
        gate = self._gates.pop((id(model), config), None)
        _check_conflicts(model)  # a TokenPruneConfig applied in the same call went first (lower order)
        if config.retention == "gated" and gate is None:
            gate = resolve_gate(config, model, adapter)

        def factory() -> ChunkedGatedCache:
            return ChunkedGatedCache.for_model(model, config, gate=gate)

        factory()  # fail now, not at the next reset, if the current model cannot hold this cache
        hooks: list[Any] = []
        attn_restore = None
        if config.retention == "h2o" and not config.is_neutral(model):  # neutral: nothing is ever evicted
            lm = adapter.decoder_owner(model)
            previous_impl = lm.config._attn_implementation
            lm.set_attn_implementation("eager")

            def attn_restore() -> None:
                lm.set_attn_implementation(previous_impl)

            for layer in adapter.decoder_layers(model):
                attn = adapter.attention_module(model, layer) if hasattr(adapter, "attention_module") else layer.self_attn
                hooks.append(attn.register_forward_hook(_attention_hook, with_kwargs=True))
        previous = adapter.set_cache_factory(model, factory)
        return _Applied(model, adapter, previous, hooks, attn_restore)
