"""H2O-like retention (H2O, arXiv 2306.14048, per chunk summary instead of per token): over the budget, the
summary that received the least attention, accumulated over the episode, is evicted.

A chunk's initial score is the attention its raw tokens received while in the window; afterwards its summary
accumulates what its slots receive. The policy needs the attention probabilities: ``vlaccel.apply`` switches
the LM to eager attention and feeds them through a forward hook (``cache.observe_attention``); used elsewhere
without them, the first eviction raises :class:`~.retention.AttentionNotObservedError`.

The cache compresses as soon as the last layer has been updated, before that layer's attention (and its hook)
has run, so the probabilities of the last layer cover a layout the storage no longer has: the policy remembers
how that layout maps onto the compressed one (:class:`Layout`) and folds them over.
"""

from __future__ import annotations

import dataclasses

import torch

from vlaccel.techniques.kv_efficient.retention import (
    AttentionNotObservedError,
    ClosedChunks,
    LayerView,
    Retention,
    RetentionState,
)

__all__ = ["H2ORetention", "H2OState", "Layout"]


@dataclasses.dataclass(frozen=True)
class Layout:
    """How the slots a layer's last update returned map onto its storage after a compression."""

    k_old: int  # summaries before the compression
    n: int  # chunks closed by it
    map: torch.Tensor  # [k_old + n] new index of each old and new summary, -1 = evicted


@dataclasses.dataclass
class H2OState(RetentionState):
    raw_score: torch.Tensor  # [raw] attention received by each raw token still raw
    layout: Layout | None = None  # set while storage differs from the layout the last update returned
    awaiting: bool = False  # an update whose attention was not observed yet
    missed: bool = False  # some forward's attention was never observed


class H2ORetention(Retention):
    """Keep the summaries that received the most attention (see the module docstring)."""

    name = "h2o"

    def new_state(self, layer: LayerView) -> H2OState:
        return H2OState(utility=torch.zeros(0, device=layer.device), raw_score=torch.zeros(0, device=layer.device))

    def on_update(self, layer: LayerView, q: int) -> None:
        st = self._states[layer.index]
        if st.awaiting:  # the previous forward's attention was never observed
            st.missed = True
        st.awaiting = True
        st.layout = None  # storage == the layout this update returns, until the cache compresses
        score = torch.cat([st.raw_score, st.raw_score.new_zeros(q)])  # [raw_before + q]
        st.raw_score = score[score.numel() - layer.raw:]  # [raw]

    def score(self, chunks: ClosedChunks, states: list[H2OState]) -> torch.Tensor:
        """[L, n]: the attention each closed chunk's raw tokens received."""
        if any(st.missed for st in states):
            raise AttentionNotObservedError(
                "retention='h2o' evicts by the attention each summary received, but this cache was not given the "
                "attention probabilities: apply KVEfficientConfig with vlaccel.apply (it switches the LM to eager "
                "attention and records them), or call cache.observe_attention(layer_idx, probs) after every "
                "attention; otherwise pick another retention ('gated', 'mean', 'random', 'streaming')"
            )
        n, c = chunks.n, self.chunk
        scores = torch.stack([st.raw_score[: n * c].view(n, c).sum(-1) for st in states])  # [L, n]
        for st in states:
            st.raw_score = st.raw_score[n * c:]
        return scores

    def settle(self, chunks: ClosedChunks, states: list[H2OState], keep: torch.Tensor | None) -> None:
        """Remember where the summaries of the layout the last update returned went."""
        for i, (layer, st) in enumerate(zip(chunks.layers, states)):
            if not st.awaiting:
                continue  # this forward's attention is already on the books
            k_old, n = layer.n_summaries, chunks.n
            mapping = torch.arange(k_old + n, device=layer.device)
            if keep is not None:
                mapping = torch.full((k_old + n,), -1, dtype=torch.long, device=layer.device)
                mapping[keep[i]] = torch.arange(keep.shape[1], device=layer.device)
            st.layout = Layout(k_old, n, mapping)

    def observe(self, layer: LayerView, probs: torch.Tensor) -> None:
        """probs [B, H, q, N_returned] over the layout the layer's last update returned."""
        st = self._states[layer.index]
        s, p = self.slots, layer.n_protected
        received = probs.detach().float().sum(dim=(0, 1, 2))  # [N_returned]
        lay = st.layout
        if lay is None:  # storage still has the returned layout
            k = layer.n_summaries
            start = p + k * s
            st.utility = st.utility + received[p:start].view(k, s).sum(-1)  # [k]
            st.raw_score = st.raw_score + received[start:]  # [raw]
        else:  # the cache compressed after returning: fold onto the new storage
            start = p + lay.k_old * s
            per = torch.cat([received[p:start].view(lay.k_old, s).sum(-1),
                             received[start: start + lay.n * self.chunk].view(lay.n, self.chunk).sum(-1)])  # [k_old+n]
            valid = lay.map >= 0
            st.utility = st.utility.index_add(0, lay.map[valid], per[valid])
            st.raw_score = st.raw_score + received[start + lay.n * self.chunk:]
            st.layout = None
        st.awaiting = False
