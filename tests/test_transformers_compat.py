"""The cache keyword across transformers releases, and the proof that an installed cache is the one the layers use.

transformers 5.24 renamed the forward's ``past_key_values`` to ``cache``; where both names reach a forward the
old one is dropped silently. These tests watch the attention layers themselves: the cache object each layer
received is read from its keyword arguments under either name, independently of vlaccel's helper.
"""

from __future__ import annotations

import contextlib
import inspect

import pytest
import torch
import transformers

import vlaccel
from tests.hf_models import build, hf_inputs
from vlaccel.adapters import get_adapter, hf_common
from vlaccel.memory import kv_storage_bytes
from vlaccel.techniques import KVEfficientConfig
from vlaccel.techniques.kv_efficient import ChunkedGatedCache
from vlaccel.transformers_compat import (
    CACHE_NAMES,
    cache_keyword,
    cache_kwargs,
    forward_cache,
    output_cache,
    replace_forward_cache,
)

KV = KVEfficientConfig(window=8, chunk=4, budget=2, retention="mean", protect_prefix=False)
CAP_TOKENS = 2 * 1 + 4 + 8  # budget * summary slots + chunk + window (no protected prefix)


class AttentionWatch:
    """Forward hooks on every attention module (which cache object each call received) and on the model (the
    tokens per layer and bytes that cache held after each forward, once compression has run)."""

    def __init__(self, model, attention_modules):
        self.received, self.stored, self.bytes = [], [], []
        self.handles = [m.register_forward_hook(self._after_attention, with_kwargs=True) for m in attention_modules]
        self.handles.append(model.register_forward_hook(self._after_forward))

    def _after_attention(self, module, args, kwargs, output):
        caches = [kwargs[n] for n in ("cache", "past_key_values") if kwargs.get(n) is not None]  # either release
        assert len(caches) == 1, f"attention got {len(caches)} caches"
        self.received.append(caches[0])

    def _after_forward(self, module, args, output):
        cache = self.received[-1]
        self.stored.append(max(layer.keys.shape[-2] for layer in cache.layers))
        self.bytes.append(kv_storage_bytes(cache))

    def remove(self):
        for h in self.handles:
            h.remove()


def _attention_modules(model):
    adapter = get_adapter(model)
    return [adapter.attention_module(model, layer) for layer in adapter.decoder_layers(model)]


def _cap_bytes(model, cache: ChunkedGatedCache) -> int:
    cfg = model.config.get_text_config(decoder=True)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    per_token = 2 * cfg.num_key_value_heads * head_dim * 4  # keys + values, fp32
    return len(cache.layers) * CAP_TOKENS * per_token


@pytest.mark.parametrize("family", ["llama", "paligemma", "smolvlm"])
def test_generate_runs_every_attention_layer_on_the_installed_cache(family):
    """The object every attention call of a long generate() received is the ChunkedGatedCache the technique
    built, generate() returns it, and its bytes stayed under its cap at every step (a DynamicCache grows)."""
    model = build(family)
    new_tokens = 40
    with vlaccel.applied(model, KV):
        watch = AttentionWatch(model, _attention_modules(model))
        try:
            out = model.generate(**hf_inputs(model), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 do_sample=False, return_dict_in_generate=True)
        finally:
            watch.remove()
    cache = output_cache(out)
    assert isinstance(cache, ChunkedGatedCache)
    assert all(c is cache for c in watch.received)
    n_layers = len(cache.layers)
    assert len(watch.received) == n_layers * new_tokens  # prefill + (new_tokens - 1) decode steps
    assert len(watch.stored) == new_tokens and max(watch.stored) <= CAP_TOKENS  # after every forward
    assert max(watch.bytes) <= _cap_bytes(model, cache) < 2 * kv_storage_bytes(cache)
    assert cache.get_seq_length() == hf_inputs(model)["input_ids"].shape[1] + new_tokens - 1


