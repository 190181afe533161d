"""``vlaccel bench --model``: every part of a flow-matching VLA is timed and counted, and each setting's savings show."""

from __future__ import annotations

import pytest

from vlaccel.bench.flow_bench import run_flow_bench, to_markdown


def test_pi0_bench_reports_each_settings_savings():
    result = run_flow_bench("pi0-tiny", ("efficientvla-tokens", "head-cache"), repeats=1, warmup=0, log=lambda _: None)
    base, tokens, cache = result["baseline"], result["settings"]["efficientvla-tokens"], result["settings"]["head-cache"]
    assert "error" not in tokens and "error" not in cache, (tokens.get("error"), cache.get("error"))
    assert all(base["latency_s"][p] > 0 for p in ("e2e", "vision", "prefix", "expert"))
    assert tokens["prefix_kv_bytes"] < base["prefix_kv_bytes"]  # pruned tokens leave layers > K's cache
    assert cache["prefix_kv_bytes"] == base["prefix_kv_bytes"]
    assert cache["flops"]["expert"] < base["flops"]["expert"] and cache["flops"]["prefix"] == base["flops"]["prefix"]
    assert 0 < tokens["flops_fraction"] < 1 and tokens["action_sqnr_db"] < float("inf")
    assert "| head-cache |" in to_markdown(result)


@pytest.mark.parametrize("model", ["lerobot-smolvla-tiny", "lerobot-pi05-tiny"])
def test_lerobot_bench_splits_parts_and_counts_the_expert_cut(model):
    pytest.importorskip("lerobot")
    result = run_flow_bench(model, ("head-cache", "ddim5+head-cache"), repeats=1, warmup=0, log=lambda _: None)
    base, cache = result["baseline"], result["settings"]["head-cache"]
    assert "error" not in cache, cache.get("error")
    assert all(base["latency_s"][p] > 0 for p in ("e2e", "vision", "prefix", "expert"))
    assert base["flops"]["vision"] > 0 and base["flops"]["expert"] > 0 and base["flops"]["prefix"] > 0
    assert sum(base["flops"][p] for p in ("vision", "prefix", "expert")) == base["flops"]["total"]
    assert cache["flops"]["expert"] < base["flops"]["expert"]
    assert cache["flops"]["vision"] == base["flops"]["vision"] and cache["prefix_kv_bytes"] == base["prefix_kv_bytes"] > 0
    both = result["settings"]["ddim5+head-cache"]
    assert both["flops"]["expert"] < cache["flops"]["expert"]
    assert "| ddim5+head-cache |" in to_markdown(result)


def test_unknown_model_names_the_choices():
    from vlaccel.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="lerobot-smolvla"):
        run_flow_bench("no-such-model", (), repeats=1, warmup=0, log=lambda _: None)
