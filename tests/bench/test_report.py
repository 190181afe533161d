"""Report helpers: strict JSON for non-finite values and target checks on a hand-made result."""

import json
import math

from vlaccel.bench.history import summarize
from vlaccel.bench.report import check_targets, dumps


def test_json_is_strict_and_keeps_infinities_readable():
    text = dumps({"a": math.inf, "b": [-math.inf, math.nan, 1.5]})
    assert json.loads(text) == {"a": "inf", "b": ["-inf", "nan", 1.5]}


def test_targets_use_the_measured_setting_and_alternative_names():
    result = {"presets": {"efficientvla": {"speedup_e2e": 2.1, "flops_fraction": 0.4}},
              "history": {"summary": {"kv-efficient": {"kv_bytes_reduction": 3.5}}}}
    got = {(t["setting"], t["metric"]): t["met"] for t in check_targets(result)}
    assert got == {("efficientvla", "speedup_e2e"): True, ("efficientvla", "flops_fraction"): False,
                   ("kv-efficient", "kv_bytes_reduction"): True}


def test_summary_of_a_linear_and_a_flat_series():
    lengths = [1, 16, 64, 256]
    series = {
        "full": {"step_ms": [10.0 + n for n in lengths], "lm_ms": [1.0] * 4, "kv_bytes": [100 * n for n in lengths],
                 "cache_update_ms": [0.1] * 4},
        "flat": {"step_ms": [20.0, 20.0, 20.0, 21.0], "lm_ms": [1.0] * 4, "kv_bytes": [100, 1600, 1600, 1600],
                 "cache_update_ms": [0.5] * 4},
    }
    s = summarize(lengths, series)
    assert math.isclose(s["full"]["linear_r2"], 1.0)
    assert math.isclose(s["full"]["ms_per_history_step"], 1.0)
    assert s["flat"]["at_steps"] == 64 and s["flat"]["kv_bytes_reduction"] == 6400 / 1600
    assert math.isclose(s["flat"]["per_step_speedup"], 74.0 / 20.0)
    assert math.isclose(s["flat"]["step_latency_growth"], 21.0 / 20.0 - 1.0)
    assert math.isclose(s["flat"]["cache_update_fraction"], 0.5 / 20.0)


def test_pareto_frontier_keeps_only_undominated_settings(tmp_path):
    from vlaccel.bench.report import pareto_frontier, pareto_points, plot_pareto

    result = {"presets": {
        "exact-fast": {"speedup_e2e": 1.2, "action_sqnr_db": math.inf},
        "lossy-faster": {"speedup_e2e": 2.0, "action_sqnr_db": 20.0},
        "dominated": {"speedup_e2e": 1.5, "action_sqnr_db": 15.0},  # lossy-faster beats it on both axes
        "fastest": {"speedup_e2e": 3.0, "action_sqnr_db": 5.0},
    }}
    points = pareto_points(result)
    assert points["baseline"] == (1.0, 60.0) and points["exact-fast"] == (1.2, 60.0)
    assert pareto_frontier(points) == ["exact-fast", "lossy-faster", "fastest"]  # baseline: dominated by exact-fast
    path = plot_pareto(result, tmp_path)
    assert path.name == "pareto.png" and path.stat().st_size > 1000


def test_combined_settings_pair_every_preset_with_each_engine_switch():
    from vlaccel.bench.harness import combined_settings

    settings = combined_settings(["head-cache", "ddim5", "fast"], ["bf16"])
    assert set(settings) == {"head-cache", "ddim5", "fast", "head-cache+bf16", "ddim5+bf16"}  # fast sets precision
    assert [type(c).__name__ for c in settings["head-cache+bf16"]] == ["HeadCacheConfig", "PrecisionConfig"]