def test_reference_policy_attention_runs_on_the_episode_cache(tiny_policy, frames):
    """History mode: every LM attention call of an episode received the policy's own ChunkedGatedCache."""
    q = tiny_policy.config.tokens_per_frame
    cfg = KVEfficientConfig(window=q, budget=1, retention="mean")
    with vlaccel.applied(tiny_policy, cfg):
        watch = AttentionWatch(tiny_policy.language_model,
                               [layer.self_attn for layer in tiny_policy.language_model.layers])
        try:
            tiny_policy.reset("push the puck to the goal")
            for frame in frames:
                tiny_policy.step(frame, [0.0] * tiny_policy.config.proprio_dim)
        finally:
            watch.remove()
        cache = tiny_policy.cache
    assert isinstance(cache, ChunkedGatedCache)
    assert len(watch.received) == len(tiny_policy.language_model.layers) * (1 + len(frames))
    assert all(c is cache for c in watch.received)
    prefix = cache.layers[0].n_protected
    assert max(watch.stored) <= cfg.max_tokens(prefix, q)


def test_a_cache_transformers_ignores_is_an_error_not_a_fallback(monkeypatch):
    """If the cache were passed under a name the model does not read (as adding ``past_key_values`` on 5.24,
    where generate() already passes ``cache``), transformers would run on its own DynamicCache: the forward
    must raise, not return the unbounded cache."""
    model = build("llama")

    def wrong_name(module, kwargs, cache):
        other = next(n for n in CACHE_NAMES if n != cache_keyword(module))
        kwargs[other] = cache  # what the pre-5.24-only hook did: the model's own keyword keeps its cache
        kwargs.setdefault(cache_keyword(module), None)
        return kwargs

    monkeypatch.setattr(hf_common, "replace_forward_cache", wrong_name)
    with (vlaccel.applied(model, KV), _both_names_warning(model),
          pytest.raises(RuntimeError, match="instead of the ChunkedGatedCache vlaccel installed")):
        model.generate(**hf_inputs(model), max_new_tokens=4, do_sample=False)


def _both_names_warning(model):
    """5.24 warns that both names were set (and keeps ``cache``); older releases take the unknown name silently."""
    return pytest.warns(FutureWarning, match="Both") if cache_keyword(model) == "cache" else contextlib.nullcontext()


def test_cache_keyword_is_what_the_installed_release_declares():
    model = build("llama")
    name = cache_keyword(model)
    assert name == ("cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values")
    for module in (model, model.model, model.model.layers[0], model.model.layers[0].self_attn):
        assert cache_keyword(module) == name  # one release renames model, layer and attention together
    with pytest.raises(TypeError, match="takes no KV cache argument"):
        cache_keyword(torch.nn.Linear(2, 2))


def test_a_direct_forward_with_cache_kwargs_writes_that_cache_without_warnings():
    model = build("llama")
    cache = transformers.DynamicCache(config=model.config)
    ids = hf_inputs(model)["input_ids"]
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True, **cache_kwargs(model, cache))  # FutureWarning -> error
        tup = model(input_ids=ids[:, :1], use_cache=True, return_dict=False, **cache_kwargs(model, cache))
    assert output_cache(out) is cache and output_cache(tup) is cache
    assert cache.get_seq_length() == ids.shape[1] + 1


def test_forward_cache_reads_either_name_and_refuses_two_different_caches():
    a, b = object(), object()
    assert forward_cache({}) is None and forward_cache({"cache": None}) is None
    assert forward_cache({"cache": a}) is a and forward_cache({"past_key_values": a}) is a
    assert forward_cache({"cache": a, "past_key_values": a}) is a
    with pytest.raises(ValueError, match="two different KV caches"):
        forward_cache({"cache": a, "past_key_values": b})
    model = build("llama")
    kwargs = replace_forward_cache(model, {"cache": a, "past_key_values": a, "use_cache": True}, b)
    assert kwargs == {cache_keyword(model): b, "use_cache": True}


def test_the_reference_policy_has_one_vision_layout_on_every_release(tiny_policy):
    """transformers 5.5 nests SigLIP's encoder in ``.vision_model``, 5.20 does not; the policy's keys are the same."""
    from vlaccel.transformers_compat import siglip_vision_encoder

    keys = [k for k in tiny_policy.state_dict() if k.startswith("vision.")]
    assert keys and all(k.startswith(("vision.embeddings.", "vision.encoder.", "vision.post_layernorm.")) for k in keys)
    assert siglip_vision_encoder is not None and hasattr(tiny_policy.vision, "embeddings")
