"""LayerPruneConfig (EfficientVLA B1): Eq. 1 importance, calibration sources, surgery that keeps KV caches and
generate() working on the reference VLA and on plain transformers decoders, exact undo, bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import vlaccel
from vlaccel.adapters import get_adapter
from tests.conftest import random_frames
from vlaccel.adapters import UnsupportedModelError
from vlaccel.techniques import LayerPruneConfig, TokenPruneConfig
from vlaccel.techniques import layer_prune as lp

# Cache vs no-cache and prefix-split vs one-shot forwards differ only by float32 summation order.
FP32_FORWARD_ATOL = 1e-5
INSTRUCTION = "push the puck to the goal"


def _observations(policy, n: int = 3, seed: int = 11) -> list[dict]:
    return [{"image": f, "instruction": INSTRUCTION} for f in random_frames(policy.config, n, seed=seed)]


def tiny_lm(family: str):
    from transformers import GemmaConfig, GemmaForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif family == "qwen2":  # sliding-window layer types, so layer_types must follow the kept layers
        model = Qwen2ForCausalLM(Qwen2Config(**common, use_sliding_window=True, sliding_window=6, max_window_layers=2))
    else:
        model = GemmaForCausalLM(GemmaConfig(**common, head_dim=8))
    model.generation_config.pad_token_id = 0
    return model.eval()


# ---------------------------------------------------------------------------------------------- Eq. 1
def test_layer_importance_hand_computed():
    x0 = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # [B=1, T=2, D=2]
    x1 = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])  # cos(x0, x1) per token: 1, 1/sqrt(2)
    x2 = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])  # cos(x1, x2) per token: 0, 1
    got = lp.layer_importance([x0, x1, x2])
    want = torch.tensor([1 - (1 + 2 ** -0.5) / 2, 1 - (0 + 1) / 2])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-7)


def test_layer_importance_averages_batch_and_tokens():
    x0 = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])  # [B=2, T=1, D=2]
    x1 = torch.tensor([[[2.0, 0.0]], [[0.0, -3.0]]])  # cos 1 and 0 -> mean 0.5 (scale-invariant)
    torch.testing.assert_close(lp.layer_importance([x0, x1]), torch.tensor([0.5]), rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="L \\+ 1 >= 2"):
        lp.layer_importance([x0])


def test_layers_to_keep_drops_lowest_importance_and_breaks_ties_by_index():
    imp = torch.tensor([0.5, 0.1, 0.3, 0.1, 0.9])
    assert lp.layers_to_keep(imp, 5, 3, "efficientvla") == [0, 2, 4]  # drops 1 and 3 (the two 0.1s)
    assert lp.layers_to_keep(torch.tensor([0.2, 0.2, 0.2]), 3, 2, "efficientvla") == [1, 2]  # tie: lower index goes
    assert lp.layers_to_keep(None, 5, 3, "last") == [0, 1, 2]


def _manual_hidden_states(policy, obs: dict) -> list[torch.Tensor]:
    """Every layer's input/output for [<s> instruction][observation] in ONE no-cache forward, layer by layer."""
    lm = policy.language_model
    with torch.no_grad():
        ids = policy.instruction_ids(obs["instruction"])
        embeds = torch.cat([lm.embed_tokens(ids), policy.embed_observation(
            policy.pixels_from_images(obs["image"]), policy.proprio_tensor(None))], dim=1)
        pos = torch.arange(embeds.shape[1])[None]
        rope = lm.rotary_emb(embeds, position_ids=pos)
        states = [embeds]
        for layer in lm.layers:
            states.append(layer(states[-1], attention_mask=None, position_embeddings=rope, position_ids=pos))
    return states


def test_calibrate_matches_a_one_shot_forward(tiny_policy):
    obs = _observations(tiny_policy, 2)
    calib = lp.calibrate(tiny_policy, obs, mlp=True)
    want = torch.stack([lp.layer_importance(_manual_hidden_states(tiny_policy, o)) for o in obs]).mean(0)
    torch.testing.assert_close(calib.layer_importance, want, rtol=0, atol=FP32_FORWARD_ATOL)
    assert calib.samples == 2 and len(calib.mlp_activation) == tiny_policy.config.lm_layers
    assert tiny_policy.cache is None  # calibration leaves the episode state alone


# ---------------------------------------------------------------------------------------------- reference VLA
def test_surgery_on_reference_vla_and_exact_remove(tiny_policy, frames):
    lm = tiny_policy.language_model
    originals = list(lm.layers)
    base = np.stack([tiny_policy.predict_action(f, INSTRUCTION) for f in frames[:2]])
    lp.set_calibration_observations(tiny_policy, _observations(tiny_policy))
    handle = vlaccel.apply(tiny_policy, LayerPruneConfig(keep_layers=2))
    state = handle._entries[0][1]
    kept = state.kept
    assert len(kept) == 2 and kept == lp.layers_to_keep(state.importance, 4, 2, "efficientvla")
    assert [layer for layer in lm.layers] == [originals[i] for i in kept]
    assert lm.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in lm.layers] == [0, 1]
    tiny_policy.reset(INSTRUCTION)
    tiny_policy.step(frames[0])
    assert len(tiny_policy.cache.layers) == 2  # one KV slot per kept layer
    handle.remove()
    assert list(lm.layers) == originals and lm.config.num_hidden_layers == 4
    assert [layer.self_attn.layer_idx for layer in lm.layers] == [0, 1, 2, 3]
    np.testing.assert_array_equal(np.stack([tiny_policy.predict_action(f, INSTRUCTION) for f in frames[:2]]), base)


