"""Retention policies of the chunked cache: what happens to a chunk once it leaves the recent window.

Every policy acts on whole chunks, once per chunk for K and V and all KV heads, and (to keep one attention
mask valid for all layers) keeps the same number of summaries in every layer. Utilities are batch means, so a
batch shares one layout. A policy answers:

* ``score_new(layer, keys, values, n) -> [n]``: utility of the n new chunk summaries;
* ``select(layer, utility[k+n]) -> keep | None``: which summaries stay (ascending indices) or all;
* hooks for per-policy bookkeeping (gate state, attention accumulators, the threshold decision).

Policies: gated (the method, trained MLP aggregator + LSTM gate), full, streaming (sinks + window;
arXiv 2309.17453), mean (summaries without a gate; budget keeps the most recent), random (seeded, equal
budget), h2o (accumulated attention received, H2O arXiv 2306.14048, per chunk/summary instead of per token).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from vlaccel.techniques.kv_efficient.gate import summary_features

if TYPE_CHECKING:
    from vlaccel.techniques.kv_efficient.cache import ChunkedGatedCache, ChunkedGatedLayer

__all__ = ["Retention", "make_retention", "top_budget", "AttentionNotObservedError"]


class AttentionNotObservedError(RuntimeError):
    pass


def top_budget(utility: torch.Tensor, budget: int | None) -> torch.Tensor | None:
    """Indices (ascending) of the ``budget`` highest utilities (ties: the older one), or None if all fit."""
    if budget is None or utility.numel() <= budget:
        return None
    order = torch.sort(utility, descending=True, stable=True).indices[:budget]
    return torch.sort(order).values


class Retention:
    """Base policy: mean summaries, keep all. Subclasses override what differs."""

    name = "base"
    evicts = True  # False: the cache is a plain growing cache
    summarises = True  # False: chunks leaving the window are dropped without a summary
    needs_attention = False  # True: the cache must be told the attention probabilities (observe)

    def __init__(self, cache: ChunkedGatedCache):
        self.cache = cache
        self.config = cache.config

    def score_new(self, layer: ChunkedGatedLayer, keys: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
        return layer.chunk_ids.new_tensor(range(layer.n_chunks - n, layer.n_chunks)).float()  # recency

    def select(self, layer: ChunkedGatedLayer, utility: torch.Tensor) -> torch.Tensor | None:
        return top_budget(utility, self.config.budget)

    def after_select(self, layer: ChunkedGatedLayer, keep: torch.Tensor | None, n: int) -> None:
        pass

    def after_drop(self, layer: ChunkedGatedLayer, n: int) -> None:
        pass

    def end_of_forward(self, cache: ChunkedGatedCache) -> None:
        pass

    # attention-based policies
    def before_update(self, layer: ChunkedGatedLayer, q: int) -> None:
        pass

    def no_compression(self, layer: ChunkedGatedLayer) -> None:
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

    def score_new(self, layer: ChunkedGatedLayer, keys: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
        if layer.generator is None:
            layer.generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + layer.layer_idx)
        return torch.rand(n, generator=layer.generator).to(layer.device)


class GatedRetention(Retention):
    """The method: utility g from the LSTM gate; budget keeps the top M per layer, threshold keeps g >= tau.

    ``soft`` caches (training) keep every summary; ``ChunkedGatedLayer.slot_bias`` turns g into log g logits.
    """

    name = "gated"

    def score_new(self, layer: ChunkedGatedLayer, keys: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
        gate = self.cache.gate
        feats = summary_features(keys, values)  # [B, n, H*2d]
        g, state = [], layer.lstm_state
        for m in range(n):  # sequential over the chunks completed in this update (usually one)
            g_m, state = gate.lstm(feats[:, m], state)
            g.append(g_m)
        layer.lstm_state = state
        layer._g_new = torch.stack(g, dim=1)  # [B, n]
        return layer._g_new.detach().mean(0)

    def select(self, layer: ChunkedGatedLayer, utility: torch.Tensor) -> torch.Tensor | None:
        if self.cache.soft or self.config.threshold is not None:
            return None  # soft: keep all; threshold: decided model-wide at the end of the forward
        return top_budget(utility, self.config.budget)

    def after_select(self, layer: ChunkedGatedLayer, keep: torch.Tensor | None, n: int) -> None:
        g = torch.cat([layer.gate_g, layer._g_new], dim=1)  # [B, k+n]
        layer.gate_g = g if keep is None else g[:, keep]
        del layer._g_new
        if self.config.threshold is not None and not self.cache.soft:
            layer.pending += n

    def end_of_forward(self, cache: ChunkedGatedCache) -> None:
        n = cache.layers[0].pending
        if not n:
            return
        g = torch.stack([layer.gate_g[:, -n:] for layer in cache.layers])  # [L, B, n]
        keep_new = g.mean(dim=(0, 1)) >= self.config.threshold  # [n]: one decision per chunk, model-wide
        for layer in cache.layers:
            k = layer.n_summaries
            keep = torch.cat([torch.arange(k - n, device=g.device), k - n + keep_new.nonzero().flatten()])
            layer.keep_summaries(keep)
            layer.pending = 0


class H2ORetention(Retention):
    """H2O-like: keep the summaries that received the most attention (accumulated over the episode).

    A chunk's initial score is the attention its raw tokens received while in the window; afterwards its
    summary accumulates what its slots receive. Needs the attention probabilities: ``vlaccel.apply`` switches
    the LM to eager attention and feeds them through a forward hook (``cache.observe_attention``); used
    elsewhere without them, the second update raises :class:`AttentionNotObservedError`.
    """

    name = "h2o"
    needs_attention = True

    def before_update(self, layer: ChunkedGatedLayer, q: int) -> None:
        if layer._awaiting_attention:  # the previous forward's attention was never observed
            layer._missed_attention = True
        layer._awaiting_attention = True
        raw = layer.stored - layer.raw_start
        score = torch.cat([layer.raw_score, layer.raw_score.new_zeros(q)])
        layer.raw_score = score[score.numel() - raw:]

    def no_compression(self, layer: ChunkedGatedLayer) -> None:
        k = layer.n_summaries
        layer.attn_layout = {"k_old": k, "n": 0, "map": torch.arange(k, device=layer.device)}

    def score_new(self, layer: ChunkedGatedLayer, keys: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
        if layer._missed_attention:
            raise AttentionNotObservedError(
                "retention='h2o' evicts by the attention each summary received, but this cache was not given the "
                "attention probabilities: apply KVEfficientConfig with vlaccel.apply (it switches the LM to eager "
                "attention and records them), or call cache.observe_attention(layer_idx, probs) after every "
                "attention; otherwise pick another retention ('gated', 'mean', 'random', 'streaming')"
            )
        c = self.cache.chunk
        scores = layer.raw_score[: n * c].view(n, c).sum(-1)
        layer.raw_score = layer.raw_score[n * c:]
        return scores

    def after_select(self, layer: ChunkedGatedLayer, keep: torch.Tensor | None, n: int) -> None:
        k_old = layer.n_summaries  # before the cache commits the new summaries
        total = k_old + n
        mapping = torch.arange(total, device=layer.device)
        if keep is not None:
            mapping = torch.full((total,), -1, dtype=torch.long, device=layer.device)
            mapping[keep] = torch.arange(keep.numel(), device=layer.device)
        layer.attn_layout = {"k_old": k_old, "n": n, "map": mapping}

    def observe(self, layer: ChunkedGatedLayer, probs: torch.Tensor) -> None:
        """probs [B, H, q, N_returned] over the layout the last update returned (before its compression)."""
        lay: dict[str, Any] = layer.attn_layout
        s, c, p = self.cache.slots, self.cache.chunk, layer.n_protected
        received = probs.detach().float().sum(dim=(0, 1, 2))  # [N_returned]
        start = p + lay["k_old"] * s
        per = torch.cat([received[p:start].view(lay["k_old"], s).sum(-1),
                         received[start: start + lay["n"] * c].view(lay["n"], c).sum(-1)])  # [k_old + n]
        valid = lay["map"] >= 0
        layer.utility = layer.utility.index_add(0, lay["map"][valid], per[valid])
        layer.raw_score = layer.raw_score + received[start + lay["n"] * c:]
        layer._awaiting_attention = False


_POLICIES = {"full": FullRetention, "streaming": StreamingRetention, "mean": MeanRetention,
             "random": RandomRetention, "gated": GatedRetention, "h2o": H2ORetention}


def make_retention(config: Any, cache: ChunkedGatedCache) -> Retention:
    return _POLICIES[config.retention](cache)
