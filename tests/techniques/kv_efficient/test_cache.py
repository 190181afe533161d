"""ChunkedGatedCache: exactness when nothing is evicted, hard memory cap, K/V consistency, logical positions,
episode reset and RoPE-correct summaries."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

import vlaccel
from vlaccel.adapters import get_adapter
from tests.techniques.kv_efficient.helpers import lm_history, obs_embeds, random_frames, tiny_gate
from vlaccel.techniques.kv_efficient import ChunkedGatedCache, KVEfficientConfig, KVGate
from vlaccel.transformers_compat import cache_kwargs

ROPE_ATOL = 1e-5  # de-rotate -> average -> re-rotate in float32 vs the model's own rotary at that position
INSTR = "push the puck to the goal"


def _tiny_lm(cls=LlamaForCausalLM, cfg_cls=LlamaConfig, **extra):
    torch.manual_seed(0)
    cfg = cfg_cls(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=1024, **extra)
    return cls(cfg).eval()


def _history(policy, frames):
    policy.reset(INSTR)
    acts = [policy.step(f, np.zeros(4, np.float32)) for f in frames]
    return np.stack(acts), policy.last_cognition


# ---------------------------------------------------------------- exact when nothing is evicted
@pytest.mark.parametrize("retention", ["gated", "mean", "h2o", "streaming"])
def test_window_covering_history_is_bit_identical_reference(tiny_policy, retention):
    frames = random_frames(tiny_policy.config.image_size, 5)
    if retention == "h2o":  # H2O reads attention probabilities: it runs the LM with eager attention, also here
        tiny_policy.language_model.set_attn_implementation("eager")
    base_actions, base_cog = _history(tiny_policy, frames)
    kw = {"gated": {"budget": 1, "gate": tiny_gate(tiny_policy)}, "mean": {"budget": 1}, "h2o": {"budget": 1},
          "streaming": {}}[retention]
    cfg = KVEfficientConfig(window=tiny_policy.language_model.config.max_position_embeddings, retention=retention, **kw)
    assert cfg.is_neutral(tiny_policy, get_adapter(tiny_policy))
    with vlaccel.applied(tiny_policy, cfg):
        actions, cog = _history(tiny_policy, frames)
        assert isinstance(tiny_policy.cache, ChunkedGatedCache)
    np.testing.assert_array_equal(actions, base_actions)
    assert torch.equal(cog, base_cog)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("retention", ["gated", "mean"])
def test_window_covering_history_is_bit_identical_generate(family, retention):
    model = _tiny_lm() if family == "llama" else _tiny_lm(Qwen2ForCausalLM, Qwen2Config)
    ids = torch.randint(3, 128, (1, 12), generator=torch.Generator().manual_seed(1))
    kwargs = {"max_new_tokens": 40, "min_new_tokens": 40, "do_sample": False}
    ref = model.generate(ids, **kwargs)
    extra = {"budget": 1}
    gate = KVGate(16, 2, 1) if retention == "gated" else None  # head_dim 16, 2 KV heads (untrained is fine here)
    cache = ChunkedGatedCache.for_model(model, KVEfficientConfig(window=1024, chunk=4, retention=retention, **extra),
                                        gate=gate)
    out = model.generate(ids, **cache_kwargs(model, cache), **kwargs)
    assert torch.equal(out, ref)
    assert cache.get_seq_length() == out.shape[1] - 1


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_generate_with_eviction_keeps_cap_and_positions(family):
    model = _tiny_lm() if family == "llama" else _tiny_lm(Qwen2ForCausalLM, Qwen2Config)
    ids = torch.randint(3, 128, (1, 10), generator=torch.Generator().manual_seed(2))
    cfg = KVEfficientConfig(window=8, chunk=4, retention="mean", budget=2)
    cache = ChunkedGatedCache.for_model(model, cfg)
    out = model.generate(ids, **cache_kwargs(model, cache), max_new_tokens=60, min_new_tokens=60, do_sample=False)
    assert out.shape[1] == 70
    assert cache.get_seq_length() == 69
    assert all(n <= 10 + 2 * 1 + 4 + 8 for n in cache.stored_tokens())
    assert len(set(cache.stored_tokens())) == 1


# ---------------------------------------------------------------- hard cap
@pytest.mark.parametrize("retention,steps", [("gated", 500), ("mean", 60), ("random", 60), ("h2o", 60),
                                             ("streaming", 60)])
def test_budget_is_a_hard_cap_at_every_step(tiny_policy, retention, steps):
    q = tiny_policy.config.tokens_per_frame
    window, budget, slots = q + 3, 2, 2
    kw = {"budget": budget} if retention != "streaming" else {}
    if retention == "gated":
        kw["gate"] = _gate_with_slots(tiny_policy, slots)
    cfg = KVEfficientConfig(window=window, summary_slots=slots, retention=retention, **kw)
    prefix = tiny_policy.instruction_ids(INSTR).shape[1]
    cap_tokens = cfg.max_tokens(prefix, q)
    assert cap_tokens == prefix + (budget * slots if retention != "streaming" else 0) + q + window
    shape = tiny_policy.language_model.config
    bytes_per_token = 2 * shape.num_key_value_heads * (shape.hidden_size // shape.num_attention_heads) * 4
    seen = []

    def check(t, cache):
        stored = cache.stored_tokens()
        held = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)  # bytes actually held
        assert len(set(stored)) == 1 and stored[0] <= cap_tokens, (t, stored)
        assert held <= len(cache.layers) * cap_tokens * bytes_per_token
        assert cache.get_seq_length() == prefix + (t + 1) * q
        seen.append(stored[0])

    with vlaccel.applied(tiny_policy, cfg):
        lm_history(tiny_policy, obs_embeds(tiny_policy, steps), INSTR, on_step=check)
    assert max(seen) > prefix + window  # something was summarised, not just a short episode


_SLOT_GATES: dict[int, str] = {}


def _gate_with_slots(policy, slots):
    from vlaccel.training.kv_gate import GateTrainConfig, synthetic_episodes, train_and_save

    if slots not in _SLOT_GATES:
        import tempfile

        out = tempfile.mkdtemp(prefix="vlaccel-kv-gate-slots-")
        cfg = GateTrainConfig(window=policy.config.tokens_per_frame, budget=1, summary_slots=slots, max_frames=4,
                              steps=2, agg_hidden=8, lstm_hidden=8)
        train_and_save(policy, synthetic_episodes(policy.config, 1, 4), cfg, out, progress=False)
        _SLOT_GATES[slots] = out
    return _SLOT_GATES[slots]


# ---------------------------------------------------------------- K/V consistency
def test_same_chunks_kept_for_keys_and_values_every_head():
    """Plant each chunk's id in its values (per head) and a chunk-specific key; after random eviction every
    retained slot's value and de-rotated key must name the same chunk, in every head and layer."""
    c, p, heads, d = 4, 3, 2, 8
    lm_cfg = LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=heads, max_position_embeddings=512)
    rotary = LlamaRotaryEmbedding(lm_cfg)
    cfg = KVEfficientConfig(window=4, chunk=c, budget=3, retention="random", seed=5)
    cache = ChunkedGatedCache(cfg, 2, rotary=rotary, head_dim=d)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, heads, d, generator=g)  # pre-RoPE key of chunk j (per head)
    head_scale = torch.arange(1, heads + 1, dtype=torch.float32).view(1, heads, 1, 1)

    def block(pos):  # keys/values [1, H, len(pos), d] for logical positions pos (raw index = pos - p)
        pos = torch.as_tensor(pos)
        chunk = torch.clamp(pos - p, min=0) // c
        k = base[chunk].permute(1, 0, 2).unsqueeze(0)  # [1, H, T, d]
        cos, sin = rotary(k, pos.unsqueeze(0))
        k = apply_rotary_pos_emb(k, k, cos, sin)[0]
        v = (chunk.float() + 1).view(1, 1, -1, 1).expand(1, heads, -1, d) * head_scale
        return k, v.contiguous()

    for layer in range(2):
        cache.update(*block(range(p)), layer)
    pos = p
    for size in [1, 2, 3, 1, 5, 2, 4, 1, 1, 6, 3, 2, 7, 1, 4, 2, 3, 1]:
        for layer in range(2):
            cache.update(*block(range(pos, pos + size)), layer)
        pos += size
    assert cache.get_seq_length() == pos
    for layer in cache.layers:
        ids = layer.chunk_ids
        assert layer.n_summaries == 3 and torch.equal(ids, ids.sort().values)
        vals = layer.values[0, :, p:p + 3, 0]  # [H, k]
        assert torch.equal(vals, (ids.float() + 1).unsqueeze(0) * head_scale.view(heads, 1))
        cos, sin = rotary(layer.keys, layer.summary_pos.unsqueeze(0))
        plain = layer.keys[0, :, p:p + 3] * cos[0] - torch.cat([-layer.keys[0, :, p:p + 3, d // 2:],
                                                                  layer.keys[0, :, p:p + 3, : d // 2]], -1) * sin[0]
        torch.testing.assert_close(plain, base[ids].permute(1, 0, 2), atol=ROPE_ATOL, rtol=0)


# ---------------------------------------------------------------- logical positions
@pytest.mark.parametrize("retention", ["streaming", "mean"])
def test_logical_positions_and_mask_after_eviction(tiny_policy, retention):
    """After eviction the next block must compute exactly what a DynamicCache holding the same slots computes
    with the logical position ids: get_seq_length / get_mask_sizes / positions are consistent."""
    q = tiny_policy.config.tokens_per_frame
    kw = {"budget": 1} if retention == "mean" else {"sinks": 2}
    cfg = KVEfficientConfig(window=q, retention=retention, **kw)
    blocks = obs_embeds(tiny_policy, 7)
    with vlaccel.applied(tiny_policy, cfg):
        lm_history(tiny_policy, blocks[:6], INSTR)
        cache = tiny_policy.cache
        prefix = tiny_policy.instruction_ids(INSTR).shape[1]
        seen = prefix + 6 * q
        assert cache.get_seq_length() == seen
        stored = cache.stored_tokens()[0]
        assert stored < seen
        assert cache.get_mask_sizes(q, 0) == (stored + q, seen - stored)
        pos = cache.layers[0].positions()
        assert pos.numel() == stored and bool((pos[1:] > pos[:-1]).all()) and int(pos[-1]) == seen - 1
        ours, ref = _next_block_vs_dynamic_twin(tiny_policy, cache, blocks[6], first_position=seen)
    assert torch.equal(ours, ref)


def _next_block_vs_dynamic_twin(policy, cache, block, first_position):
    """LM outputs of ``block`` on ``cache``, and on a DynamicCache holding the same slots with the block at
    ``first_position`` onwards."""
    twin = DynamicCache(config=policy.language_model.config)
    for i, layer in enumerate(cache.layers):
        twin.update(layer.keys.clone(), layer.values.clone(), i)
    with torch.no_grad():
        ours = policy.run_language_model(block, policy.observation_layout(), cache)
        ids = torch.arange(first_position, first_position + block.shape[1]).unsqueeze(0)
        ref = policy.run_language_model(block, policy.observation_layout(), twin, position_ids=ids)
    return ours, ref


@pytest.mark.parametrize("retention", ["streaming", "mean"])
def test_reindexed_positions_put_every_slot_at_its_index_after_eviction(tiny_policy, retention):
    """positions="reindexed": after evictions, slot i is rotated at position i (layer 0's keys, which depend on
    nothing but the input, de-rotate to exactly what the logical cache holds), the next block gets positions
    stored .. stored + q - 1, and it computes what a DynamicCache of the same slots computes there."""
    from vlaccel.techniques.kv_efficient.rope import RotaryFrame, find_rotary, remove_rotation

    q = tiny_policy.config.tokens_per_frame
    kw = {"budget": 2} if retention == "mean" else {"sinks": 2}
    blocks = obs_embeds(tiny_policy, 9)
    rope = RotaryFrame(find_rotary(tiny_policy.language_model), tiny_policy.language_model.config.head_dim)
    plain = {}
    for positions in ("logical", "reindexed"):
        cfg = KVEfficientConfig(window=q, retention=retention, positions=positions, **kw)
        with vlaccel.applied(tiny_policy, cfg):
            lm_history(tiny_policy, blocks[:8], INSTR)
            cache = tiny_policy.cache
            layer = cache.layers[0]
            stored = layer.stored
            like = layer.keys.new_empty(0, dtype=torch.float32)
            cos, sin = rope.cos_sin(layer.positions(), like)
            plain[positions] = remove_rotation(layer.keys.float(), cos, sin)
            if positions == "logical":
                continue
            assert stored < layer.seen and cache.get_seq_length() == stored
            assert torch.equal(layer.positions(), torch.arange(stored))
            assert cache.get_mask_sizes(q, 0) == (stored + q, 0)
            ours, ref = _next_block_vs_dynamic_twin(tiny_policy, cache, blocks[8], first_position=stored)
            assert torch.equal(ours, ref)
    torch.testing.assert_close(plain["reindexed"], plain["logical"], rtol=0, atol=ROPE_ATOL)


def test_reindexed_positions_run_past_the_models_position_limit(tiny_policy):
    """Logical positions refuse the step past max_positions; re-indexed ones keep a bounded episode going."""
    import dataclasses

    from vlaccel.errors import PositionLimitError
    from vlaccel.models import ReferenceVLA

    q = tiny_policy.config.tokens_per_frame
    small = ReferenceVLA(dataclasses.replace(tiny_policy.config, max_positions=4 * q + 8))
    small.load_state_dict(tiny_policy.state_dict())
    frames = random_frames(small.config.image_size, 8)
    for positions in ("logical", "reindexed"):
        with vlaccel.applied(small, KVEfficientConfig(window=q, sinks=q, retention="streaming", positions=positions)):
            small.reset(INSTR)
            if positions == "logical":
                for f in frames[:4]:
                    small.step(f, np.zeros(4, np.float32))
                with pytest.raises(PositionLimitError, match="past the policy's max_positions"):
                    small.step(frames[4], np.zeros(4, np.float32))
            else:
                for f in frames:
                    small.step(f, np.zeros(4, np.float32))
                assert small.cache.get_seq_length() <= 4 * q + 8 - q


def test_reindexed_positions_need_rope():
    with pytest.raises(ValueError, match="positions must be one of"):
        KVEfficientConfig(window=4, retention="streaming", positions="relative")
    with pytest.raises(ValueError, match="needs a RoPE model"):
        ChunkedGatedCache(KVEfficientConfig(window=4, retention="streaming", positions="reindexed"), 2, chunk=2)


# ---------------------------------------------------------------- episode reset
def test_reset_clears_storage_and_gate_state(tiny_policy):
    cfg = KVEfficientConfig(window=tiny_policy.config.tokens_per_frame, budget=2, gate=tiny_gate(tiny_policy))
    blocks_a, blocks_b = obs_embeds(tiny_policy, 6, seed=1), obs_embeds(tiny_policy, 6, seed=2)
    with vlaccel.applied(tiny_policy, cfg):
        lm_history(tiny_policy, blocks_a, "open the drawer")
        cache = tiny_policy.cache
        assert all(cache.retention.state(i).lstm is not None and layer.n_summaries > 0
                   for i, layer in enumerate(cache.layers))
        cache.reset()
        for i, layer in enumerate(cache.layers):
            assert layer.keys is None and layer.seen == 0 and layer.n_summaries == 0
            assert cache.retention.state(i) is None  # the policy dropped its LSTM state, utilities and g
            assert layer.gate_g is None or layer.gate_g.numel() == 0
        assert cache.get_seq_length() == 0
        # the reused object now behaves exactly like a fresh one, and so does the policy's next episode
        second = lm_history(tiny_policy, blocks_b)
    fresh = copy.deepcopy(tiny_policy)
    with vlaccel.applied(fresh, cfg):
        only = lm_history(fresh, blocks_b)
    assert torch.equal(second, only)


# ---------------------------------------------------------------- RoPE-correct summaries
@pytest.mark.parametrize("rope", [{"rope_type": "default", "rope_theta": 10000.0},
                                  {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                   "original_max_position_embeddings": 128}])
def test_summary_of_identical_keys_is_that_key_at_the_representative_position(rope):
    heads, d, c, first = 2, 16, 6, 37
    lm_cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=heads,
                         max_position_embeddings=512, rope_parameters=rope)
    rotary = LlamaRotaryEmbedding(lm_cfg)
    assert rope["rope_type"] == "default" or rotary.attention_scaling != 1.0  # yarn scales cos/sin
    cache = ChunkedGatedCache(KVEfficientConfig(window=4, chunk=c, retention="mean"), 1, rotary=rotary, head_dim=d)
    x = torch.randn(1, heads, 1, d, generator=torch.Generator().manual_seed(3)).expand(1, heads, c, d)
    pos = torch.arange(first, first + c)
    cos, sin = rotary(x, pos.unsqueeze(0))
    rotated = apply_rotary_pos_emb(x, x, cos, sin)[0]  # the model's own RoPE, [1, H, C, d]
    sk, sv, _, _, rep = cache.summarise(rotated, x.contiguous(), pos.view(1, c))
    assert rep.tolist() == [first + (c - 1) // 2]  # centre of the chunk, floor of the mean position
    rcos, rsin = rotary(x, rep.view(1, 1))
    expected = apply_rotary_pos_emb(x[:, :, :1], x[:, :, :1], rcos, rsin)[0]  # [1, H, 1, d]
    torch.testing.assert_close(sk[:, :, 0], expected, atol=ROPE_ATOL, rtol=0)
    torch.testing.assert_close(sv[:, :, 0, 0], x[:, :, 0], atol=ROPE_ATOL, rtol=0)
    naive = rotated.mean(dim=2, keepdim=True)  # averaging in rotated space (the official code's bug)
    assert (naive - expected).abs().max() > 100 * ROPE_ATOL
