"""Structured MLP channel pruning (the PruneNet stand-in of LayerPruneConfig.mlp_prune_ratio)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP

from vlaccel.adapters import get_adapter
from vlaccel.techniques import layer_prune as lp
from vlaccel.techniques import mlp_prune

# Dropping channels that are exactly zero changes only the summation length of down_proj's matmul.
DEAD_CHANNEL_ATOL = 1e-6


def _mlp(seed: int = 0) -> LlamaMLP:
    torch.manual_seed(seed)
    return LlamaMLP(LlamaConfig(hidden_size=16, intermediate_size=8, num_attention_heads=2, num_key_value_heads=2, mlp_bias=True)).eval()


def test_channels_to_keep_rounds_and_breaks_ties_by_index():
    imp = torch.tensor([0.5, 0.1, 0.1, 0.9, 0.1, 0.7, 0.2, 0.3])
    assert mlp_prune.channels_to_keep(imp, 0.25).tolist() == [0, 1, 3, 5, 6, 7]  # 6 of 8; the 0.1 tie keeps index 1
    assert mlp_prune.channels_to_keep(imp, 0.5).tolist() == [0, 3, 5, 7]
    assert mlp_prune.channels_to_keep(imp, 0.99).tolist() == [3]  # at least one channel survives


def test_pruning_dead_channels_keeps_the_output_and_remove_restores():
    mlp = _mlp()
    dead = [1, 4]
    with torch.no_grad():  # act_fn(gate) * up == 0 on these channels: SiLU(0) = 0
        mlp.gate_proj.weight[dead] = 0
        mlp.gate_proj.bias[dead] = 0
    x = torch.randn(2, 5, 16)
    base = mlp(x)
    originals = (mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    importance = (mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)).abs().flatten(0, 1).mean(0)
    state = mlp_prune.prune([mlp], [importance], 0.25)
    assert mlp.gate_proj.weight.shape == (6, 16) and mlp.down_proj.weight.shape == (16, 6)
    assert mlp.intermediate_size == 6
    torch.testing.assert_close(mlp(x), base, rtol=0, atol=DEAD_CHANNEL_ATOL)
    state.remove()
    assert (mlp.gate_proj, mlp.up_proj, mlp.down_proj) == originals and mlp.intermediate_size == 8
    assert torch.equal(mlp(x), base)


def test_pruning_live_channels_changes_the_output():
    mlp = _mlp()
    x = torch.randn(2, 5, 16)
    base = mlp(x)
    mlp_prune.prune([mlp], [torch.arange(8.0)], 0.5)  # keeps channels 4..7
    assert not torch.allclose(mlp(x), base)
    assert mlp.gate_proj.out_features == 4


def test_calibration_activation_is_mean_abs_down_proj_input(tiny_policy):
    obs = [{"image": torch.zeros(32, 32, 3, dtype=torch.uint8).numpy(), "instruction": "open the drawer"}]
    calib = lp.calibrate(tiny_policy, obs, mlp=True)
    layer = tiny_policy.language_model.layers[1]
    seen = []
    h = layer.mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].abs().flatten(0, 1)))
    try:
        get_adapter(tiny_policy).run_calibration_sample(tiny_policy, obs[0])
    finally:
        h.remove()
    torch.testing.assert_close(calib.mlp_activation[1], torch.cat(seen).mean(0), rtol=1e-6, atol=0)


def test_non_gated_mlp_is_refused():
    with pytest.raises(NotImplementedError, match="gated MLPs"):
        mlp_prune.mlp_parts(torch.nn.Sequential(torch.nn.Linear(2, 2)))
