"""LeRobot's SmolVLA (``SmolVLAPolicy``, tiny random build, lerobot 0.6.1): every technique through ``vlaccel.apply``
on the policy itself, and what SmolVLA's own layer loop demands of each (the shared contract in tests/contract
runs them too). Tests needing LeRobot skip where it is not installed."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

import vlaccel
from tests.lerobot.helpers import leftovers
from vlaccel.api import resolve_configs
from vlaccel.bench.flops import count_flops
from vlaccel.techniques import (CompileConfig, DenoiseStepsConfig, HeadCacheConfig, KVEfficientConfig,
                                LayerPruneConfig, PrecisionConfig, TokenPruneConfig)
from vlaccel.techniques.cross_kv_reuse import CrossKVReuseConfig

N = 16  # image tokens per camera of the tiny build (64 px, patch 8, x2 pixel shuffle)


@functools.lru_cache(maxsize=1)
def _master():
    pytest.importorskip("lerobot")
    from vlaccel.models.lerobot_smolvla import build_smolvla

    torch.set_num_threads(1)
    return build_smolvla("tiny")


@pytest.fixture
def policy():
    pytest.importorskip("lerobot")
    return copy.deepcopy(_master())


def chunk(policy, seed: int = 0) -> torch.Tensor:
    from vlaccel.models.lerobot_smolvla import smolvla_batch, smolvla_noise

    return policy.predict_action_chunk(smolvla_batch(policy, seed), noise=smolvla_noise(policy, seed))


def calibrate(policy) -> None:
    from vlaccel.models.lerobot_smolvla import smolvla_batch
    from vlaccel.techniques.layer_prune import set_calibration_observations

    set_calibration_observations(policy, [smolvla_batch(policy, s) for s in (11, 12)])


NEUTRAL = {
    "denoise_steps": lambda p: DenoiseStepsConfig(steps=p.config.num_steps),
    "layer_prune": lambda p: LayerPruneConfig(keep_layers=4),
    "token_prune": lambda p: TokenPruneConfig(keep_tokens=N, layer=0),
    "head_cache": lambda p: HeadCacheConfig(interval=1),
    "precision": lambda p: PrecisionConfig(dtype="float32"),
    "compile": lambda p: CompileConfig(backend="eager"),  # the whole sample_actions, as LeRobot's compile_model
    "cross_kv_reuse": lambda p: CrossKVReuseConfig(enabled=False),
}
LOSSY = {
    "denoise_steps": lambda p: DenoiseStepsConfig(steps=4),
    "layer_prune": lambda p: LayerPruneConfig(keep_layers=2, mlp_prune_ratio=0.25),
    **{f"token_prune_{m}": (lambda p, m=m: TokenPruneConfig(keep_tokens=6, layer=0, method=m))
       for m in ("efficientvla", "fastv", "random", "diversity")},
    "head_cache": lambda p: HeadCacheConfig(interval=5),
    "precision": lambda p: PrecisionConfig(dtype="bfloat16"),
}


@pytest.mark.parametrize("name", sorted(NEUTRAL))
def test_neutral_settings_are_bit_identical(policy, name):
    calibrate(policy)
    base = chunk(policy)
    cfg = NEUTRAL[name](policy)
    assert name == "compile" or cfg.is_neutral(policy, vlaccel.adapters.get_adapter(policy))  # eager: exact
    with vlaccel.applied(policy, cfg):
        assert torch.equal(chunk(policy), base)
    assert torch.equal(chunk(policy), base)


@pytest.mark.parametrize("name", sorted(LOSSY))
def test_lossy_settings_change_outputs_cut_flops_and_remove_exactly(policy, name):
    calibrate(policy)
    state = {k: v.clone() for k, v in policy.state_dict().items()}
    base = chunk(policy)
    base_flops, _ = count_flops(lambda: chunk(policy))
    clean = leftovers(policy)
    handle = vlaccel.apply(policy, LOSSY[name](policy))
    out = chunk(policy)
    flops, _ = count_flops(lambda: chunk(policy))
    assert torch.isfinite(out).all()
    assert not torch.equal(out, base)
    if name == "precision":
        assert flops == base_flops
    else:
        assert flops < base_flops
    handle.remove()
    assert torch.equal(chunk(policy), base)
    assert leftovers(policy) == clean
    after = policy.state_dict()
    assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state)


def test_cross_kv_reuse_is_bit_identical_and_cuts_flops(policy):
    base = chunk(policy)
    base_flops, _ = count_flops(lambda: chunk(policy))
    with vlaccel.applied(policy, CrossKVReuseConfig()):
        assert torch.equal(chunk(policy), base)
        assert torch.equal(chunk(policy, 1), _master_chunk(1))  # a new prefix is projected afresh
        assert torch.equal(chunk(policy), base)
        flops, _ = count_flops(lambda: chunk(policy))
    assert flops < base_flops
    assert torch.equal(chunk(policy), base)


def _master_chunk(seed: int) -> torch.Tensor:
    return chunk(copy.deepcopy(_master()), seed)


def test_cross_kv_reuse_stacks_with_lossy_techniques(policy):
    """Reuse on top of the head cache, fewer steps and token pruning changes nothing of their output."""
    cfgs = [HeadCacheConfig(interval=3), DenoiseStepsConfig(steps=6), TokenPruneConfig(keep_tokens=8, layer=0)]
    with vlaccel.applied(policy, *cfgs):
        lossy = chunk(policy)
    with vlaccel.applied(policy, *cfgs, CrossKVReuseConfig()):
        assert torch.equal(chunk(policy), lossy)


def test_everything_together_and_deep_copy_is_independent(policy):
    calibrate(policy)
    base = chunk(policy)
    handle = vlaccel.apply(policy, LayerPruneConfig(keep_layers=2), TokenPruneConfig(keep_tokens=8, layer=0),
                           HeadCacheConfig(interval=2), DenoiseStepsConfig(steps=5), CrossKVReuseConfig())
    twin = copy.deepcopy(policy)
    accelerated = chunk(policy)
    assert torch.isfinite(accelerated).all() and not torch.equal(accelerated, base)
    assert torch.equal(chunk(twin), accelerated)
    handle.remove()
    assert torch.equal(chunk(policy), base)
    assert torch.equal(chunk(twin), accelerated)  # the copy's techniques are its own
    vlaccel.handle_for(twin).remove()
    assert torch.equal(chunk(twin), base)


def test_compile_compiles_the_sampler_as_one_method_and_removes(policy):
    from vlaccel.techniques.compile import CompiledForward

    with vlaccel.applied(policy, CompileConfig(backend="eager")):
        compiled = policy.model.__dict__["sample_actions"]
        assert isinstance(compiled, CompiledForward) and compiled.method == "sample_actions"
        chunk(policy)
        assert compiled.compiled is not None
    assert "sample_actions" not in policy.model.__dict__
    with pytest.raises(ValueError, match=r"its parts are \['sampler'\]"):
        vlaccel.apply(policy, CompileConfig(parts=("vision",)))


def test_adapter_reads_sizes_from_the_policy(policy):
    adapter = vlaccel.adapters.get_adapter(policy)
    assert type(adapter).__name__ == "SmolVLAAdapter"
    assert adapter.visual_tokens(policy) == N
    assert adapter.inference_steps(policy) == policy.config.num_steps == 10
    assert adapter.layer_groups(policy) == [[0, 1], [2, 3]]
    assert sorted(adapter.module_parts(policy)) == ["expert", "vision", "vlm"]


def test_layer_pruning_drops_aligned_pairs(policy):
    calibrate(policy)
    joint = policy.model.vlm_with_expert
    layers = list(joint.get_vlm_model().text_model.layers)
    expert = list(joint.lm_expert.layers)
    with vlaccel.applied(policy, LayerPruneConfig(keep_layers=2)) as handle:
        (_, state), = handle._entries
        assert state.kept in ([0, 1], [2, 3])
        assert joint.num_vlm_layers == joint.num_expert_layers == 2
        assert list(joint.lm_expert.layers) == [expert[i] for i in state.kept]
        assert list(joint.get_vlm_model().text_model.layers) == [layers[i] for i in state.kept]
        assert torch.isfinite(chunk(policy)).all()
    assert joint.num_vlm_layers == joint.num_expert_layers == 4
    resolved = resolve_configs(policy, LayerPruneConfig(keep_fraction=0.6))[0]
    assert resolved.keep_layers == 2  # 2.4 layers -> the nearest whole pair


def test_calibration_takes_raw_observations(policy):
    from vlaccel.models.lerobot_smolvla import smolvla_observation
    from vlaccel.techniques.layer_prune import set_calibration_observations

    set_calibration_observations(policy, [smolvla_observation(policy, s) for s in (3, 4)])
    with vlaccel.applied(policy, LayerPruneConfig(keep_layers=2)):
        assert torch.isfinite(chunk(policy)).all()


def test_unsupported_settings_name_the_reason(policy):
    calibrate(policy)
    with pytest.raises(ValueError, match="aligned groups of 2.*keep_layers="):
        vlaccel.apply(policy, LayerPruneConfig(keep_layers=3))
    with pytest.raises(ValueError, match="own layer loop.*use layer=0"):
        vlaccel.apply(policy, TokenPruneConfig(keep_tokens=6, layer=2))
    with pytest.raises(Exception, match="KV cache vlaccel can give a cache factory to"):
        vlaccel.apply(policy, KVEfficientConfig(window=8, retention="streaming"))
    policy.config.add_image_special_tokens = True
    with pytest.raises(NotImplementedError, match="add_image_special_tokens=False"):
        vlaccel.apply(policy, TokenPruneConfig(keep_tokens=6, layer=0))
    assert vlaccel.applied_configs(policy) == []


def test_builder_reuses_a_valid_folder_and_rewrites_a_broken_one(tmp_path):
    pytest.importorskip("lerobot")
    from vlaccel.models.lerobot_smolvla import vlm_folder

    folder = vlm_folder("tiny", tmp_path / "smolvla-tiny")
    stamp = (folder / "config.json").stat().st_mtime_ns
    assert vlm_folder("tiny", folder) == folder and (folder / "config.json").stat().st_mtime_ns == stamp
    (folder / "tokenizer.json").unlink()
    assert vlm_folder("tiny", folder) == folder and (folder / "tokenizer.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["smolvla-tiny"]  # no temporary folder left behind


def test_efficientvla_preset_applies(policy):
    """The EfficientVLA preset (layers, tokens with layer=None -> 0 here, head cache) resolves against SmolVLA."""
    calibrate(policy)
    base = chunk(policy)
    configs = vlaccel.presets.get("efficientvla", policy)
    with vlaccel.applied(policy, *configs) as handle:
        token = [c for c in handle.configs if isinstance(c, TokenPruneConfig)]
        assert all(c.layer == 0 for c in token)
        layer = [c for c in handle.configs if isinstance(c, LayerPruneConfig)]
        assert all(c.keep_layers % 2 == 0 for c in layer)
        out = chunk(policy)
    assert torch.isfinite(out).all() and not torch.equal(out, base)


def test_cross_kv_reuse_under_inference_mode(policy):
    with torch.inference_mode():
        base = chunk(policy)
        with vlaccel.applied(policy, CrossKVReuseConfig()):
            assert torch.equal(chunk(policy), base)
