"""Adapters for transformers VLMs and decoder LMs (issue 7): what they find, and what techniques do through them.

The shared contract (neutral bit-identical, remove() restores, FLOPs cut, per-sequence reset) runs on these
families in tests/contract; this file checks the adapter-specific facts.
"""

from __future__ import annotations

import pytest
import torch

import vlaccel
from tests.hf_models import FAMILIES, IMAGE_TOKEN, VISUAL_TOKENS, build, generate_logits, hf_inputs
from vlaccel.adapters import UnsupportedModelError, get_adapter, supported_models
from vlaccel.adapters.hf_vlm import layout_from_ids
from vlaccel.techniques import KVEfficientConfig, LayerPruneConfig, TokenPruneConfig
from vlaccel.techniques.kv_efficient import ChunkedGatedCache
from vlaccel.techniques.layer_prune import set_calibration_observations
from vlaccel.transformers_compat import cache_kwargs, output_cache

VLMS = [f for f in FAMILIES if f in VISUAL_TOKENS]
DECODER = {"paligemma": "model.language_model", "llava": "model.language_model", "smolvlm": "model.text_model",
           "llama": "model", "qwen2": "model", "gemma": "model"}


def _attr(obj, path):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_finds_the_decoder_and_its_text_config(family):
    model = build(family)
    adapter = get_adapter(model)
    assert adapter.decoder_owner(model) is _attr(model, DECODER[family])
    assert adapter.lm_config(model) is model.config.get_text_config(decoder=True)


@pytest.mark.parametrize("family", VLMS)
def test_visual_tokens_come_from_the_config_and_match_the_model(family):
    model = build(family)
    n = get_adapter(model).visual_tokens(model)
    assert n == VISUAL_TOKENS[family]
    inputs = hf_inputs(model)
    with torch.no_grad():  # the model itself accepts exactly n image tokens for one image
        model(**inputs)
        ids = inputs["input_ids"]
        extra = torch.cat([ids[:, :1], torch.full((1, 1), IMAGE_TOKEN), ids[:, 1:]], dim=1)
        with pytest.raises(ValueError, match=r"image>? tokens"):  # transformers' message, e.g. "Image features and image tokens do not match"
            model(**{**inputs, "input_ids": extra, "attention_mask": torch.ones_like(extra),
                     **({"token_type_ids": torch.zeros_like(extra)} if "token_type_ids" in inputs else {})})


def test_llava_full_strategy_counts_the_cls_token():
    model = build("llava")
    model.config.vision_feature_select_strategy = "full"
    assert get_adapter(model).visual_tokens(model) == VISUAL_TOKENS["llava"] + 1


def test_layout_from_input_ids():
    img = [IMAGE_TOKEN] * 4
    lay = layout_from_ids(torch.tensor([[1, 2] + img + [3, 4, 5]]), IMAGE_TOKEN, 4)
    assert (lay.kind, lay.visual, lay.instruction, lay.length) == ("observation", slice(2, 6), slice(6, 9), 9)
    lay = layout_from_ids(torch.tensor([[1, 2] + img]), IMAGE_TOKEN, 4)  # image last: the text before it
    assert lay.instruction == slice(0, 2)
    assert layout_from_ids(torch.tensor([[1, 2, 3]]), IMAGE_TOKEN, 4).kind == "text"
    with pytest.raises(ValueError, match="one image per sequence"):
        layout_from_ids(torch.tensor([img[:2] + [1] + img[:2]]), IMAGE_TOKEN, 4)
    with pytest.raises(ValueError, match="one image per sequence"):
        layout_from_ids(torch.tensor([img + [1] + img]), IMAGE_TOKEN, 4)
    with pytest.raises(ValueError, match="same positions in every row"):
        layout_from_ids(torch.tensor([[0] + img + [1], img + [1, 2]]), IMAGE_TOKEN, 4)


