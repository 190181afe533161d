"""``vlaccel demo``: the bundled reference policy, baseline vs accelerated, in one table.

Rows: the baseline, our ``fast`` preset (the fastest setting without a measurable loss of success on the bundled
policy), the EfficientVLA preset and our ``efficientvla-keep-layers`` (no layer pruning) on single observations, and the full KV cache vs the KV-Efficient cache in history mode. Columns: median latency per call
and speedup (alternating runs in this process), GFLOPs per call, KV-cache bytes after ``--history-steps``
observations, and closed-loop success on the same seeds in the Meta-World suite, in history mode (what the
bundled policy is trained for; the baseline and full-cache rows are the same run). Scripted demos for
layer-pruning calibration are collected first if ``data/demos`` is empty (a few seconds).
"""

from __future__ import annotations

import argparse
from pathlib import Path

# Tasks where the bundled policy's baseline succeeds (model card): two where the paper's EfficientVLA setting loses
# episodes on this policy (reach, window-open) and two where it does not, so the demo shows both.
DEMO_TASKS = ["reach-v3", "window-open-v3", "drawer-open-v3", "button-press-topdown-v3"]
PRESETS = {"fast": "fast (ours)", "efficientvla": "EfficientVLA preset",
           "efficientvla-keep-layers": "EfficientVLA, keep layers (ours)"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="baseline vs fast vs EfficientVLA vs KV-Efficient on the bundled policy, one table")
    p.add_argument("--policy", default="reference", help="'reference' (bundled) or a saved policy folder")
    p.add_argument("--tasks", nargs="*", default=DEMO_TASKS, help=f"sim tasks for success (default: {DEMO_TASKS})")
    p.add_argument("--episodes", type=int, default=2, help="episodes (paired seeds) per task and condition")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per condition (median)")
    p.add_argument("--history-steps", type=int, default=64, help="history length for the KV rows")
    p.add_argument("--demos", default="data/demos", help="demos for calibration (collected if empty)")
    p.add_argument("--out", default="runs/demo", help="folder for eval records and demo.json")
    p.set_defaults(func=run)


def _ensure_demos(folder: str) -> None:
    if any(Path(folder).glob("*/*.npz")):
        return
    from vlaccel.sim.collect import collect

    print(f"collecting a few scripted demos into {folder} (layer-pruning calibration data)")
    collect(episodes_per_task=2, out_dir=folder, progress=False)


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    import vlaccel
    from vlaccel.bench.fidelity import load_observations
    from vlaccel.bench.harness import BenchOptions, bench_preset, calibration_setter
    from vlaccel.bench.history import history_scaling
    from vlaccel.sim.evaluate import run_eval

    console = Console()
    policy = vlaccel.load_policy(args.policy)
    _ensure_demos(args.demos)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    console.print(f"torch threads: {torch.get_num_threads()}; policy: {args.policy}")

    options = BenchOptions(repeats=args.repeats, warmup=2, fidelity_samples=4, calibration_samples=32,
                           demos_dir=args.demos)
    observations, _ = load_observations(policy.config, options.fidelity_samples, args.demos, half=1)
    calibration, _ = load_observations(policy.config, options.calibration_samples, args.demos, seed=1, half=0)
    prepare = calibration_setter(calibration)
    benched = {name: bench_preset(policy, name, vlaccel.presets.get(name), observations, options, prepare=prepare)
               for name in PRESETS}
    lengths = sorted({1, 16, args.history_steps})
    hist = history_scaling(policy, {"kv-efficient": vlaccel.presets.get("kv-efficient")}, lengths,
                           demos_dir=args.demos, prepare=prepare)
    kv = hist["summary"]["kv-efficient"]
    at = lengths.index(kv["at_steps"])
    series = hist["settings"]

    def success(presets: list[str], history: bool, name: str) -> dict:
        return run_eval(args.policy, tasks=args.tasks, episodes=args.episodes, presets=presets, history=history,
                        workers=0, out_path=out / name, progress=True)

    # the bundled policy is trained for history mode, so every condition runs closed loop in history mode
    with_history = success([*PRESETS, "kv-efficient"], True, "eval_history.jsonl")

    def rate(summary: dict, condition: str) -> str:
        avg = summary["average"][condition]
        return f"{avg['successes']}/{avg['n']} ({100 * avg['success_rate']:.0f}%)"

    evla = benched["efficientvla"]
    rows = [
        ("baseline", f"{evla['latency_ms']['baseline']['e2e']:.1f}", "1.00x", f"{evla['gflops']['baseline']:.2f}", "-",
         rate(with_history, "none+hist")),
        *[(label, f"{benched[name]['latency_ms']['accelerated']['e2e']:.1f}", f"{benched[name]['speedup_e2e']:.2f}x",
           f"{benched[name]['gflops']['accelerated']:.2f}", "-", rate(with_history, f"{name}+hist"))
          for name, label in PRESETS.items()],
        (f"history, full cache ({kv['at_steps']} steps)", f"{series['full']['step_ms'][at]:.1f}", "1.00x", "-",
         f"{series['full']['kv_bytes'][at] / 2**20:.2f} MiB", rate(with_history, "none+hist")),
        (f"history, KV-Efficient ({kv['at_steps']} steps)", f"{series['kv-efficient']['step_ms'][at]:.1f}",
         f"{kv['per_step_speedup']:.2f}x", "-", f"{series['kv-efficient']['kv_bytes'][at] / 2**20:.2f} MiB",
         rate(with_history, "kv-efficient+hist")),
    ]
    table = Table(title="vlaccel demo: bundled reference policy (CPU; speedups are ratios of alternating runs)")
    for col in ("condition", "ms / call", "speedup", "GFLOPs / call", "KV cache", "success (history, same seeds)"):
        table.add_column(col, justify="left" if col == "condition" else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    result = {**benched, "kv_history": {"lengths": lengths, "summary": hist["summary"], "series": series},
              "success_history": with_history, "table": rows}
    from vlaccel.bench.report import dumps

    from vlaccel import atomic

    atomic.write_text(out / "demo.json", dumps(result))
    console.print(f"details: {out / 'demo.json'}")
    return 0