def test_pruned_history_mode_matches_one_shot_history_forward(tiny_policy, frames):
    """Step-by-step KV-cache cognition features of the pruned LM equal its whole-history forward."""
    lp.set_calibration_observations(tiny_policy, _observations(tiny_policy))
    with vlaccel.applied(tiny_policy, LayerPruneConfig(drop_layers=2, mlp_prune_ratio=0.25)):
        tiny_policy.reset(INSTRUCTION)
        stepped = []
        for f in frames[:3]:
            tiny_policy.step(f)
            stepped.append(tiny_policy.last_cognition)
        ids, mask = tiny_policy.batch_instruction_ids([INSTRUCTION])
        pixels = torch.stack([tiny_policy.pixels_from_images(f)[0] for f in frames[:3]])[None]  # [1, F, cams, 3, H, W]
        with torch.no_grad():
            oneshot = tiny_policy.history_cognition(ids, mask, pixels, None)[0]  # [F, D]
    torch.testing.assert_close(torch.cat(stepped), oneshot, rtol=0, atol=FP32_FORWARD_ATOL)


def test_method_last_needs_no_calibration(tiny_policy):
    with vlaccel.applied(tiny_policy, LayerPruneConfig(keep_layers=3, method="last")) as handle:
        assert handle._entries[0][1].kept == [0, 1, 2]


# ---------------------------------------------------------------------------------------------- calibration sources
def test_missing_calibration_raises_before_changing_anything(tiny_policy, tmp_path, monkeypatch):
    from vlaccel.demo_files import save_demo

    # demos in the working directory are not a calibration source (no source found relative to the cwd)
    save_demo(tmp_path / "data" / "demos" / "reach-v3" / "seed_00000.npz",
              images=np.stack([o["image"] for o in _observations(tiny_policy, 2)]), states=np.zeros((2, 4), np.float32),
              actions=np.zeros((5, 4), np.float32), task="reach-v3", instruction=INSTRUCTION, seed=0, success=True,
              frame_every=1, success_step=4)
    monkeypatch.chdir(tmp_path)
    layers = list(tiny_policy.language_model.layers)
    with pytest.raises(vlaccel.errors.MissingInputError,
                       match="calibration_data=.*set_calibration_observations.*calibration.npz"):
        vlaccel.apply(tiny_policy, LayerPruneConfig(keep_layers=2))
    assert list(tiny_policy.language_model.layers) == layers and vlaccel.applied_configs(tiny_policy) == []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        vlaccel.apply(tiny_policy, LayerPruneConfig(keep_layers=2, calibration_data=str(tmp_path / "nope.npz")))


def test_calibration_from_field_npz_demo_folder_and_policy_folder(tiny_policy, tmp_path):
    from vlaccel.demo_files import save_demo

    obs = _observations(tiny_policy, 3)
    want = lp.calibrate(tiny_policy, obs).layer_importance
    np.savez(tmp_path / "calib.npz", image=np.stack([o["image"] for o in obs]), instruction=np.str_(INSTRUCTION))
    loaded = lp.load_calibration_observations(tmp_path / "calib.npz")
    assert len(loaded) == 3 and loaded[0]["instruction"] == INSTRUCTION
    torch.testing.assert_close(lp.calibrate(tiny_policy, loaded).layer_importance, want, rtol=0, atol=0)
    demos = tmp_path / "data" / "demos"
    save_demo(demos / "reach-v3" / "seed_00000.npz", images=np.stack([o["image"] for o in obs]),
              states=np.zeros((3, 4), np.float32), actions=np.zeros((5, 4), np.float32), task="reach-v3",
              instruction=INSTRUCTION, seed=0, success=True, frame_every=1, success_step=4)
    from_folder = lp.load_calibration_observations(demos)
    assert len(from_folder) == 3 and from_folder[2]["proprio"].shape == (4,)
    with vlaccel.applied(tiny_policy, LayerPruneConfig(keep_layers=2, calibration=2, calibration_data=str(demos))):
        assert len(tiny_policy.language_model.layers) == 2
    # a policy folder's calibration.npz is recorded on the policy when it is loaded
    vlaccel.save_policy(tiny_policy, tmp_path / "policy")
    (tmp_path / "policy" / lp.CALIBRATION_FILE).write_bytes((tmp_path / "calib.npz").read_bytes())
    loaded_policy = vlaccel.load_policy(tmp_path / "policy")
    with vlaccel.applied(loaded_policy, LayerPruneConfig(keep_layers=2)) as handle:
        torch.testing.assert_close(handle._entries[0][1].importance, want, rtol=0, atol=0)


