"""Retention policies keep what they claim to keep: top-M by gate utility, model-wide threshold, most recent
(mean), seeded random, most attended (H2O-like), nothing (streaming)."""

from __future__ import annotations

import pytest
import torch

import vlaccel
from tests.techniques.kv_efficient.helpers import lm_history, obs_embeds, tiny_gate
from vlaccel.techniques.kv_efficient import RETENTIONS, ChunkedGatedCache, KVEfficientConfig, KVGate
from vlaccel.techniques.kv_efficient.retention import AttentionNotObservedError
from vlaccel.techniques.kv_efficient.retention_gated import GatedRetention
from vlaccel.techniques.kv_efficient.retentions import RETENTION_TABLE
from vlaccel.transformers_compat import cache_kwargs, forward_cache

ATTN_MASS_ATOL = 1e-3  # float32 sums of ~10^3 attention probabilities


@pytest.fixture
def record_g(monkeypatch):
    """Record every gate output: {layer_idx: [g of chunk 0, chunk 1, ...]} (batch-mean)."""
    seen: dict[int, list[float]] = {}
    inner = GatedRetention.gate_scores

    def gate_scores(self, chunks, states):
        g = inner(self, chunks, states)  # [L, B, n]
        for i, row in enumerate(g.detach().mean(1).tolist()):
            seen.setdefault(i, []).extend(row)
        return g

    monkeypatch.setattr(GatedRetention, "gate_scores", gate_scores)
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
            torch.testing.assert_close(cache.retention.state(i).utility, g[expected])


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
        states = [cache.retention.state(i) for i in range(len(cache.layers))]
        books = sum(float(st.utility.sum() + st.raw_score.sum()) for st in states)
        assert cache.layers[0].n_summaries == 6
    assert books == pytest.approx(got["mass"], abs=ATTN_MASS_ATOL)


def test_h2o_evicts_the_least_attended(tiny_policy):
    q = tiny_policy.config.tokens_per_frame
    with vlaccel.applied(tiny_policy, KVEfficientConfig(window=q, budget=2, retention="h2o")):
        lm_history(tiny_policy, obs_embeds(tiny_policy, 9))
        cache = tiny_policy.cache
        for i, layer in enumerate(cache.layers):
            assert layer.n_summaries == 2 and cache.retention.state(i).utility.min() > 0


def test_h2o_without_attention_raises_clearly():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1)).eval()
    cache = ChunkedGatedCache.for_model(model, KVEfficientConfig(window=4, chunk=2, budget=1, retention="h2o"))
    with pytest.raises(AttentionNotObservedError, match="observe_attention"):
        model.generate(torch.ones(1, 5, dtype=torch.long), **cache_kwargs(model, cache), max_new_tokens=12,
                       min_new_tokens=12, do_sample=False)


@pytest.mark.parametrize("retention", list(RETENTION_TABLE))
def test_the_retention_table_drives_the_config_check_and_the_cache(retention):
    """One table: the config accepts budget / threshold / gate as the retention's row says, and the cache runs
    the policy the row names, which reports the same row."""
    spec = RETENTION_TABLE[retention]
    assert RETENTIONS == tuple(RETENTION_TABLE)
    base = {"window": 4, "chunk": 2, "retention": retention}
    accepts = {}
    for name, extra in {"budget": {"budget": 1}, "threshold": {"threshold": 0.5}, "neither": {},
                        "gate": {"budget": 1, "gate": "some/gate"}}.items():
        try:
            KVEfficientConfig(**base, **extra)
            accepts[name] = True
        except ValueError as err:
            assert retention in str(err) or "gated" in str(err), err
            accepts[name] = False
    assert accepts == {"budget": spec.summarises, "threshold": spec.needs_gate,
                       "neither": not (spec.needs_budget or spec.needs_gate),
                       "gate": spec.needs_gate}
    cfg = KVEfficientConfig(**base, **({"budget": 1} if spec.summarises else {}))
    assert cfg.retention_spec is spec and cfg.summarises == spec.summarises
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    rotary = LlamaRotaryEmbedding(LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2))
    cache = ChunkedGatedCache(cfg, 2, rotary=rotary, head_dim=8, gate=KVGate(8, 2, 1) if spec.needs_gate else None)
    assert cache.retention.name == retention and cache.retention.spec is spec
    assert (cfg.max_tokens(3, 2) is None) == (not spec.evicts or (spec.summarises and cfg.budget is None))