@pytest.mark.parametrize("family", VLMS)
def test_token_pruning_shortens_layers_after_k_and_keeps_the_text(family):
    model = build(family)
    inputs = hf_inputs(model)
    t = inputs["input_ids"].shape[1]
    lengths = []
    hooks = [layer.register_forward_pre_hook(lambda m, a, kw: lengths.append((a[0] if a else kw["hidden_states"]).shape[1]),
                                             with_kwargs=True) for layer in get_adapter(model).decoder_layers(model)]
    with vlaccel.applied(model, TokenPruneConfig(keep_tokens=6, layer=1)):
        with torch.no_grad():
            logits = model(**inputs).logits
    for h in hooks:
        h.remove()
    n = VISUAL_TOKENS[family]
    assert lengths == [t, t, t - n + 6, t - n + 6]  # layers 0..K=1 see every token, later ones the kept ones
    assert logits.shape[1] == t - n + 6  # outputs cover the kept positions; the last one is the prompt's last


@pytest.mark.parametrize("family", VLMS)
def test_token_pruned_generate_decodes_like_a_full_recompute(family):
    """Decode steps attend to the pruned cache of layers > K through the remapped mask: with the random method
    (same subset at every sequence start), each step's logits equal a cache-free forward over the whole text."""
    model = build(family)
    inputs = hf_inputs(model)
    t = inputs["input_ids"].shape[1]
    with vlaccel.applied(model, TokenPruneConfig(keep_tokens=6, layer=1, method="random")):
        out = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, bad_words_ids=[[IMAGE_TOKEN]])
        for step, logits in enumerate(out.logits):
            seq = out.sequences[:, : t + step]
            kwargs = {**inputs, "input_ids": seq, "attention_mask": torch.ones_like(seq)}
            if "token_type_ids" in inputs:  # PaliGemma: the prompt is the prefix (0), generated text the suffix (1)
                kwargs["token_type_ids"] = (torch.arange(seq.shape[1]) >= t).long()[None]
            with torch.no_grad():
                recompute = model(**kwargs, use_cache=False).logits[:, -1]
            torch.testing.assert_close(logits, recompute, atol=1e-5, rtol=1e-4)


def test_token_pruned_batch_matches_each_prompt_alone():
    model = build("llava")
    a, b = hf_inputs(model, 0), hf_inputs(model, 1)
    batch = {k: torch.cat([a[k], b[k]]) for k in a}
    with vlaccel.applied(model, TokenPruneConfig(keep_tokens=6, layer=1)), torch.no_grad():
        together = model(**batch).logits[:, -1]
        alone = torch.cat([model(**a).logits[:, -1], model(**b).logits[:, -1]])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["paligemma", "smolvlm", "qwen2"])
def test_kv_efficient_cache_runs_generate_under_its_cap(family):
    model = build(family)
    cfg = KVEfficientConfig(window=8, chunk=4, budget=2, retention="mean", protect_prefix=False)
    with vlaccel.applied(model, cfg):
        out = model.generate(**hf_inputs(model), max_new_tokens=12, min_new_tokens=12, do_sample=False,
                             return_dict_in_generate=True)
    cache = output_cache(out)
    assert isinstance(cache, ChunkedGatedCache)
    total = hf_inputs(model)["input_ids"].shape[1] + 12 - 1  # the last generated token is never fed back
    assert cache.get_seq_length() == total  # logical positions: every token seen
    cap = 2 * 1 + 4 + 8  # budget * summary_slots + chunk + window tokens (no protected prefix)
    assert all(layer.keys.shape[-2] <= cap for layer in cache.layers)
    assert not model._forward_pre_hooks  # remove() took the cache factory away


def test_kv_efficient_leaves_a_callers_cache_alone():
    model = build("llama")
    cfg = KVEfficientConfig(window=8, chunk=4, budget=2, retention="mean", protect_prefix=False)
    mine = ChunkedGatedCache.for_model(model, cfg)
    with vlaccel.applied(model, cfg):
        out = model.generate(**hf_inputs(model), **cache_kwargs(model, mine), max_new_tokens=4, do_sample=False,
                             return_dict_in_generate=True)
    assert output_cache(out) is mine and mine.get_seq_length() > 0


