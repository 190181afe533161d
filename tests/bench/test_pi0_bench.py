"""``vlaccel bench --model pi0-tiny``: every part is timed and counted, and each setting's savings show."""

from __future__ import annotations

from vlaccel.bench.pi0_bench import run_pi0_bench, to_markdown


def test_pi0_bench_reports_each_settings_savings():
    result = run_pi0_bench("pi0-tiny", ("efficientvla-tokens", "head-cache"), repeats=1, warmup=0, log=lambda _: None)
    base, tokens, cache = result["baseline"], result["settings"]["efficientvla-tokens"], result["settings"]["head-cache"]
    assert all(base["latency_s"][p] > 0 for p in ("e2e", "vision", "prefix", "expert"))
    assert tokens["prefix_kv_bytes"] < base["prefix_kv_bytes"]  # pruned tokens leave layers > K's cache
    assert cache["prefix_kv_bytes"] == base["prefix_kv_bytes"]
    assert cache["flops"]["expert"] < base["flops"]["expert"] and cache["flops"]["prefix"] == base["flops"]["prefix"]
    assert 0 < tokens["flops_fraction"] < 1 and tokens["action_sqnr_db"] < float("inf")
    assert "| head-cache |" in to_markdown(result)
