"""``vlaccel presets``: what each preset resolves to, for a reference policy and for a transformers VLM config."""

from __future__ import annotations

import json

import pytest

from vlaccel.cli import main


def test_presets_table_for_the_tiny_reference_policy(capsys):
    assert main(["presets", "--policy", "tiny", "--json"]) == 0
    rows = {r["preset"]: r for r in json.loads(capsys.readouterr().out)["presets"]}
    assert rows["efficientvla"]["resolves_to"] == ["LayerPruneConfig(keep_layers=3, mlp_prune_ratio=0.25)",
                                                   "TokenPruneConfig(keep_tokens=5, layer=1)", "HeadCacheConfig()"]
    assert rows["kv-efficient"]["resolves_to"] == ["KVEfficientConfig(window=36, budget=4, sinks=36)"]  # 18-token frames
    assert all(not r["left_out"] for name, r in rows.items() if name != "cross-kv")
    assert "re-projects a cached prefix" in rows["cross-kv"]["left_out"]["CrossKVReuseConfig"]  # SmolVLA's alone


def test_presets_table_for_a_paligemma_config(tmp_path, capsys):
    import transformers as tf

    vision = tf.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                   image_size=64, patch_size=4)  # 256 image tokens
    text = tf.GemmaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=18,
                          num_attention_heads=4, num_key_value_heads=1, head_dim=16)
    config = tf.PaliGemmaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=127,
                                vocab_size=128, projection_dim=64, hidden_size=64)
    config.architectures = ["PaliGemmaForConditionalGeneration"]
    config.save_pretrained(tmp_path)
    assert main(["presets", "--policy", str(tmp_path), "--preset", "efficientvla", "kv-efficient", "--json"]) == 0
    rows = {r["preset"]: r for r in json.loads(capsys.readouterr().out)["presets"]}
    assert rows["efficientvla"]["resolves_to"] == ["LayerPruneConfig(keep_layers=12, mlp_prune_ratio=0.25)",
                                                   "TokenPruneConfig(keep_tokens=56)"]
    assert "flow-matching action head" in rows["efficientvla"]["left_out"]["HeadCacheConfig"]
    assert rows["kv-efficient"]["resolves_to"] == [] and "frames" in rows["kv-efficient"]["left_out"]["KVEfficientConfig"]


def test_unknown_presets_and_policies_are_usage_errors(capsys):
    assert main(["presets", "--policy", "tiny", "--preset", "nope"]) == 2
    assert "unknown preset(s) ['nope']" in capsys.readouterr().err
    assert main(["presets", "--policy", "/no/such/folder"]) == 2


def test_a_preset_function_without_description_is_refused():
    import vlaccel

    vlaccel.presets.PRESETS.register("undescribed", list)
    try:
        with pytest.raises(TypeError, match="describe_as"):
            vlaccel.presets.describe()
    finally:
        vlaccel.presets.PRESETS.unregister("undescribed")
