"""``vlaccel bench`` end to end on the tiny preset: one strict-JSON object with every key, finite numbers."""

import json
import math

from vlaccel.cli import main

PRESET_KEYS = ("speedup_e2e", "speedup_by_module", "flops_fraction", "params_fraction", "kv_bytes_reduction",
               "action_mse", "action_cosine", "action_sqnr_db", "cognition_mse", "cognition_cosine",
               "cognition_sqnr_db", "latency_ms")
MODULES = ("vision", "language_model", "action_head")


def test_bench_json(tmp_path, capsys, one_thread):
    path = tmp_path / "bench.json"
    threads = one_thread
    rc = main(["bench", "--preset-model", "tiny", "--preset", "ddim5", "--repeats", "3", "--warmup", "1",
               "--fidelity-samples", "2", "--history", "--history-lengths", "1", "2", "--json", str(path),
               "--threads", str(threads), "--plot", str(tmp_path), "--markdown", str(tmp_path / "bench.md"),
               "--demos-dir", str(tmp_path / "no-demos")])
    assert rc == 0
    text = capsys.readouterr().out
    assert f"torch threads: {threads}" in text and "random-weight 'tiny'" in text
    result = json.loads(path.read_text())  # strict JSON: would fail on Infinity / NaN
    env = result["environment"]
    assert {"machine", "threads", "torch", "transformers", "diffusers", "cpu"} <= set(env) and env["threads"] == threads
    import diffusers
    import transformers

    assert (env["transformers"], env["diffusers"]) == (transformers.__version__, diffusers.__version__)
    assert f"transformers {transformers.__version__}, diffusers {diffusers.__version__}" in text
    r = result["presets"]["ddim5"]
    assert set(PRESET_KEYS) <= set(r)
    for key in ("speedup_e2e", "flops_fraction", "params_fraction", "kv_bytes_reduction", "action_mse",
                "action_cosine", "action_sqnr_db", "cognition_mse"):
        assert isinstance(r[key], float) and math.isfinite(r[key]), key
    assert set(r["speedup_by_module"]) == set(MODULES) and all(v > 0 for v in r["speedup_by_module"].values())
    # 5 of 10 DDIM steps: exactly half the DiT FLOPs, the LM and vision untouched
    assert r["flops_fraction_by_module"] == {"vision": 1.0, "language_model": 1.0, "action_head": 0.5}
    assert 0.5 < r["flops_fraction"] < 1.0 and r["params_fraction"] == 1.0
    assert r["cognition_mse"] == 0.0 and r["cognition_sqnr_db"] == "inf"  # same LM: identical features
    assert r["kv_bytes_reduction"] == 1.0
    assert result["observations"].startswith("SYNTHETIC")
    assert {"full", "ddim5"} <= set(result["history"]["settings"])
    assert (tmp_path / "history_scaling.png").stat().st_size > 0
    assert (tmp_path / "presets_speedup.png").stat().st_size > 0
    assert "| ddim5 |" in (tmp_path / "bench.md").read_text()
    # re-rendering the saved result measures nothing and reproduces the same tables
    assert main(["bench", "--from-json", str(path), "--markdown", str(tmp_path / "again.md")]) == 0
    assert (tmp_path / "again.md").read_text() == (tmp_path / "bench.md").read_text()


def test_unknown_preset_is_a_clear_error(capsys, one_thread):
    rc = main(["bench", "--preset-model", "tiny", "--preset", "no-such-preset", "--repeats", "1",
               "--threads", str(one_thread)])
    assert rc == 2
    assert "no-such-preset" in capsys.readouterr().err


def test_info_reports_the_versions_it_ran_with(capsys):
    import diffusers
    import torch
    import transformers

    assert main(["info", "--preset", "tiny", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["versions"]["transformers"] == transformers.__version__
    assert info["versions"]["diffusers"] == diffusers.__version__
    # the distribution's version; a PyPI CUDA wheel's metadata says 2.11.0 where torch.__version__ says 2.11.0+cu130
    assert info["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert main(["info", "--preset", "tiny"]) == 0
    assert f"transformers {transformers.__version__}, diffusers {diffusers.__version__}" in capsys.readouterr().out


def test_info_names_the_releases_of_the_bundled_policy_and_its_gate_and_none_for_a_random_one(capsys):
    import json as json_

    from vlaccel.models.io import CARD, bundled_dir
    from vlaccel.techniques.kv_efficient.gate import shipped_gate_dir

    card = json_.loads((bundled_dir("reference") / CARD).read_text())
    gate = json_.loads((shipped_gate_dir() / "gate.json").read_text())
    assert gate["policy_version"] == card["version"]  # the shipped gate belongs to the shipped policy
    assert main(["info", "--policy", "reference", "--json"]) == 0
    assert json_.loads(capsys.readouterr().out)["release"] == {"policy": card["version"], "kv_gate": gate["version"]}
    assert main(["info", "--preset", "tiny", "--json"]) == 0
    assert json_.loads(capsys.readouterr().out)["release"] == {"policy": None, "kv_gate": None}
