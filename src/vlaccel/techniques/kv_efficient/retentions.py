"""The retention table: every retention of the chunked cache and what it implies, stated once.

A retention decides what happens to a chunk once it has left the recent window (arXiv 2509.21354's gate and
the baselines it is compared with). :data:`RETENTION_TABLE` is the one place that says which retentions
summarise, evict, need a gate, a budget or the attention probabilities; the config check
(:class:`~vlaccel.techniques.kv_efficient.config.KVEfficientConfig`), the cache
(:class:`~vlaccel.techniques.kv_efficient.cache.ChunkedGatedCache`, through the policy each entry names) and
the analytic cost model (:mod:`vlaccel.bench.cost_model`) all read it. Plain data: importing it loads nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["RetentionSpec", "RETENTION_TABLE", "retention_spec"]


@dataclasses.dataclass(frozen=True)
class RetentionSpec:
    """What one retention does.

    evicts:          False: nothing ever leaves the cache (a plain growing cache; no chunk is ever closed).
    summarises:      a chunk leaving the window becomes ``summary_slots`` summary slots (keys de- and
                     re-rotated, so the model needs RoPE) that the policy keeps or drops; False: the chunk is
                     dropped whole (or, when nothing is evicted, never leaves).
    needs_gate:      a trained ``KVGate`` scores the chunks; takes ``threshold=tau`` as well as ``budget=M``.
    needs_budget:    summaries are evicted only over ``budget=M``, so one is required.
    needs_attention: ranks summaries by the attention they received: the LM runs eager attention and the
                     probabilities are handed to the cache (``observe_attention``).
    random:          the choice is a seeded random draw (``KVEfficientConfig.seed``, reseeded every episode).
    policy:          ``"module:Class"`` of the retention policy the cache runs.
    """

    evicts: bool
    summarises: bool
    policy: str
    needs_gate: bool = False
    needs_budget: bool = False
    needs_attention: bool = False
    random: bool = False


_MODULE = "vlaccel.techniques.kv_efficient"

#: name -> :class:`RetentionSpec`, in the order ``KVEfficientConfig`` lists them.
RETENTION_TABLE: Mapping[str, RetentionSpec] = MappingProxyType({
    # the method: MLP summaries, an LSTM gate's utility keeps them (top M, or g >= tau)
    "gated": RetentionSpec(evicts=True, summarises=True, needs_gate=True,
                           policy=f"{_MODULE}.retention_gated:GatedRetention"),
    # DynamicCache inside the same class: never evicts
    "full": RetentionSpec(evicts=False, summarises=False, policy=f"{_MODULE}.retention:FullRetention"),
    # sinks + window, chunks dropped (StreamingLLM, arXiv 2309.17453)
    "streaming": RetentionSpec(evicts=True, summarises=False, policy=f"{_MODULE}.retention:StreamingRetention"),
    # mean summaries, no gate: all kept, or the most recent M
    "mean": RetentionSpec(evicts=True, summarises=True, policy=f"{_MODULE}.retention:MeanRetention"),
    # mean summaries, a seeded random one evicted over M
    "random": RetentionSpec(evicts=True, summarises=True, needs_budget=True, random=True,
                            policy=f"{_MODULE}.retention:RandomRetention"),
    # mean summaries, the least attended one evicted over M (H2O-like, arXiv 2306.14048)
    "h2o": RetentionSpec(evicts=True, summarises=True, needs_budget=True, needs_attention=True,
                         policy=f"{_MODULE}.retention_h2o:H2ORetention"),
})


def retention_spec(name: str) -> RetentionSpec:
    """The table's entry for ``name`` (a ``ValueError`` naming the retentions for an unknown one)."""
    try:
        return RETENTION_TABLE[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown retention {name!r}; one of {tuple(RETENTION_TABLE)}") from None
