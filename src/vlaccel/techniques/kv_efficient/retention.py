"""Retention policies of the chunked cache: what happens to a chunk once it leaves the recent window.

Every policy acts on whole chunks, once per chunk for K and V and all KV heads, and (to keep one attention
mask valid for all layers) keeps the same number of summaries in every layer. Utilities are batch means, so a
batch shares one layout. The cache calls a policy for all layers at once:

* ``score_new(cache, keys, values, n) -> [L, n]``: utility of the n new chunk summaries in each layer
  (keys/values: position-free summaries ``[L, B, H, n, s, d]``);
* ``select(cache, utility[L, k+n]) -> keep[L, k'] | None``: which summaries each layer keeps (ascending), or all;
* ``after_select`` / ``after_drop`` and, for attention-based policies, per-layer ``before_update`` / ``observe``.

Policies: gated (the method: trained MLP aggregator + LSTM gate), full, streaming (sinks + window;
arXiv 2309.17453), mean (summaries without a gate; a budget keeps the most recent), random (seeded, equal
budget), h2o (accumulated attention received, H2O arXiv 2306.14048, per chunk/summary instead of per token).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from vlaccel.errors import VlaccelError
from vlaccel.techniques.kv_efficient.gate import summary_features

if TYPE_CHECKING:
    from vlaccel.techniques.kv_efficient.cache import ChunkedGatedCache, ChunkedGatedLayer

__all__ = ["AttentionNotObservedError", "Retention", "make_retention", "top_budget"]


class AttentionNotObservedError(VlaccelError, RuntimeError):
    pass


def top_budget(utility: torch.Tensor, budget: int | None) -> torch.Tensor | None:
    """Per row of ``utility`` [L, k], the indices (ascending) of the ``budget`` highest values (ties: the older
    one), or None if all fit."""
    if budget is None or utility.shape[-1] <= budget:
        return None
    order = torch.sort(utility, dim=-1, descending=True, stable=True).indices[..., :budget]
    return torch.sort(order, dim=-1).values


class Retention:
    """Base policy: mean summaries, keep all (or the most recent ``budget``). Subclasses override what differs."""

    name = "base"
    evicts = True  # False: the cache is a plain growing cache
    summarises = True  # False: chunks leaving the window are dropped without a summary
    needs_attention = False  # True: the cache must be told the attention probabilities (observe)

    def __init__(self, cache: ChunkedGatedCache):
        self.cache = cache
        self.config = cache.config

    def score_new(self, cache: ChunkedGatedCache, keys: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
        top = cache.layers[0]
        ids = torch.arange(top.n_chunks - n, top.n_chunks, device=keys.device, dtype=torch.float32)
        return ids.expand(len(cache.layers), n)  # recency

    def select(self, cache: ChunkedGatedCache, utility: torch.Tensor) -> torch.Tensor | None:
        return top_budget(utility, self.config.budget)

    def after_select(self, cache: ChunkedGatedCache, keep: torch.Tensor | None, n: int) -> None:
        pass

    def after_drop(self, cache: ChunkedGatedCache, n: int) -> None:
        pass

    # attention-based policies
    def before_update(self, layer: ChunkedGatedLayer, q: int) -> None:
        pass

    def observe(self, layer: ChunkedGatedLayer, probs: torch.Tensor) -> None:
        pass


class FullRetention(Retention):
    name = "full"
    evicts = False


class StreamingRetention(Retention):
    name = "streaming"
    summarises = False


class MeanRetention(Retention):
    """Mean-pooled summaries, no gate: all kept, or (with a budget) the most recent ``budget``."""

    name = "mean"


class RandomRetention(Retention):
    """Mean summaries; over the budget a uniformly random one goes (seeded per layer, reseeded every episode)."""

    name = "random"

    def score_new(self, cache: ChunkedGatedCache, keys: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
        out = []
        for layer in cache.layers:
            if layer.generator is None:
                layer.generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + layer.layer_idx)
            out.append(torch.rand(n, generator=layer.generator))
        return torch.stack(out).to(keys.device)


class GatedRetention(Retention):
    """The method: utility g from the LSTM gate; budget keeps the top M per layer, threshold keeps a chunk in
    every layer iff the layer- and batch-mean g >= tau. ``soft`` caches (training) keep every summary;
    ``ChunkedGatedLayer.slot_bias`` turns g into log g logits."""

    name = "gated"

    def score_new(self, cache: ChunkedGatedCache, keys: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
        layers, b = cache.layers, keys.shape[1]
        feats = summary_features(keys.flatten(0, 1), values.flatten(0, 1))  # [L*B, n, H*2d]
        state = None
        if layers[0].lstm_state is not None:  # every layer's (h, c) as one batch of L*B
            state = tuple(torch.cat([layer.lstm_state[j] for layer in layers]) for j in (0, 1))
        g = []
        for m in range(n):  # sequential over the chunks completed in this forward (usually one)
            g_m, state = cache.gate.lstm(feats[:, m], state)
            g.append(g_m)
        for i, layer in enumerate(layers):
            layer.lstm_state = (state[0][i * b:(i + 1) * b], state[1][i * b:(i + 1) * b])
        self._g_new = torch.stack(g, dim=1).view(len(layers), b, n)  # [L, B, n]
        return self._g_new.detach().mean(1)

    def select(self, cache: ChunkedGatedCache, utility: torch.Tensor) -> torch.Tensor | None:
        if cache.soft:
            return None
        if self.config.threshold is None:
            return top_budget(utility, self.config.budget)
        n = self._g_new.shape[-1]
        k = utility.shape[1] - n
        keep_new = self._g_new.detach().mean(dim=(0, 1)) >= self.config.threshold  # [n]: one decision per chunk
        keep = torch.cat([torch.arange(k, device=utility.device), k + keep_new.nonzero().flatten()])
        return keep.expand(utility.shape[0], -1)

    def after_select(self, cache: ChunkedGatedCache, keep: torch.Tensor | None, n: int) -> None:
        for i, layer in enumerate(cache.layers):
            g = torch.cat([layer.gate_g, self._g_new[i]], dim=1)  # [B, k+n]
            layer.gate_g = g if keep is None else g[:, keep[i]]
        del self._g_new


class H2ORetention(Retention):
    """H2O-like: keep the summaries that received the most attention (accumulated over the episode).

    A chunk's initial score is the attention its raw tokens received while in the window; afterwards its
    summary accumulates what its slots receive. Needs the attention probabilities: ``vlaccel.apply`` switches
    the LM to eager attention and feeds them through a forward hook (``cache.observe_attention``); used
    elsewhere without them, the first eviction raises :class:`AttentionNotObservedError`.
    """

    name = "h2o"
    needs_attention = True

    def before_update(self, layer: ChunkedGatedLayer, q: int) -> None:
        if layer._awaiting_attention:  # the previous forward's attention was never observed
            layer._missed_attention = True
        layer._awaiting_attention = True
        layer.attn_layout = None  # storage == the layout this update returns, until the cache compresses
        raw = layer.stored - layer.raw_start
        score = torch.cat([layer.raw_score, layer.raw_score.new_zeros(q)])
        layer.raw_score = score[score.numel() - raw:]

    def score_new(self, cache: ChunkedGatedCache, keys: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
        if any(layer._missed_attention for layer in cache.layers):
            raise AttentionNotObservedError(
                "retention='h2o' evicts by the attention each summary received, but this cache was not given the "
                "attention probabilities: apply KVEfficientConfig with vlaccel.apply (it switches the LM to eager "
                "attention and records them), or call cache.observe_attention(layer_idx, probs) after every "
                "attention; otherwise pick another retention ('gated', 'mean', 'random', 'streaming')"
            )
        c = cache.chunk
        scores = torch.stack([layer.raw_score[: n * c].view(n, c).sum(-1) for layer in cache.layers])  # [L, n]
        for layer in cache.layers:
            layer.raw_score = layer.raw_score[n * c:]
        return scores

    def after_select(self, cache: ChunkedGatedCache, keep: torch.Tensor | None, n: int) -> None:
        for i, layer in enumerate(cache.layers):
            if not layer._awaiting_attention:
                continue  # this forward's attention is already on the books
            k_old = layer.n_summaries  # before the cache commits the new summaries
            mapping = torch.arange(k_old + n, device=layer.device)
            if keep is not None:
                mapping = torch.full((k_old + n,), -1, dtype=torch.long, device=layer.device)
                mapping[keep[i]] = torch.arange(keep.shape[1], device=layer.device)
            layer.attn_layout = {"k_old": k_old, "n": n, "map": mapping}

    def observe(self, layer: ChunkedGatedLayer, probs: torch.Tensor) -> None:
        """probs [B, H, q, N_returned] over the layout the layer's last update returned."""
        s, p = self.cache.slots, layer.n_protected
        received = probs.detach().float().sum(dim=(0, 1, 2))  # [N_returned]
        lay: dict[str, Any] | None = layer.attn_layout
        if lay is None:  # storage still has the returned layout
            k = layer.n_summaries
            start = p + k * s
            layer.utility = layer.utility + received[p:start].view(k, s).sum(-1)
            layer.raw_score = layer.raw_score + received[start:]
        else:  # the cache compressed after returning: fold onto the new storage
            c, k_old = self.cache.chunk, lay["k_old"]
            start = p + k_old * s
            per = torch.cat([received[p:start].view(k_old, s).sum(-1),
                             received[start: start + lay["n"] * c].view(lay["n"], c).sum(-1)])  # [k_old + n]
            valid = lay["map"] >= 0
            layer.utility = layer.utility.index_add(0, lay["map"][valid], per[valid])
            layer.raw_score = layer.raw_score + received[start + lay["n"] * c:]
            layer.attn_layout = None
        layer._awaiting_attention = False


_POLICIES = {"full": FullRetention, "streaming": StreamingRetention, "mean": MeanRetention,
             "random": RandomRetention, "gated": GatedRetention, "h2o": H2ORetention}


def make_retention(config: Any, cache: ChunkedGatedCache) -> Retention:
    return _POLICIES[config.retention](cache)
