"""The analytic cost model predicts exactly what FlopCounterMode counts and the bytes the cache holds."""

from __future__ import annotations

import numpy as np
import pytest

import vlaccel
from tests.techniques.kv_efficient.helpers import random_frames, tiny_gate
from vlaccel.bench.cost_model import GateShape, LMShape, step_cost
from vlaccel.bench.flops import count_flops
from vlaccel.techniques.kv_efficient import KVEfficientConfig, load_gate

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
