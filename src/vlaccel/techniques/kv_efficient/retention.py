"""Retention policies of the chunked cache: what happens to a chunk once it leaves the recent window.

The cache and a policy meet at a narrow interface. The cache hands the policy read-only snapshots
(:class:`LayerView` of a layer, :class:`ClosedChunks` of the chunks that just left the window) and applies
what the policy decides to its own storage; the policy keeps its bookkeeping (utilities, LSTM state, attention
received, generator) in its own per-layer :class:`RetentionState` and never writes the cache:

* ``begin(layer)``: the layer's first update of an episode, a fresh state; ``reset(index)``: the episode is over;
* ``on_chunks_closed(chunks) -> keep [L, k'] | None``: which summaries (the k retained ones, then the n new
  ones) each layer keeps, ascending, or all; only for retentions that summarise (the table's ``summarises``);
* ``on_update(layer, q)`` after every update and ``observe(layer, probs)`` with the attention probabilities:
  only for retentions that read attention (``needs_attention``);
* ``summary_gate(index) -> [B, k] | None``: the gate output g of each retained summary (the soft cache turns
  it into ``log g`` attention logits while the gate is trained).

Every policy acts on whole chunks, once per chunk for K and V and all KV heads, and (to keep one attention
mask valid for all layers) keeps the same number of summaries in every layer. Utilities are batch means, so a
batch shares one layout. Which retention does what is stated once, in :mod:`.retentions`; the policies here
are full, streaming (sinks + window; arXiv 2309.17453), mean (summaries without a gate; a budget keeps the
most recent) and random (seeded, equal budget); the method's gated policy (arXiv 2509.21354) is in
:mod:`.retention_gated`, the H2O-like one (arXiv 2306.14048) in :mod:`.retention_h2o`.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, ClassVar

import torch

from vlaccel.errors import VlaccelError
from vlaccel.techniques.kv_efficient.retentions import RetentionSpec, retention_spec

__all__ = ["AttentionNotObservedError", "ClosedChunks", "LayerView", "Retention", "RetentionState",
           "make_retention", "top_budget"]


class AttentionNotObservedError(VlaccelError, RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class LayerView:
    """What a policy may read of one cache layer, as of the call (a snapshot: writing it is impossible)."""

    index: int  # decoder layer
    batch: int  # B
    device: torch.device
    n_protected: int  # P: the first slots, never evicted
    n_summaries: int  # k: retained summaries, ``summary_slots`` slots each
    raw: int  # raw slots after the summaries (raw tail + recent window)


@dataclasses.dataclass(frozen=True)
class ClosedChunks:
    """The ``n`` oldest raw chunks that just left the recent window, in every layer at once (all layers hold the
    same layout), summarised; ``layers`` are the layers before their new summaries are added."""

    layers: tuple[LayerView, ...]  # L
    first_id: int  # episode-wide id of the first of them (0 = the episode's first chunk)
    n: int
    keys: torch.Tensor  # [L, B, H, n, s, d] position-free (de-rotated) summary keys, float32
    values: torch.Tensor  # [L, B, H, n, s, dv] summary values, float32


@dataclasses.dataclass
class RetentionState:
    """One layer's bookkeeping of a policy for the current episode."""

    utility: torch.Tensor  # [k] batch-mean utility of each retained summary: the lowest is evicted first


def top_budget(utility: torch.Tensor, budget: int | None) -> torch.Tensor | None:
    """Per row of ``utility`` [L, k], the indices (ascending) of the ``budget`` highest values (ties: the older
    one), or None if all fit."""
    if budget is None or utility.shape[-1] <= budget:
        return None
    order = torch.sort(utility, dim=-1, descending=True, stable=True).indices[..., :budget]
    return torch.sort(order, dim=-1).values