def test_calibration_takes_evenly_spaced_samples():
    from vlaccel.calibration import evenly_spaced

    assert evenly_spaced(list(range(10)), 3) == [0, 4, 9]  # linspace 0, 4.5, 9 rounded half to even
    assert evenly_spaced([1, 2], 64) == [1, 2]


# ---------------------------------------------------------------------------------------------- plain transformers LMs
def _greedy_no_cache(model, ids: torch.Tensor, new: int) -> torch.Tensor:
    for _ in range(new):
        with torch.no_grad():
            nxt = model(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma"])
def test_hf_decoder_pruned_generate_matches_no_cache_greedy(family):
    model = tiny_lm(family)
    ids = torch.randint(1, 97, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base_logits = model(input_ids=ids).logits
    base_gen = model.generate(ids, max_new_tokens=8, do_sample=False)
    with vlaccel.applied(model, LayerPruneConfig(keep_layers=4)):  # neutral: bit-identical
        assert LayerPruneConfig(keep_layers=4).is_neutral(model, get_adapter(model))
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids).logits, base_logits)
        assert torch.equal(model.generate(ids, max_new_tokens=8, do_sample=False), base_gen)
    calib = [{"input_ids": torch.randint(1, 97, (1, 12), generator=torch.Generator().manual_seed(s))} for s in range(3)]
    lp.set_calibration_observations(model, calib)
    types = copy.copy(getattr(model.config, "layer_types", None))
    with vlaccel.applied(model, LayerPruneConfig(keep_layers=2, mlp_prune_ratio=0.25)) as handle:
        kept = handle._entries[0][1].kept
        assert model.config.num_hidden_layers == 2
        if types is not None:
            assert model.config.layer_types == [types[i] for i in kept]
        gen = model.generate(ids, max_new_tokens=8, do_sample=False)
        assert torch.equal(gen, _greedy_no_cache(model, ids, 8))
        with torch.no_grad():
            assert not torch.allclose(model(input_ids=ids).logits, base_logits)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, base_logits)
    assert getattr(model.config, "layer_types", None) == types and model.config.num_hidden_layers == 4
    assert torch.equal(model.generate(ids, max_new_tokens=8, do_sample=False), base_gen)


def test_hf_decoder_calibration_sample_needs_input_ids():
    model = tiny_lm("llama")
    lp.set_calibration_observations(model, [{"labels": [1, 2]}])
    with pytest.raises(ValueError, match="needs 'input_ids'"):
        vlaccel.apply(model, LayerPruneConfig(keep_layers=2))
    assert len(model.model.layers) == 4


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    (dict(keep_layers=0), "keep_layers must be an integer >= 1"),
    (dict(keep_layers=2, drop_layers=1), "exactly one of"),
    (dict(), "exactly one of"),
    (dict(drop_layers=-1), "drop_layers must be an integer >= 0"),
    (dict(keep_layers=2, mlp_prune_ratio=1.0), "mlp_prune_ratio must be in \\[0, 1\\)"),
    (dict(keep_layers=2, calibration=0), "calibration"),
    (dict(keep_layers=2, method="greedy"), "method must be one of"),
])
def test_bad_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LayerPruneConfig(**kwargs)


def test_out_of_range_for_the_model_leaves_it_untouched(tiny_policy, frames):
    before = {k: v.clone() for k, v in tiny_policy.state_dict().items()}
    base = tiny_policy.predict_action(frames[0], INSTRUCTION)
    lp.set_calibration_observations(tiny_policy, _observations(tiny_policy))
    with pytest.raises(ValueError, match="outside \\[1, 4\\]"):
        vlaccel.apply(tiny_policy, LayerPruneConfig(keep_layers=5))
    with pytest.raises(ValueError, match="outside \\[0, 3\\]"):
        vlaccel.apply(tiny_policy, LayerPruneConfig(drop_layers=4))
    after = tiny_policy.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    np.testing.assert_array_equal(tiny_policy.predict_action(frames[0], INSTRUCTION), base)


def test_unsupported_model_and_order_errors(tiny_policy):
    linear = torch.nn.Linear(3, 3)
    w = linear.weight.clone()
    with pytest.raises(UnsupportedModelError, match="Supported: .*LlamaForCausalLM"):
        vlaccel.apply(linear, LayerPruneConfig(keep_layers=1))
    assert torch.equal(linear.weight, w)
    lp.set_calibration_observations(tiny_policy, _observations(tiny_policy))
    with vlaccel.applied(tiny_policy, TokenPruneConfig(keep_tokens=6, layer=1)):
        with pytest.raises(RuntimeError, match="before TokenPruneConfig"):
            vlaccel.apply(tiny_policy, LayerPruneConfig(keep_layers=3))
