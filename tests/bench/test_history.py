"""History scaling on the tiny policy: KV bytes equal the analytic cache size; the full cache is the reference."""

import pytest

from vlaccel.bench.history import history_scaling


def test_history_series_and_summary(tiny_policy):
    from vlaccel.techniques import DenoiseStepsConfig

    cfg = tiny_policy.config
    lengths = [1, 3]
    out = history_scaling(tiny_policy, {"ddim5": [DenoiseStepsConfig(steps=5)]}, lengths, repeats=1, window=2,
                          warmup_steps=1)
    assert out["lengths"] == lengths
    assert out["frames"].startswith(("SYNTHETIC", "demos"))
    full, ddim = out["settings"]["full"], out["settings"]["ddim5"]
    prefix = len(tiny_policy.instruction_ids(out["instruction"])[0])
    per_token = 2 * cfg.lm_layers * cfg.lm_kv_heads * cfg.head_dim * 4  # K and V, fp32
    assert full["kv_bytes"] == [per_token * (prefix + n * cfg.tokens_per_frame) for n in lengths]
    assert ddim["kv_bytes"] == full["kv_bytes"]  # fewer DDIM steps do not touch the KV cache
    assert full["predicted_kv_bytes"] == full["kv_bytes"] and ddim["predicted_kv_bytes"] is None
    assert full["action_mse_vs_full"] == [0.0, 0.0] and full["action_sqnr_db_vs_full"] == [float("inf")] * 2
    assert all(v > 0 for v in ddim["action_mse_vs_full"])
    assert all(x > 0 for s in (full, ddim) for x in s["step_ms"] + s["lm_ms"] + s["cache_update_ms"])
    summary = out["summary"]
    assert summary["full"]["per_step_speedup"] == 1.0 and summary["ddim5"]["kv_bytes_reduction"] == 1.0
    assert summary["ddim5"]["at_steps"] == 3
    assert "_vlaccel_applied" not in tiny_policy.__dict__ or not tiny_policy.__dict__["_vlaccel_applied"]


def test_bad_lengths_raise(tiny_policy):
    with pytest.raises(ValueError, match="positive"):
        history_scaling(tiny_policy, {}, [0, 4])


def test_compressed_cache_bytes_match_the_cost_model(tiny_policy):
    kv = pytest.importorskip("vlaccel.techniques.kv_efficient")
    q = tiny_policy.config.tokens_per_frame
    settings = {"mean": [kv.KVEfficientConfig(window=q, budget=2, retention="mean")],
                "streaming": [kv.KVEfficientConfig(window=q, retention="streaming")]}
    out = history_scaling(tiny_policy, settings, [1, 2, 4, 6], window=1, warmup_steps=0)
    assert not out["errors"]
    for name in ("full", "mean", "streaming"):
        s = out["settings"][name]
        assert s["kv_bytes"] == s["predicted_kv_bytes"], name
    summary = out["summary"]
    assert summary["mean"]["kv_bytes_reduction"] > 1.0 and summary["streaming"]["kv_bytes_reduction"] > 1.0