class Retention:
    """Base policy: keep every summary, or the ``budget`` with the highest utility (recency unless a subclass
    scores otherwise). See the module docstring for the interface.

    Args:
        config: the ``KVEfficientConfig`` (read only: budget, threshold, seed, summary_slots).
        chunk: tokens per chunk (the cache's resolved size).
        gate: the trained ``KVGate`` (gated retention).
        soft: training relaxation: keep every summary (gated retention).
    """

    name: ClassVar[str] = "base"

    def __init__(self, config: Any, *, chunk: int, gate: Any = None, soft: bool = False):
        self.config = config
        self.chunk = chunk
        self.slots = config.summary_slots
        self.gate = gate
        self.soft = soft
        self.spec: RetentionSpec = retention_spec(self.name)  # this retention's row of the table
        self._states: dict[int, RetentionState] = {}

    # ------------------------------------------------------------------ per-layer state
    def new_state(self, layer: LayerView) -> RetentionState:
        return RetentionState(utility=torch.zeros(0, device=layer.device))

    def begin(self, layer: LayerView) -> None:
        """The layer's first update of an episode: a fresh state."""
        self._states[layer.index] = self.new_state(layer)

    def reset(self, index: int) -> None:
        """The episode is over in layer ``index``: forget its state."""
        self._states.pop(index, None)

    def state(self, index: int) -> RetentionState | None:
        """Layer ``index``'s state (for inspection), or None before its first update."""
        return self._states.get(index)

    def summary_gate(self, index: int) -> torch.Tensor | None:
        """[B, k] gate output of each retained summary, or None (no gate)."""
        return None

    # ------------------------------------------------------------------ decisions
    def on_chunks_closed(self, chunks: ClosedChunks) -> torch.Tensor | None:
        """Score the new summaries, decide which summaries each layer keeps, update the states to match."""
        states = [self._states[layer.index] for layer in chunks.layers]
        new = self.score(chunks, states)  # [L, n]
        utility = torch.cat([torch.stack([st.utility for st in states]), new], dim=1)  # [L, k+n]
        keep = self.select(utility)  # [L, k'] or None
        self.settle(chunks, states, keep)
        for i, st in enumerate(states):
            st.utility = utility[i] if keep is None else utility[i][keep[i]]
        return keep

    def score(self, chunks: ClosedChunks, states: list[RetentionState]) -> torch.Tensor:
        """[L, n] utility of the new summaries: recency (the chunk id)."""
        ids = torch.arange(chunks.first_id, chunks.first_id + chunks.n, device=chunks.keys.device,
                           dtype=torch.float32)  # [n]
        return ids.expand(len(chunks.layers), chunks.n)

    def select(self, utility: torch.Tensor) -> torch.Tensor | None:
        """utility [L, k+n] -> keep [L, k'] (ascending), or None = keep all."""
        return top_budget(utility, self.config.budget)

    def settle(self, chunks: ClosedChunks, states: list[RetentionState], keep: torch.Tensor | None) -> None:
        """Bookkeeping of a decision beyond the utilities (none here)."""

    # ------------------------------------------------------------------ attention (needs_attention)
    def on_update(self, layer: LayerView, q: int) -> None:
        """Layer ``layer`` appended ``q`` tokens (the view is taken after the append)."""

    def observe(self, layer: LayerView, probs: torch.Tensor) -> None:
        """Attention probabilities [B, H, q, N] of the layer's last forward."""


class FullRetention(Retention):
    """Never evicts: the cache grows like ``DynamicCache``."""

    name = "full"


class StreamingRetention(Retention):
    """Sinks + recent window: chunks leaving the window are dropped by the cache, nothing to decide."""

    name = "streaming"


class MeanRetention(Retention):
    """Mean-pooled summaries, no gate: all kept, or (with a budget) the most recent ``budget``."""

    name = "mean"


@dataclasses.dataclass
class RandomState(RetentionState):
    generator: torch.Generator  # seeded per layer at the episode's start


class RandomRetention(Retention):
    """Mean summaries; over the budget a uniformly random one goes (seeded per layer, reseeded every episode)."""

    name = "random"

    def new_state(self, layer: LayerView) -> RandomState:
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + layer.index)
        return RandomState(utility=torch.zeros(0, device=layer.device), generator=generator)

    def score(self, chunks: ClosedChunks, states: list[RetentionState]) -> torch.Tensor:
        draws = [torch.rand(chunks.n, generator=st.generator) for st in states]
        return torch.stack(draws).to(chunks.keys.device)  # [L, n]


def make_retention(config: Any, *, chunk: int, gate: Any = None, soft: bool = False) -> Retention:
    """The policy the table names for ``config.retention``."""
    module, _, cls = retention_spec(config.retention).policy.partition(":")
    return getattr(importlib.import_module(module), cls)(config, chunk=chunk, gate=gate, soft=soft)
