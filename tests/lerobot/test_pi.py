"""LeRobot's pi0 / pi0.5 (``PI0Policy``, ``PI05Policy``, tiny random builds): every technique through
``vlaccel.apply`` on the policy itself, and what the VLM/expert coupling demands of each (the shared contract in
tests/contract runs them too). Tests needing LeRobot skip where it is not installed."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

import vlaccel
from tests.lerobot.helpers import leftovers
from vlaccel.bench.flops import count_flops
from vlaccel.techniques import (CompileConfig, DenoiseStepsConfig, HeadCacheConfig, KVEfficientConfig,
                                LayerPruneConfig, PrecisionConfig, TokenPruneConfig)

K, KEEP = 1, 6  # token pruning after VLM layer 1, 6 of 16 tokens per camera
KINDS = ("pi0", "pi05")


@functools.lru_cache(maxsize=None)
def _master(kind: str):
    from vlaccel.models.lerobot_pi import build_lerobot_pi

    torch.set_num_threads(1)
    return build_lerobot_pi(kind, "tiny")


def _build(kind: str):
    """A fresh tiny policy of ``kind``: a deep copy of one built once (a build takes seconds)."""
    pytest.importorskip("lerobot")
    return copy.deepcopy(_master(kind))


@pytest.fixture(params=KINDS)
def policy(request):
    return _build(request.param)


def chunk(policy, seed: int = 0) -> torch.Tensor:
    from vlaccel.models.lerobot_pi import predict_chunk

    return predict_chunk(policy, seed)


def calibrate(policy) -> None:
    from vlaccel.models.lerobot_pi import action_noise, pi_batch
    from vlaccel.techniques.layer_prune import set_calibration_observations

    set_calibration_observations(policy, [{**pi_batch(policy, s), "noise": action_noise(policy, s)} for s in (11, 12)])


NEUTRAL = {
    "denoise_steps": lambda p: DenoiseStepsConfig(steps=p.config.num_inference_steps),
    "layer_prune": lambda p: LayerPruneConfig(keep_layers=4),
    **{f"token_prune_{m}": (lambda p, m=m: TokenPruneConfig(keep_tokens=16, layer=K, method=m))
       for m in ("efficientvla", "fastv", "random", "diversity")},
    "head_cache": lambda p: HeadCacheConfig(interval=1),
    "precision": lambda p: PrecisionConfig(dtype="float32"),
    "compile": lambda p: CompileConfig(backend="eager"),
}
LOSSY = {
    "denoise_steps": lambda p: DenoiseStepsConfig(steps=4),
    "layer_prune": lambda p: LayerPruneConfig(keep_layers=3, mlp_prune_ratio=0.25),
    **{f"token_prune_{m}": (lambda p, m=m: TokenPruneConfig(keep_tokens=KEEP, layer=K, method=m))
       for m in ("efficientvla", "fastv", "random", "diversity")},
    "head_cache": lambda p: HeadCacheConfig(interval=5),
    "precision": lambda p: PrecisionConfig(dtype="bfloat16"),
}


# --- without LeRobot: the adapter is found by class name and module, nothing imported -----------------------
def test_adapter_matches_by_class_name_and_module_without_importing_lerobot():
    from vlaccel.adapters.lerobot_pi import LeRobotPI0Adapter

    def fake(name: str, module: str):
        return type(name, (), {"__module__": module})()

    assert LeRobotPI0Adapter.matches(fake("PI0Policy", "lerobot.policies.pi0.modeling_pi0"))
    assert LeRobotPI0Adapter.matches(fake("PI05Policy", "lerobot.policies.pi05.modeling_pi05"))
    assert not LeRobotPI0Adapter.matches(fake("PI0Policy", "my_package.pi0"))
    assert not LeRobotPI0Adapter.matches(fake("PI05Policy", "lerobot.policies.pi0.modeling_pi0"))
    assert "LeRobot PI05Policy" in vlaccel.adapters.supported_models()


def test_prefix_layout_reads_cameras_and_the_valid_prompt():
    from vlaccel.adapters.lerobot_pi import prefix_layout

    masks = torch.tensor([[True] * 5 + [False] * 7, [True] * 3 + [False] * 9])  # [B=2, L=12], right-padded
    layout = prefix_layout([torch.zeros(2, 3, 8, 8)] * 3, masks, per_image=16)
    assert (layout.visual, layout.instruction, layout.length) == (slice(0, 48), slice(48, 53), 60)


# --- with LeRobot -----------------------------------------------------------------------------------------
def test_tiny_build_restores_lerobot_and_is_deterministic():
    policy = _build("pi0")
    import lerobot.policies.pi0.modeling_pi0 as modeling

    assert modeling.get_gemma_config("gemma_2b").width == 2048  # the shrinking ended with the build
    assert vlaccel.adapters.get_adapter(policy).visual_tokens(policy) == 16
    assert torch.equal(chunk(policy), chunk(policy))
    assert not torch.equal(chunk(policy, 0), chunk(policy, 1))


@pytest.mark.parametrize("name", list(NEUTRAL))
def test_neutral_settings_are_bit_identical(policy, name):
    base = chunk(policy)
    cfg = NEUTRAL[name](policy)
    if name != "compile":  # backend "eager" runs the captured graphs with the original kernels: never "neutral"
        assert cfg.is_neutral(policy, vlaccel.adapters.get_adapter(policy))
    with vlaccel.applied(policy, cfg):
        assert torch.equal(chunk(policy), base)


@pytest.mark.parametrize("name", list(LOSSY))
def test_lossy_setting_changes_outputs_cuts_flops_and_remove_restores(policy, name):
    calibrate(policy)
    base, state = chunk(policy), {k: v.clone() for k, v in policy.state_dict().items()}
    base_flops, _ = count_flops(lambda: chunk(policy))
    clean = leftovers(policy)
    handle = vlaccel.apply(policy, LOSSY[name](policy))
    out = chunk(policy)
    flops, _ = count_flops(lambda: chunk(policy))
    handle.remove()
    assert torch.isfinite(out).all() and not torch.equal(out, base)
    if name == "precision":
        assert flops == base_flops  # cheaper FLOPs, not fewer
    else:
        assert flops < base_flops
    assert torch.equal(chunk(policy), base)
    assert leftovers(policy) == clean
    after = policy.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())


def test_deep_copy_is_independent(policy):
    calibrate(policy)
    base = chunk(policy)
    handle = vlaccel.apply(policy, LayerPruneConfig(keep_layers=3), TokenPruneConfig(keep_tokens=KEEP, layer=K),
                           HeadCacheConfig(interval=5), DenoiseStepsConfig(steps=5))
    twin = copy.deepcopy(policy)
    accelerated = chunk(policy)
    assert torch.equal(chunk(twin), accelerated)
    handle.remove()
    assert torch.equal(chunk(policy), base)
    assert torch.equal(chunk(twin), accelerated)  # the copy's techniques are its own
    vlaccel.handle_for(twin).remove()
    assert torch.equal(chunk(twin), base)


def test_every_flow_step_reads_the_shortened_prefix(policy):
    expert = policy.model.paligemma_with_expert.gemma_expert.model
    reads: list[dict[int, tuple[int, int]]] = []

    def attn_pre(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        cache, mask = kwargs["past_key_values"], kwargs["attention_mask"]
        if module.layer_idx == 0:
            reads.append({})
        reads[-1][module.layer_idx] = (cache.layers[module.layer_idx].keys.shape[2], mask.shape[-1] - hidden.shape[1])

    hooks = [layer.self_attn.register_forward_pre_hook(attn_pre, with_kwargs=True) for layer in expert.layers]
    with vlaccel.applied(policy, TokenPruneConfig(keep_tokens=KEEP, layer=K)):
        chunk(policy)
    for h in hooks:
        h.remove()
    cameras, language = 2, policy.config.tokenizer_max_length
    assert len(reads) == policy.config.num_inference_steps == 10
    for step in reads:
        for layer, (keys, columns) in step.items():
            expected = cameras * 16 + language if layer <= K else cameras * KEEP + language
            assert keys == columns == expected, (layer, keys, columns)


def test_layer_pruning_removes_vlm_and_expert_layers_in_pairs(policy):
    calibrate(policy)
    pe = policy.model.paligemma_with_expert
    vlm, expert = list(pe.paligemma.model.language_model.layers), list(pe.gemma_expert.model.layers)
    with vlaccel.applied(policy, LayerPruneConfig(keep_layers=2)) as handle:
        state = handle._entries[0][1]
        assert [vlm.index(m) for m in pe.paligemma.model.language_model.layers] == state.kept
        assert [expert.index(m) for m in pe.gemma_expert.model.layers] == state.kept
        for j, i in enumerate(state.kept):  # expert layer i reads the cache slot VLM layer i writes
            assert vlm[i].self_attn.layer_idx == expert[i].self_attn.layer_idx == j
        assert pe.paligemma.config.text_config.num_hidden_layers == pe.gemma_expert.config.num_hidden_layers == 2
        assert state.importance.shape == (4,) and (state.importance > 0).all()
        chunk(policy)
    assert [m.self_attn.layer_idx for m in pe.gemma_expert.model.layers] == [0, 1, 2, 3]


def test_flow_expert_cache_skips_attention_between_refreshes(policy):
    layer = policy.model.paligemma_with_expert.gemma_expert.model.layers[2]
    calls = {"attn": 0, "mlp": 0}
    hooks = [layer.self_attn.q_proj.register_forward_hook(lambda *a: calls.__setitem__("attn", calls["attn"] + 1)),
             layer.mlp.down_proj.register_forward_hook(lambda *a: calls.__setitem__("mlp", calls["mlp"] + 1))]
    with vlaccel.applied(policy, HeadCacheConfig(interval=5)):
        chunk(policy)
        assert calls == {"attn": 2, "mlp": 2}  # steps 0 and 5 of 10
        chunk(policy, 1)  # a new prefix restarts the count: step 0 recomputes
        assert calls == {"attn": 4, "mlp": 4}
    for h in hooks:
        h.remove()


def test_fewer_flow_steps_run_fewer_expert_steps(policy):
    steps = []
    hook = policy.model.action_out_proj.register_forward_hook(lambda *a: steps.append(1))
    with vlaccel.applied(policy, DenoiseStepsConfig(steps=4)):
        chunk(policy)
    hook.remove()
    assert len(steps) == 4 and policy.config.num_inference_steps == 10


def test_unsupported_settings_name_the_reason(policy):
    with pytest.raises(ValueError, match="needs a KV cache vlaccel can give a cache factory to"):
        vlaccel.apply(policy, KVEfficientConfig(window=8, retention="streaming"))
    with pytest.raises(ValueError, match=r"parts \['transformer'\] are not parts of .*\['expert', 'vision', 'vlm'\]"):
        vlaccel.apply(policy, PrecisionConfig(dtype="bfloat16", parts=("transformer",)))
    with pytest.raises(ValueError, match=r"layer=3 is outside \[0, 2\]"):
        vlaccel.apply(policy, TokenPruneConfig(keep_tokens=KEEP, layer=3))
    with pytest.raises(vlaccel.errors.MissingInputError, match="calibration observations"):
        vlaccel.apply(policy, LayerPruneConfig(keep_layers=2))
    from vlaccel.techniques.layer_prune import set_calibration_observations

    set_calibration_observations(policy, [{"input_ids": [1, 2, 3]}])
    with pytest.raises(ValueError, match="is a LeRobot batch after its preprocessor"):
        vlaccel.apply(policy, LayerPruneConfig(keep_layers=2))
    assert len(policy.model.paligemma_with_expert.gemma_expert.model.layers) == 4  # nothing half-applied
    assert vlaccel.applied_configs(policy) == []


def test_paper_fraction_preset_resolves_from_the_policy(policy):
    configs = vlaccel.presets.get("efficientvla", policy)
    assert [type(c).__name__ for c in configs] == ["LayerPruneConfig", "TokenPruneConfig", "HeadCacheConfig"]
    assert configs[0].keep_layers == 3 and configs[1].keep_tokens == 5  # round(4*22/32), max(k_key+1, 16*56/256)


def test_layout_is_read_from_embed_prefix_arguments(policy):
    adapter = vlaccel.adapters.get_adapter(policy)
    seen = []
    layer = policy.model.paligemma_with_expert.paligemma.model.language_model.layers[0]
    hook = layer.register_forward_pre_hook(lambda *a: seen.append(adapter.token_layout(policy)))
    with vlaccel.applied(policy, TokenPruneConfig(keep_tokens=KEEP, layer=K)):
        chunk(policy)
        assert adapter.token_layout(policy) is None  # dropped once the prefix ran
    hook.remove()
    language = policy.config.tokenizer_max_length
    assert len(seen) == 1 and seen[0].visual == slice(0, 32) and seen[0].instruction == slice(32, 32 + 8)
    assert seen[0].length == 32 + language
    assert "embed_prefix" not in policy.model.__dict__
