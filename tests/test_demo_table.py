"""``vlaccel demo``'s table: it fits 80 columns, and each row's speedup is its printed baseline ms over its printed ms."""

from __future__ import annotations

import json
import types

from vlaccel.demo import FULL_CACHE, KV_EFFICIENT, PRESETS, legend, table_rows
from vlaccel.demo_table import HEADERS, WIDTH, DemoRow, render

# bench_preset results per preset: each timed against its own baseline run (the medians differ a little)
BENCHED = {
    "fast": {"latency_ms": {"baseline": {"e2e": 47.63}, "accelerated": {"e2e": 22.41}},
             "gflops": {"baseline": 3.47, "accelerated": 1.95}},
    "efficientvla": {"latency_ms": {"baseline": {"e2e": 49.08}, "accelerated": {"e2e": 24.96}},
                     "gflops": {"baseline": 3.47, "accelerated": 1.15}},
    "efficientvla-keep-layers": {"latency_ms": {"baseline": {"e2e": 48.37}, "accelerated": {"e2e": 28.96}},
                                 "gflops": {"baseline": 3.47, "accelerated": 1.46}},
}
SERIES = {"full": {"step_ms": [30.2, 41.07, 63.95], "kv_bytes": [0.6 * 2**20, 8.3 * 2**20, 33.15 * 2**20]},
          "kv-efficient": {"step_ms": [30.9, 39.5, 40.46], "kv_bytes": [0.6 * 2**20, 2.24 * 2**20, 2.24 * 2**20]}}
SUCCESS = {"none+hist": {"successes": 367, "n": 400}, "fast+hist": {"successes": 375, "n": 400},
           "efficientvla+hist": {"successes": 253, "n": 400},
           "efficientvla-keep-layers+hist": {"successes": 353, "n": 400},
           "kv-efficient+hist": {"successes": 364, "n": 400}}


def _table() -> str:
    rows = table_rows(BENCHED, SERIES, 2, SUCCESS)
    columns, conditions = legend(64)
    return render("vlaccel demo: reference policy, CPU, 2 torch threads", rows, columns, conditions)


def _printed_rows(text: str) -> dict[str, list[str]]:
    """condition -> its printed cells, read back from the table lines (the condition may hold spaces)."""
    rows = {}
    names = ["baseline", *PRESETS, FULL_CACHE, KV_EFFICIENT]
    for line in text.splitlines():
        name = next((n for n in names if line.startswith(n + " ")), None)
        if name is not None and name not in rows:
            rows[name] = line[len(name):].split()
    return rows


def test_every_line_fits_80_columns_and_the_legend_names_each_condition():
    text = _table()
    print(text)  # the table as `vlaccel demo` prints it (pytest -s)
    assert all(len(line) <= WIDTH for line in text.splitlines()), max(text.splitlines(), key=len)
    header = next(line for line in text.splitlines() if line.startswith("condition"))
    assert header.split() == ["condition", "base", "ms", "ms", "speedup", "GFLOPs", "KV", "MiB", "success", "%"]
    rows = _printed_rows(text)
    assert list(rows) == ["baseline", *PRESETS, FULL_CACHE, KV_EFFICIENT]
    assert all(len(cells) == len(HEADERS) - 1 for cells in rows.values()), rows
    legend_text = text.split("\n\n", 1)[1]
    assert "speedup = base ms / ms" in legend_text
    assert all(name in legend_text for name in rows)


def test_each_speedup_is_the_printed_baseline_ms_over_the_printed_ms():
    rows = _printed_rows(_table())
    for name, (base_ms, ms, speedup, *_) in rows.items():
        assert speedup.endswith("x"), (name, speedup)
        assert float(speedup[:-1]) == round(float(base_ms) / float(ms), 2), (name, base_ms, ms, speedup)
    # each preset row is paired with its own baseline run, the KV-Efficient row with the full cache
    assert rows["fast"][0] == "47.6" and rows["efficientvla"][0] == "49.1"
    assert rows[KV_EFFICIENT][0] == rows[FULL_CACHE][1] == "64.0"
    assert rows["baseline"][:3] == ["48.4", "48.4", "1.00x"]  # the median of the preset rows' baselines


def test_one_unit_per_column():
    rows = _printed_rows(_table())
    assert rows["fast"] == ["47.6", "22.4", "2.12x", "1.95", "-", "375/400", "94"]
    assert rows[KV_EFFICIENT] == ["64.0", "40.5", "1.58x", "-", "2.24", "364/400", "91"]


def test_a_long_condition_name_is_shortened_to_keep_80_columns():
    row = DemoRow("x" * 90, 1000.0, 999.9, 123.45, 1234.56, 1000, 1000)
    text = render("t", [row], ["legend"], {"x" * 90: "a name longer than the table is wide"})
    assert all(len(line) <= WIDTH for line in text.splitlines()), text


def test_the_demo_command_prints_the_table_and_saves_its_cells(tmp_path, monkeypatch, capsys):
    """``vlaccel demo`` end to end with the measurements stubbed: the table it prints is the renderer's."""
    import vlaccel
    from vlaccel.cli import main

    monkeypatch.setattr(vlaccel, "load_policy", lambda spec: types.SimpleNamespace(config=None))
    monkeypatch.setattr("vlaccel.demo._ensure_demos", lambda folder: None)
    monkeypatch.setattr("vlaccel.bench.fidelity.load_observations", lambda *a, **k: ([], "stub"))
    monkeypatch.setattr("vlaccel.bench.harness.bench_preset", lambda policy, name, *a, **k: BENCHED[name])
    monkeypatch.setattr("vlaccel.bench.history.history_scaling", lambda *a, **k: {
        "settings": SERIES, "summary": {"kv-efficient": {"at_steps": 64}}})
    monkeypatch.setattr("vlaccel.sim.evaluate.run_eval", lambda *a, **k: {"average": SUCCESS})
    assert main(["demo", "--out", str(tmp_path), "--tasks", "reach-v3", "--history-steps", "64"]) == 0
    out = capsys.readouterr().out
    assert _printed_rows(out) == _printed_rows(_table())
    assert all(len(line) <= WIDTH for line in out.splitlines() if not line.startswith(("torch", "details")))
    saved = json.loads((tmp_path / "demo.json").read_text())["table"]
    assert saved["columns"] == list(HEADERS) and saved["rows"][1][:4] == ["fast", "47.6", "22.4", "2.12x"]