@pytest.mark.parametrize("family", VLMS)
def test_layer_pruning_with_user_calibration_batches(family):
    model = build(family)
    base = generate_logits(model)
    set_calibration_observations(model, [hf_inputs(model, seed=s) for s in (5, 6)])
    with vlaccel.applied(model, LayerPruneConfig(keep_layers=2), TokenPruneConfig(keep_tokens=8, layer=0)):
        assert model.config.text_config.num_hidden_layers == 2
        assert len(get_adapter(model).decoder_layers(model)) == 2
        pruned = generate_logits(model)
    assert pruned.shape == base.shape and not (pruned == base).all()
    assert model.config.text_config.num_hidden_layers == 4
    assert (generate_logits(model) == base).all()


def test_register_vlm_serves_another_class_shaped_like_one_we_support():
    import transformers as tf

    from vlaccel.adapters import hf_vlm

    class MyVLM(tf.LlavaForConditionalGeneration):  # a subclass with a new name: not served until registered
        pass

    MyVLM.__module__ = "transformers.models.llava.my_vlm"
    model = MyVLM(build("llava").config).eval()
    with pytest.raises(UnsupportedModelError, match="MyVLM"):
        get_adapter(model)
    hf_vlm.register_vlm("MyVLM", "model.language_model", hf_vlm.llava_tokens)
    try:
        assert get_adapter(model).visual_tokens(model) == VISUAL_TOKENS["llava"]
        assert any("MyVLM" in name for name in supported_models())
    finally:
        del hf_vlm.VLMS["MyVLM"], hf_vlm.HFVLMAdapter.DECODER_PATH["MyVLM"]
        hf_vlm.HFVLMAdapter.model_names = hf_vlm.HFVLMAdapter.model_names[:-1]


def test_unsupported_model_lists_supported_and_how_to_add_one():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    with pytest.raises(UnsupportedModelError, match="no adapter for GPT2LMHeadModel") as err:
        vlaccel.apply(model, LayerPruneConfig(keep_layers=1))
    for name in ("PaliGemmaForConditionalGeneration", "LlavaForConditionalGeneration",
                 "SmolVLMForConditionalGeneration", "LlamaForCausalLM", "Qwen2ForCausalLM", "GemmaForCausalLM"):
        assert name in str(err.value) and any(name in s for s in supported_models())
    assert "register_adapter" in str(err.value) and "docs/adapters.md" in str(err.value)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_plain_lms_refuse_token_pruning_clearly(family):
    model = build(family)
    with pytest.raises(ValueError, match="TokenPruneConfig needs visual tokens in its LM input"):
        vlaccel.apply(model, TokenPruneConfig(keep_tokens=6, layer=1))
    assert vlaccel.applied_configs(model) == []


@pytest.mark.parametrize("family", ["paligemma", "llava"])
def test_layer_pruning_and_kv_efficient_compose_in_one_apply(family):
    model = build(family)
    set_calibration_observations(model, [hf_inputs(model, seed=s) for s in (5, 6)])
    kv = KVEfficientConfig(window=8, chunk=4, budget=2, retention="mean", protect_prefix=False)
    with vlaccel.applied(model, LayerPruneConfig(keep_layers=2), kv):
        out = model.generate(**hf_inputs(model), max_new_tokens=6, min_new_tokens=6, do_sample=False,
                             return_dict_in_generate=True)
        assert isinstance(output_cache(out), ChunkedGatedCache) and len(output_cache(out).layers) == 2
        with pytest.raises(ValueError, match="TokenPruneConfig"):  # layers would store different tokens
            vlaccel.apply(model, TokenPruneConfig(keep_tokens=6, layer=0))
    assert vlaccel.applied_configs(model) == [] and model.config.text_config.num_hidden_layers == 4


def test_token_pruning_refuses_a_forward_with_only_inputs_embeds():
    """Without input_ids the image tokens cannot be found: an error, not a forward that silently prunes nothing."""
    model = build("paligemma")
    inputs = hf_inputs(model)
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    with vlaccel.applied(model, TokenPruneConfig(keep_tokens=6, layer=1)):
        with pytest.raises(ValueError, match="got only inputs_embeds"):
            model(inputs_embeds=embeds)
    model(inputs_embeds=embeds)  # fine once removed
