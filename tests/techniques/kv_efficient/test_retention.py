"""Retention policies keep what they claim to keep: top-M by gate utility, model-wide threshold, most recent
(mean), seeded random, most attended (H2O-like), nothing (streaming)."""

from __future__ import annotations

import pytest
import torch

import vlaccel
from tests.techniques.kv_efficient.helpers import lm_history, obs_embeds, tiny_gate
from vlaccel.techniques.kv_efficient import ChunkedGatedCache, KVEfficientConfig
from vlaccel.techniques.kv_efficient.retention import AttentionNotObservedError, GatedRetention
from vlaccel.transformers_compat import cache_kwargs, forward_cache

ATTN_MASS_ATOL = 1e-3  # float32 sums of ~10^3 attention probabilities


@pytest.fixture
def record_g(monkeypatch):
    """Record every gate output: {layer_idx: [g of chunk 0, chunk 1, ...]} (batch-mean)."""
    seen: dict[int, list[float]] = {}
    inner = GatedRetention.score_new

    def score_new(self, cache, keys, values, n):
        u = inner(self, cache, keys, values, n)  # [L, n]
        for i, row in enumerate(u.tolist()):
            seen.setdefault(i, []).extend(row)
        return u

    monkeypatch.setattr(GatedRetention, "score_new", score_new)
    return seen


def test_gated_budget_keeps_top_m_utilities_per_layer(tiny_policy, record_g):
    q, budget = tiny_policy.config.tokens_per_frame, 3
    cfg = KVEfficientConfig(window=q, budget=budget, gate=tiny_gate(tiny_policy, steps=15))
    record_g.clear()  # only this episode's decisions
    with vlaccel.applied(tiny_policy, cfg):
        lm_history(tiny_policy, obs_embeds(tiny_policy, 12))
        cache = tiny_policy.cache
        for i, layer in enumerate(cache.layers):
            g = torch.tensor(record_g[i])
            assert len(g) == layer.n_chunks == 11
            expected = torch.sort(torch.sort(g, descending=True, stable=True).indices[:budget]).values
            assert layer.chunk_ids.tolist() == expected.tolist()
            torch.testing.assert_close(layer.utility, g[expected])


def test_threshold_is_one_model_wide_decision_per_chunk(tiny_policy, record_g):
    q = tiny_policy.config.tokens_per_frame
    cfg = KVEfficientConfig(window=q, threshold=0.5, gate=tiny_gate(tiny_policy, steps=15))
    record_g.clear()
    with vlaccel.applied(tiny_policy, cfg):
        lm_history(tiny_policy, obs_embeds(tiny_policy, 12))
        cache = tiny_policy.cache
    g = torch.tensor([record_g[i] for i in range(len(cache.layers))])  # [L, chunks]
    keep = (g.mean(0) >= 0.5).nonzero().flatten().tolist()
    for layer in cache.layers:
        assert layer.chunk_ids.tolist() == keep
    assert len(set(cache.stored_tokens())) == 1


def test_mean_with_budget_keeps_the_most_recent(tiny_policy):
    q = tiny_policy.config.tokens_per_frame
    with vlaccel.applied(tiny_policy, KVEfficientConfig(window=q, budget=3, retention="mean")):
        lm_history(tiny_policy, obs_embeds(tiny_policy, 10))
        assert all(layer.chunk_ids.tolist() == [6, 7, 8] for layer in tiny_policy.cache.layers)


def test_mean_without_budget_keeps_every_summary(tiny_policy):
    q = tiny_policy.config.tokens_per_frame
    with vlaccel.applied(tiny_policy, KVEfficientConfig(window=q, retention="mean")):
        lm_history(tiny_policy, obs_embeds(tiny_policy, 6))
        assert tiny_policy.cache.retained_chunks() == [0, 1, 2, 3, 4]


def test_random_is_seeded_and_reseeded_per_episode(tiny_policy):
    q = tiny_policy.config.tokens_per_frame
    blocks = obs_embeds(tiny_policy, 14)

    def kept(seed):
        with vlaccel.applied(tiny_policy, KVEfficientConfig(window=q, budget=3, retention="random", seed=seed)):
            lm_history(tiny_policy, blocks)
            first = [layer.chunk_ids.tolist() for layer in tiny_policy.cache.layers]
            lm_history(tiny_policy, blocks)  # a second episode draws the same sequence again
            assert [layer.chunk_ids.tolist() for layer in tiny_policy.cache.layers] == first
            return first

    a, b = kept(0), kept(1)
    assert a == kept(0)
    assert a != b
    assert a != [[10, 11, 12]] * len(a)  # not simply the most recent


def test_streaming_drops_history(tiny_policy):
    q = tiny_policy.config.tokens_per_frame
    with vlaccel.applied(tiny_policy, KVEfficientConfig(window=q, sinks=3, retention="streaming")):
        lm_history(tiny_policy, obs_embeds(tiny_policy, 6))
        cache = tiny_policy.cache
        prefix = tiny_policy.instruction_ids("push the puck to the goal").shape[1]
        assert cache.retained_chunks() == [] and cache.layers[0].n_protected == prefix + 3
        assert cache.stored_tokens()[0] < prefix + 3 + 2 * q


def test_h2o_accumulates_exactly_the_attention_received(tiny_policy):
    """With no eviction (budget never reached) every bit of attention paid to an evictable slot is on the books."""
    q = tiny_policy.config.tokens_per_frame
    got = {"mass": 0.0}

    def hook(module, args, kwargs, output):
        cache = forward_cache(kwargs)
        p = cache.layers[module.layer_idx].n_protected
        got["mass"] += float(output[1][..., p:].sum())

    with vlaccel.applied(tiny_policy, KVEfficientConfig(window=q, budget=100, retention="h2o")):
        handles = [layer.self_attn.register_forward_hook(hook, with_kwargs=True)
                   for layer in tiny_policy.language_model.layers]
        lm_history(tiny_policy, obs_embeds(tiny_policy, 7))
        for h in handles:
            h.remove()
        cache = tiny_policy.cache
        books = sum(float(layer.utility.sum() + layer.raw_score.sum()) for layer in cache.layers)
        assert cache.layers[0].n_summaries == 6
    assert books == pytest.approx(got["mass"], abs=ATTN_MASS_ATOL)


def test_h2o_evicts_the_least_attended(tiny_policy):
    q = tiny_policy.config.tokens_per_frame
    with vlaccel.applied(tiny_policy, KVEfficientConfig(window=q, budget=2, retention="h2o")):
        lm_history(tiny_policy, obs_embeds(tiny_policy, 9))
        for layer in tiny_policy.cache.layers:
            assert layer.n_summaries == 2 and layer.utility.min() > 0


def test_h2o_without_attention_raises_clearly():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1)).eval()
    cache = ChunkedGatedCache.for_model(model, KVEfficientConfig(window=4, chunk=2, budget=1, retention="h2o"))
    with pytest.raises(AttentionNotObservedError, match="observe_attention"):
        model.generate(torch.ones(1, 5, dtype=torch.long), **cache_kwargs(model, cache), max_new_tokens=12,
                       min_new_tokens=12, do_sample=False)
