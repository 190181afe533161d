"""KVEfficientConfig validation and apply-time checks: clear errors, nothing half-applied."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vlaccel
from vlaccel.adapters import get_adapter
from tests.techniques.kv_efficient.helpers import lm_history, obs_embeds, tiny_gate
from vlaccel.techniques.kv_efficient import ChunkedGatedCache, KVEfficientConfig


@pytest.mark.parametrize("kwargs,match", [
    ({"window": 0, "budget": 1}, "window must be an integer >= 1"),
    ({"window": 4.0, "budget": 1}, "window must be an integer"),
    ({"window": 4, "chunk": 0, "budget": 1}, "chunk must be an integer >= 1"),
    ({"window": 4, "budget": 1, "threshold": 0.5}, "exactly one of budget"),
    ({"window": 4}, "exactly one of budget"),
    ({"window": 4, "threshold": 0.0}, r"open interval \(0, 1\)"),
    ({"window": 4, "threshold": 1.0}, r"open interval \(0, 1\)"),
    ({"window": 4, "threshold": float("nan")}, r"open interval \(0, 1\)"),
    ({"window": 4, "budget": -1}, "budget must be an integer >= 0"),
    ({"window": 4, "chunk": 2, "summary_slots": 3, "budget": 1}, "smaller than its chunk"),
    ({"window": 4, "summary_slots": 0, "budget": 1}, "summary_slots must be"),
    ({"window": 4, "budget": 1, "retention": "lru"}, "retention must be one of"),
    ({"window": 4, "retention": "random"}, "pass budget=M"),
    ({"window": 4, "retention": "h2o"}, "pass budget=M"),
    ({"window": 4, "retention": "mean", "threshold": 0.5}, "only used by retention='gated'"),
    ({"window": 4, "retention": "streaming", "budget": 2}, "keeps no summaries"),
    ({"window": 4, "retention": "mean", "gate": "x"}, "only used by retention='gated'"),
    ({"window": 4, "budget": 1, "sinks": -1}, "sinks must be"),
])
def test_invalid_configs_say_how_to_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KVEfficientConfig(**kwargs)


def test_config_round_trips_and_neutrality(tiny_policy):
    cfg = KVEfficientConfig(window=32, budget=4, gate="some/gate")
    assert vlaccel.config_from_dict(cfg.to_dict()) == cfg
    limit = tiny_policy.language_model.config.max_position_embeddings
    assert KVEfficientConfig(window=limit, budget=1, retention="mean").is_neutral(tiny_policy, get_adapter(tiny_policy))
    assert KVEfficientConfig(window=1, retention="full").is_neutral(tiny_policy, get_adapter(tiny_policy))
    assert not KVEfficientConfig(window=limit - 1, budget=1, retention="mean").is_neutral(tiny_policy, get_adapter(tiny_policy))


def _nothing_applied(policy):
    assert vlaccel.applied_configs(policy) == [] and policy.cache_factory is None


def test_non_rope_model_refuses_summaries(tiny_policy):
    tiny_policy.language_model.rotary_emb = None  # an LM without rotary position embeddings
    with pytest.raises(ValueError, match="RoPE"):
        vlaccel.apply(tiny_policy, KVEfficientConfig(window=18, budget=2, retention="mean"))
    _nothing_applied(tiny_policy)
    with vlaccel.applied(tiny_policy, KVEfficientConfig(window=18, retention="streaming")):  # no re-rotation needed
        pass


def test_missing_gate_says_how_to_get_one(tiny_policy):
    with pytest.raises((FileNotFoundError, ValueError), match="train-kv-gate"):
        vlaccel.apply(tiny_policy, KVEfficientConfig(window=18, budget=2))  # no gate shipped for a random policy
    _nothing_applied(tiny_policy)
    with pytest.raises(FileNotFoundError, match="train-kv-gate"):
        vlaccel.apply(tiny_policy, KVEfficientConfig(window=18, budget=2, gate="/nonexistent/gate"))
    _nothing_applied(tiny_policy)


def test_summary_larger_than_the_frame_chunk(tiny_policy):
    with pytest.raises(ValueError, match="smaller than its chunk"):
        vlaccel.apply(tiny_policy, KVEfficientConfig(window=18, budget=1, summary_slots=19, retention="mean"))
    _nothing_applied(tiny_policy)


def test_plain_lm_needs_explicit_chunk_and_models_need_an_adapter():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(ValueError, match="pass chunk=N"):
        ChunkedGatedCache.for_model(model, KVEfficientConfig(window=4, budget=1, retention="mean"))
    with pytest.raises(ValueError, match="pass chunk=N"):  # a plain LM has no observations to chunk by
        vlaccel.apply(model, KVEfficientConfig(window=4, budget=1, retention="mean"))
    assert vlaccel.applied_configs(model) == [] and not model._forward_pre_hooks
    with pytest.raises(TypeError, match="no adapter"):
        vlaccel.apply(torch.nn.Linear(2, 2), KVEfficientConfig(window=4, chunk=2, budget=1, retention="mean"))


def test_token_pruning_is_refused(tiny_policy):
    token_prune = pytest.importorskip("vlaccel.techniques.token_prune")
    kv = KVEfficientConfig(window=18, budget=1, retention="mean")
    with pytest.raises(ValueError, match="TokenPruneConfig"):
        vlaccel.apply(tiny_policy, token_prune.TokenPruneConfig(keep_tokens=6, layer=1, method="random"), kv)
    _nothing_applied(tiny_policy)
    with vlaccel.applied(tiny_policy, token_prune.TokenPruneConfig(keep_tokens=6, layer=1, method="random")):
        with pytest.raises(ValueError, match="TokenPruneConfig"):
            vlaccel.apply(tiny_policy, kv)
        assert tiny_policy.cache_factory is None
    with vlaccel.applied(tiny_policy, kv):  # the other order, in a second apply: refused before anything changes
        with pytest.raises(ValueError, match="TokenPruneConfig cannot be added"):
            vlaccel.apply(tiny_policy, token_prune.TokenPruneConfig(keep_tokens=6, layer=1, method="random"))
        assert [type(c).__name__ for c in vlaccel.applied_configs(tiny_policy)] == ["KVEfficientConfig"]


def test_runtime_guard_against_layers_storing_different_tokens(tiny_policy):
    """Whatever the route, a forward in which layers receive different numbers of tokens is refused."""
    from vlaccel.techniques.kv_efficient.cache import TokenCountMismatchError

    cache = ChunkedGatedCache.for_model(tiny_policy, KVEfficientConfig(window=18, budget=1, retention="mean"))
    k = torch.zeros(1, 2, 5, 16)
    cache.update(k, k, 0)
    with pytest.raises(TokenCountMismatchError, match="TokenPruneConfig"):
        cache.update(k[:, :, :3], k[:, :, :3], 1)


def test_layer_pruning_composes(tiny_policy):
    layer_prune = pytest.importorskip("vlaccel.techniques.layer_prune")
    q = tiny_policy.config.tokens_per_frame
    kv = KVEfficientConfig(window=q, budget=2, retention="mean")
    with vlaccel.applied(tiny_policy, layer_prune.LayerPruneConfig(keep_layers=3, method="last"), kv):
        cog = lm_history(tiny_policy, obs_embeds(tiny_policy, 5))
        assert len(tiny_policy.cache.layers) == 3 and tiny_policy.cache.retained_chunks() == [2, 3]
        assert torch.isfinite(cog).all()
    _nothing_applied(tiny_policy)


def test_gated_with_layer_pruning_in_one_call(tiny_policy):
    """The gate's fingerprint is checked on the policy as validation sees it (before the pruning in the same call)."""
    layer_prune = pytest.importorskip("vlaccel.techniques.layer_prune")
    q = tiny_policy.config.tokens_per_frame
    kv = KVEfficientConfig(window=q, budget=2, gate=tiny_gate(tiny_policy))
    with vlaccel.applied(tiny_policy, layer_prune.LayerPruneConfig(keep_layers=3, method="last"), kv):
        tiny_policy.reset("reach the goal")
        for _ in range(4):
            assert np.isfinite(tiny_policy.step(np.zeros((32, 32, 3), np.uint8), np.zeros(4, np.float32))).all()
        assert len(tiny_policy.cache.layers) == 3


@pytest.mark.parametrize("preset", ["kv-efficient", "kv-streaming"])
def test_presets_keep_the_first_frames_the_bundled_policy_was_trained_with(preset):
    """The presets' sinks are exactly the frames every training window of the bundled policy begins with
    (``train-reference --window-anchor``), and the shipped gate was trained with the preset's cache layout."""
    import json
    from importlib import resources

    from vlaccel.models import ReferenceVLA, ReferenceVLAConfig
    from vlaccel.techniques.kv_efficient.resolve import shipped_gate_dir

    folder = resources.files("vlaccel") / "assets" / "reference"
    card = json.loads((folder / "model_card.json").read_text())
    config = ReferenceVLAConfig(**json.loads((folder / "config.json").read_text()))
    (kv,) = vlaccel.presets.get(preset, ReferenceVLA(config))  # window and sinks in this policy's frames
    assert kv.sinks == card["training"]["window_anchor"] * config.tokens_per_frame
    if kv.retention == "gated":
        trained = json.loads((shipped_gate_dir() / "gate.json").read_text())["kv"]
        assert (trained["sinks"], trained["window"]) == (kv.sinks, kv.window)  # (training keeps every summary)
