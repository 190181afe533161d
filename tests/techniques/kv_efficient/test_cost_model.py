"""The analytic cost model predicts exactly what FlopCounterMode counts and the slots and bytes the cache holds."""

from __future__ import annotations

import numpy as np
import pytest

import vlaccel
from tests.techniques.kv_efficient.helpers import lm_history, obs_embeds, random_frames, tiny_gate
from vlaccel.bench.cost_model import GateShape, LMShape, effective_tokens, step_cost
from vlaccel.bench.flops import count_flops
from vlaccel.techniques.kv_efficient import KVEfficientConfig, KVGate, load_gate, save_gate
from vlaccel.techniques.kv_efficient.retentions import RETENTION_TABLE
from vlaccel.weights import plain_fingerprint

INSTR = "push the puck to the goal"


@pytest.mark.parametrize("setting", ["gated", "mean", "streaming", "full"])
def test_predicted_flops_and_bytes_match_counted(tiny_policy, setting):
    q = tiny_policy.config.tokens_per_frame
    gate_path = tiny_gate(tiny_policy)
    cfg = {"gated": KVEfficientConfig(window=q, budget=2, gate=gate_path),
           "mean": KVEfficientConfig(window=q + 5, budget=1, summary_slots=2, retention="mean"),
           "streaming": KVEfficientConfig(window=q + 2, sinks=2, retention="streaming"),
           "full": KVEfficientConfig(window=q, retention="full")}[setting]
    sizes = load_gate(gate_path).sizes
    gate = GateShape(sizes["agg_hidden"], sizes["lstm_hidden"])
    shape = LMShape.from_config(tiny_policy.language_model.config)
    prefix = tiny_policy.instruction_ids(INSTR).shape[1]
    with vlaccel.applied(tiny_policy, cfg):
        tiny_policy.reset(INSTR)
        for frame, image in enumerate(random_frames(tiny_policy.config.image_size, 6), start=1):
            _, per_module = count_flops(lambda image=image: tiny_policy.step(image, np.zeros(4, np.float32)))
            predicted = step_cost(shape, cfg, prefix, q, q, frame, gate)
            # RoPE angles are left out of the model: transformers 5.5 computes them as a matmul inv_freq @
            # position_ids (d_h FLOPs per position and call, counted under rotary_emb, also where the cache
            # re-rotates summaries), 5.20 as an elementwise product FlopCounterMode does not count
            lm = per_module["LlamaModel"] - per_module.get("LlamaModel.rotary_emb", 0)
            assert lm == predicted["lm_flops"], frame
            assert tiny_policy.cache.kv_bytes() == predicted["kv_bytes"], frame
    if setting != "full":
        assert predicted["tokens_after"] < prefix + 6 * q  # the model says the cache is bounded, and it was



def _untrained_gate(policy, slots, folder):
    """A gate for ``policy`` with ``slots`` summary slots, saved untrained (g = 0.5 for every chunk: the budget
    keeps the oldest); enough to count what the cache holds."""
    lm = policy.language_model.config
    gate = KVGate(lm.head_dim, lm.num_key_value_heads, slots, agg_hidden=8, lstm_hidden=8,
                  meta={"fingerprint": plain_fingerprint(policy)})
    return str(save_gate(gate, folder))


def _stored_per_step(policy, cfg, frames):
    """Slots held after each of ``frames`` observation blocks (every layer holds the same), and layer 0."""
    stored = []

    def record(t, cache):
        per_layer = cache.stored_tokens()
        assert len(set(per_layer)) == 1, per_layer
        stored.append(per_layer[0])

    with vlaccel.applied(policy, cfg):
        lm_history(policy, obs_embeds(policy, frames), INSTR, on_step=record)
        return stored, policy.cache.layers[0]


@pytest.mark.parametrize("retention", list(RETENTION_TABLE))
@pytest.mark.parametrize("variant", ["frame_chunks", "sub_frame_chunks"])
def test_predicted_tokens_equal_what_the_cache_stores(tiny_policy, tmp_path, retention, variant):
    """For every retention of the table, the cost model's T_eff after N observations is the number of slots the
    cache holds, also well past the budget (summaries of s slots, sinks, chunks that are not frame-aligned, an
    evictable prefix), so the cost model cannot drift from the cache."""
    q = tiny_policy.config.tokens_per_frame
    spec = RETENTION_TABLE[retention]
    kw = {"frame_chunks": {"window": q, "summary_slots": 2, "sinks": 3},
          "sub_frame_chunks": {"window": q + 1, "chunk": 5, "protect_prefix": False, "sinks": 2}}[variant]
    budget = 2
    if spec.summarises:
        kw["budget"] = budget
    if spec.needs_gate:
        kw["gate"] = _untrained_gate(tiny_policy, kw.get("summary_slots", 1), tmp_path / "gate")
    cfg = KVEfficientConfig(retention=retention, **kw)
    frames = 8
    stored, layer = _stored_per_step(tiny_policy, cfg, frames)
    prefix = tiny_policy.instruction_ids(INSTR).shape[1]
    predicted = [effective_tokens(cfg, prefix, q, cfg.chunk or q, n) for n in range(1, frames + 1)]
    assert stored == predicted
    if spec.evicts:  # well past the budget: more chunks closed than a budget holds
        assert layer.n_chunks > budget + 2 and layer.n_summaries == (budget if spec.summarises else 0)
