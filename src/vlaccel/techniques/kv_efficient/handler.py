"""The ``KVEfficientConfig`` handler: give the policy's history mode a ``ChunkedGatedCache`` factory.

``apply`` installs a factory through the adapter (``set_cache_factory``), so every ``reset(instruction)``
starts the episode on a fresh cache built from the *current* LM config (layer pruning applied before this
just works) with the gate loaded once. ``remove`` puts the previous factory back. A retention that reads
attention (the H2O-like baseline, ``needs_attention`` in the retention table) also switches the LM to eager
attention and adds a forward hook per attention module that hands the attention probabilities to the cache;
both are undone on ``remove``.

Token pruning (another technique that drops tokens inside the LM) makes layers store different tokens per
frame; the cache needs them equal (chunks and the one shared attention mask), so the combination is refused:
declared in ``KVEfficientConfig.conflicts`` (checked by ``vlaccel.apply``), and at run time by the cache.
The factory carries ``cache_class``, so adapters recognise a caller's own cache without naming this class.
"""

from __future__ import annotations

from typing import Any

from vlaccel.techniques.kv_efficient.cache import ChunkedGatedCache
from vlaccel.techniques.kv_efficient.config import KVEfficientConfig
from vlaccel.techniques.kv_efficient.gate import KVGate
from vlaccel.techniques.kv_efficient.resolve import check_model, resolve_chunk, resolve_gate
from vlaccel.transformers_compat import forward_cache

__all__ = ["KVEfficientHandler"]


class _Applied:
    """What ``remove`` undoes. Plain attributes, no closures: a deep copy of the model carries its own copy."""

    def __init__(self, model: Any, adapter: Any, previous: Any, hooks: list[Any], eager_lm: Any, previous_impl: Any):
        self.model, self.adapter, self.previous = model, adapter, previous
        self.hooks, self.eager_lm, self.previous_impl = hooks, eager_lm, previous_impl

    def reset(self) -> None:
        """Nothing to clear here: every episode builds a fresh cache (storage, utilities and LSTM state)."""

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        if self.eager_lm is not None:
            self.eager_lm.set_attn_implementation(self.previous_impl)
        self.adapter.set_cache_factory(self.model, self.previous)


def _attention_hook(module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
    cache = forward_cache(kwargs)
    if isinstance(cache, ChunkedGatedCache) and isinstance(output, tuple) and output[1] is not None:
        cache.observe_attention(module.layer_idx, output[1])  # [B, H, q, N] probabilities (eager)


class _CacheFactory:
    """Makes a fresh :class:`ChunkedGatedCache` per episode or sequence (what the adapter's hooks call).
    ``cache_class`` tells the adapter which caches a caller passed in are already this technique's."""

    cache_class = ChunkedGatedCache

    def __init__(self, model: Any, config: KVEfficientConfig, gate: KVGate | None):
        self.model, self.config, self.gate = model, config, gate

    def __call__(self) -> ChunkedGatedCache:
        return ChunkedGatedCache.for_model(self.model, self.config, gate=self.gate)


class KVEfficientHandler:
    def validate(self, model: Any, config: KVEfficientConfig, adapter: Any, pending: tuple = ()) -> KVGate | None:
        """Checks the model and the settings; returns the gate (loaded, its fingerprint checked on the model as
        it is now) for a retention that needs one (``retention="gated"``), else ``None``."""
        check_model(config, model, adapter)
        resolve_chunk(config, model, adapter)
        spec = config.retention_spec
        if spec.needs_attention and not hasattr(adapter.decoder_owner(model), "set_attn_implementation"):
            raise ValueError(f"retention={config.retention!r} needs a transformers LM whose attention can be switched "
                             "to 'eager'")
        return resolve_gate(config, model, adapter) if spec.needs_gate else None

    def apply(self, model: Any, config: KVEfficientConfig, adapter: Any, prepared: KVGate | None) -> _Applied:
        factory = _CacheFactory(model, config, prepared)
        factory()  # fail now, not at the next reset, if the current model cannot hold this cache
        hooks: list[Any] = []
        lm = previous_impl = None
        if config.retention_spec.needs_attention:
            lm = adapter.decoder_owner(model)
            previous_impl = lm.config._attn_implementation
            lm.set_attn_implementation("eager")
            for layer in adapter.decoder_layers(model):
                hooks.append(adapter.attention_module(model, layer).register_forward_hook(_attention_hook,
                                                                                          with_kwargs=True))
        previous = adapter.set_cache_factory(model, factory)
        return _Applied(model, adapter, previous, hooks, lm, previous_impl)
