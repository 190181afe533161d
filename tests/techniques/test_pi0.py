"""pi0 (transformers ``PI0ForConditionalGeneration``, tiny random config): what the VLM/expert coupling demands of
each technique, beyond the shared contract (tests/contract): token pruning shortens what *every* flow step reads,
layer pruning removes VLM and expert layers in pairs, the flow-expert cache skips attention between refreshes."""

from __future__ import annotations

import pytest
import torch

import vlaccel
from vlaccel.models.pi0_configs import build_pi0, pi0_inputs
from vlaccel.techniques import DenoiseStepsConfig, HeadCacheConfig, LayerPruneConfig, TokenPruneConfig
from vlaccel.techniques.layer_prune import set_calibration_observations

K, KEEP = 1, 6  # token pruning after VLM layer 1, 6 of 16 tokens per image


@pytest.fixture
def pi0():
    return build_pi0("tiny")


def _expert_reads(model):
    """Per expert forward, per expert layer: (prefix keys the layer's attention sees, its mask's key columns)."""
    reads: list[dict[int, tuple[int, int]]] = []

    def attn_pre(module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        mask = kwargs["attention_mask"]
        if module.layer_idx == 0:
            reads.append({})
        reads[-1][module.layer_idx] = (cache.layers[module.layer_idx].keys.shape[2], mask.shape[-1] - hidden.shape[1])

    hooks = [layer.self_attn.register_forward_pre_hook(attn_pre, with_kwargs=True) for layer in model.model.dit.layers]
    return reads, hooks


def test_every_flow_step_reads_the_shortened_prefix(pi0):
    inputs = pi0_inputs(pi0, seed=0)  # 2 cameras x 16 image tokens + 6 prompt tokens
    full, text = inputs["input_ids"].shape[1], 6
    reads, hooks = _expert_reads(pi0)
    with vlaccel.applied(pi0, TokenPruneConfig(keep_tokens=KEEP, layer=K)):
        pi0.sample_actions(**inputs)
    for h in hooks:
        h.remove()
    assert len(reads) == pi0.config.num_inference_steps == 10
    for step in reads:
        for layer, (keys, columns) in step.items():
            expected = full if layer <= K else text + 2 * KEEP  # both cameras' budgets, chosen jointly
            assert keys == columns == expected, (layer, keys, columns)


def test_layer_pruning_removes_vlm_and_expert_layers_in_pairs(pi0):
    set_calibration_observations(pi0, [pi0_inputs(pi0, seed=s) for s in (3, 4)])
    vlm, expert = list(pi0.model.vlm.language_model.layers), list(pi0.model.dit.layers)
    with vlaccel.applied(pi0, LayerPruneConfig(keep_layers=2)) as handle:
        state = handle._entries[0][1]
        kept = state.kept
        assert [vlm.index(m) for m in pi0.model.vlm.language_model.layers] == kept
        assert [expert.index(m) for m in pi0.model.dit.layers] == kept  # the same pairs
        for j, i in enumerate(kept):  # expert layer i reads the slot VLM layer i writes
            assert vlm[i].self_attn.layer_idx == expert[i].self_attn.layer_idx == j
        assert pi0.config.vlm_config.text_config.num_hidden_layers == pi0.config.dit_config.num_hidden_layers == 2
        assert state.importance.shape == (4,)
        pi0.sample_actions(**pi0_inputs(pi0, seed=0))
    assert [m.self_attn.layer_idx for m in pi0.model.dit.layers] == [0, 1, 2, 3]
    assert pi0.config.dit_config.num_hidden_layers == 4


def test_pair_importance_sums_both_stacks(pi0):
    from vlaccel.techniques.layer_prune import calibrate

    calib = calibrate(pi0, [pi0_inputs(pi0, seed=s) for s in (3, 4)])
    assert len(calib.per_stack) == 2  # the VLM's Eq. 1 scores, then the expert's (over every flow step)
    assert torch.equal(calib.layer_importance, calib.per_stack[0] + calib.per_stack[1])
    assert (calib.per_stack[1] > 0).all()


def test_flow_expert_cache_skips_attention_between_refreshes(pi0):
    calls = {"attn": 0, "mlp": 0}
    layer = pi0.model.dit.layers[2]
    hooks = [layer.self_attn.q_proj.register_forward_hook(lambda *a: calls.__setitem__("attn", calls["attn"] + 1)),
             layer.mlp.down_proj.register_forward_hook(lambda *a: calls.__setitem__("mlp", calls["mlp"] + 1))]
    inputs = pi0_inputs(pi0, seed=0)
    with vlaccel.applied(pi0, HeadCacheConfig(interval=5)):
        pi0.sample_actions(**inputs)
        assert calls == {"attn": 2, "mlp": 2}  # steps 0 and 5 of 10
        pi0.sample_actions(**inputs)  # a new prefix restarts the count: step 0 recomputes
        assert calls == {"attn": 4, "mlp": 4}
    for h in hooks:
        h.remove()


def test_fewer_flow_steps_run_fewer_expert_forwards(pi0):
    forwards = []
    hook = pi0.model.dit.register_forward_hook(lambda *a: forwards.append(1))
    with vlaccel.applied(pi0, DenoiseStepsConfig(steps=4)):
        pi0.sample_actions(**pi0_inputs(pi0, seed=0))
    hook.remove()
    assert len(forwards) == 4 and pi0.config.num_inference_steps == 10


def test_prefix_without_input_ids_is_refused_under_token_pruning(pi0):
    inputs = pi0_inputs(pi0, seed=0)
    embeds = pi0.model.embed_prefix(inputs["input_ids"], inputs["pixel_values"], inputs["pixel_attention_mask"])
    with vlaccel.applied(pi0, TokenPruneConfig(keep_tokens=KEEP, layer=K)):
        with pytest.raises(ValueError, match="inputs_embeds given"):
            pi0.model.vlm(inputs_embeds=embeds, use_cache=True)


def test_bare_pi0_model_takes_the_head_cache_and_refuses_a_step_count(pi0):
    bare = pi0.model
    assert "sampler" not in vlaccel.adapters.get_adapter(bare).capabilities(bare)
    with pytest.raises(ValueError, match="sampler"):
        vlaccel.apply(bare, DenoiseStepsConfig(steps=4))
    with vlaccel.applied(bare, HeadCacheConfig(interval=5), TokenPruneConfig(keep_tokens=KEEP, layer=K)):
        pass


def test_calibration_sample_names_what_is_missing(pi0):
    set_calibration_observations(pi0, [{"input_ids": [1, 2, 3]}])
    with pytest.raises(ValueError, match=r"needs \['state', 'pixel_values'\]"):
        vlaccel.apply(pi0, LayerPruneConfig(keep_layers=2))
    assert len(pi0.model.dit.layers) == 4  # nothing half-applied


def test_paper_fraction_preset_resolves_from_the_model(pi0):
    configs = vlaccel.presets.get("efficientvla", pi0)
    names = [type(c).__name__ for c in configs]
    assert names == ["LayerPruneConfig", "TokenPruneConfig", "HeadCacheConfig"]
    assert configs[0].keep_layers == 3 and configs[1].keep_tokens == 4 + 1  # round(4*22/32), max(k_key+1, 16*56/256)
