"""Your own LeRobot policy in vlaccel's commands: ``vlaccel presets --policy`` and ``vlaccel bench --model`` take a
LeRobot policy folder as LeRobot saves it, and the named published-size LeRobot models."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("lerobot")
pytest.importorskip("metaworld")

from vlaccel.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def policy_folder(tmp_path_factory):
    from lerobot.envs.configs import MetaworldEnv

    from vlaccel.integrations.lerobot_folder import write_smolvla_folder

    return write_smolvla_folder(tmp_path_factory.mktemp("lerobot") / "smolvla", MetaworldEnv(task="push-v3"))


def test_presets_resolve_for_a_lerobot_policy_folder(policy_folder, capsys):
    assert main(["presets", "--policy", str(policy_folder), "--preset", "efficientvla", "head-cache", "--json"]) == 0
    rows = {r["preset"]: r for r in json.loads(capsys.readouterr().out)["presets"]}
    assert rows["head-cache"]["resolves_to"] == ["HeadCacheConfig()"]
    assert any(c.startswith("TokenPruneConfig(") for c in rows["efficientvla"]["resolves_to"])


@pytest.mark.parametrize("model, keep_tokens", [("lerobot-smolvla", 14), ("lerobot-pi05", 56)])
def test_presets_size_the_published_models_without_allocating(model, keep_tokens, capsys):
    """On the meta device: the published sizes (64 tokens per SmolVLA camera, 256 per pi0.5 camera)."""
    assert main(["presets", "--policy", model, "--preset", "efficientvla-tokens", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["presets"]
    # SmolVLA's resolves with layer=0 (its tokens are pruned before the VLM), pi0.5's at the default layer
    assert any(c.startswith(f"TokenPruneConfig(keep_tokens={keep_tokens}") for c in row["resolves_to"]), row


def test_the_vocab1k_pi05_has_the_published_compute_in_less_memory():
    """lerobot-pi05-vocab1k: every tensor of the published model except the vocabulary's, on the meta device."""
    import torch

    from vlaccel.bench.flow_subjects import build_model

    with torch.device("meta"):
        full, small = build_model("lerobot-pi05"), build_model("lerobot-pi05-vocab1k")
    full_shapes = {k: tuple(v.shape) for k, v in full.state_dict().items()}
    small_shapes = {k: tuple(v.shape) for k, v in small.state_dict().items()}
    differ = {k for k in full_shapes if full_shapes[k] != small_shapes.get(k)}
    assert set(full_shapes) == set(small_shapes) and differ and all(257_152 in full_shapes[k] for k in differ)
    assert all(1024 in small_shapes[k] for k in differ)
    # the counts docs/lerobot.md gives: the VLM's embeddings and lm_head (untied) and the expert's lm_head
    vocabulary = sum(math.prod(full_shapes[k]) for k in differ)
    assert vocabulary == 257_152 * (2048 + 2048 + 1024)
    total = sum(p.numel() for p in full.parameters())
    assert round(total / 1e9, 2) == 4.14 and round((total - vocabulary) / 1e9, 2) == 2.83


def test_bench_takes_a_lerobot_policy_folder(policy_folder, tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", str(policy_folder), "--preset", "head-cache", "--repeats", "1", "--warmup", "0",
                 "--threads", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["class"] == "SmolVLAPolicy" and result["cameras"] == 1
    assert result["settings"]["head-cache"]["flops"]["expert"] < result["baseline"]["flops"]["expert"]


def test_bench_refuses_a_folder_that_is_no_flow_policy(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"type": "act"}))
    assert main(["bench", "--model", str(tmp_path), "--repeats", "1"]) == 2
    assert "smolvla / pi0 / pi05" in capsys.readouterr().err
