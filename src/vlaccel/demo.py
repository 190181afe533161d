"""``vlaccel demo``: the bundled reference policy, baseline vs accelerated, in one table that fits a log.

Rows: the baseline, our ``fast`` preset (the fastest setting without a measurable loss of success on the bundled
policy), the EfficientVLA preset and our ``efficientvla-keep-layers`` (no layer pruning) on single observations,
and the full KV cache vs the KV-Efficient cache in history mode. Each row is timed against the baseline in its
own run (calls alternate in this process) and shows that baseline's median beside its own, so its speedup is the
ratio of the two printed medians (``vlaccel.demo_table``). Also: GFLOPs per call, KV-cache size after
``--history-steps`` observations, and closed-loop success on the same seeds in the Meta-World suite, in history
mode (what the bundled policy is trained for; the baseline and full-cache rows are the same run). Scripted demos
for layer-pruning calibration are collected first if ``data/demos`` is empty (a few seconds).
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

from vlaccel.config_cli import check, check_numbers, parse_config
from vlaccel.demo_table import HEADERS, DemoRow, render

# Tasks where the bundled policy's baseline succeeds (model card): two where the paper's EfficientVLA setting loses
# episodes on this policy (reach, window-open) and two where it does not, so the demo shows both.
DEMO_TASKS = ("reach-v3", "window-open-v3", "drawer-open-v3", "button-press-topdown-v3")
#: The single-observation presets of the table, with what each is.
PRESETS = {"fast": "ours: the fastest setting without a measurable loss of success on the bundled policy",
           "efficientvla": "the EfficientVLA paper's preset",
           "efficientvla-keep-layers": "ours: EfficientVLA without layer pruning"}
FULL_CACHE, KV_EFFICIENT = "hist: full cache", "hist: kv-efficient"


@dataclasses.dataclass
class DemoCommand:
    """Baseline vs fast vs EfficientVLA (single observations) and full cache vs KV-Efficient (history mode) on the
    bundled reference policy: ms per call against a paired baseline, speedup, GFLOPs, KV-cache size and
    closed-loop success on the same seeds, in one table (details in OUT/demo.json)."""

    policy: str = "reference"
    """'reference' (bundled) or a saved policy folder."""
    tasks: tuple[str, ...] = DEMO_TASKS
    """Sim tasks for closed-loop success."""
    episodes: int = 2
    """Episodes (paired seeds) per task and condition."""
    repeats: int = 10
    """Timed calls per condition (median)."""
    history_steps: int = 64
    """History length for the KV rows."""
    demos: str = "data/demos"
    """Demos for calibration (collected if empty)."""
    out: str = "runs/demo"
    """Folder for eval records and demo.json."""

    def __post_init__(self) -> None:
        check(self)

    def validate(self) -> None:
        """Refuse numbers out of range (``UsageError`` naming the flag) and unknown tasks before anything is
        loaded (the closed-loop runs come last, after minutes of timing)."""
        from vlaccel.sim.tasks import resolve_tasks

        check_numbers(self, {"episodes": (1, None, "int"), "repeats": (1, None, "int"),
                             "history_steps": (1, None, "int")})
        resolve_tasks(self.tasks)


def parse_args(argv: list[str]) -> DemoCommand:
    return parse_config(DemoCommand, argv, "vlaccel demo", DemoCommand.__doc__ or "")


def main(argv: list[str]) -> int:
    return run(parse_args(argv))


def legend(history_steps: int) -> tuple[list[str], dict[str, str]]:
    """What the columns mean, and what each condition is."""
    columns = [
        "base ms: median ms per call of the unaccelerated policy, timed alternately with the row's own calls; "
        "ms: the row's median; speedup = base ms / ms.",
        f"GFLOPs per call. KV MiB: KV cache after {history_steps} observations. success: closed-loop episodes "
        "solved, history mode, the same seeds for every row (baseline and full cache: one run); %: success rate.",
    ]
    conditions = {
        "baseline": "the policy unaccelerated; ms: the median of the preset rows' base ms",
        **PRESETS,
        FULL_CACHE: f"history mode (policy.step), full KV cache, after {history_steps} observations",
        KV_EFFICIENT: "history mode, the kv-efficient preset; base ms: the full cache's",
    }
    return columns, conditions


def _ensure_demos(folder: str) -> None:
    if any(Path(folder).glob("*/*.npz")):
        return
    from vlaccel.sim.collect import collect

    print(f"collecting a few scripted demos into {folder} (layer-pruning calibration data)")
    collect(episodes_per_task=2, out_dir=folder, progress=False)


def run(args: DemoCommand) -> int:
    import torch

    import vlaccel
    from vlaccel.bench.fidelity import load_observations
    from vlaccel.bench.harness import BenchOptions, bench_preset, calibration_setter
    from vlaccel.bench.history import history_scaling
    from vlaccel.sim.evaluate import run_eval

    policy = vlaccel.load_policy(args.policy)
    _ensure_demos(args.demos)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    print(f"torch threads: {threads}; policy: {args.policy}", flush=True)

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
    at_steps = hist["summary"]["kv-efficient"]["at_steps"]
    # the bundled policy is trained for history mode, so every condition runs closed loop in history mode
    success = run_eval(args.policy, tasks=args.tasks, episodes=args.episodes, presets=[*PRESETS, "kv-efficient"],
                       history=True, workers=0, out_path=out / "eval_history.jsonl", progress=True)

    rows = table_rows(benched, hist["settings"], lengths.index(at_steps), success["average"])
    columns, conditions = legend(at_steps)
    title = f"vlaccel demo: {args.policy} policy, CPU, {threads} torch threads"
    print(render(title, rows, columns, conditions), flush=True)
    result = {**benched, "kv_history": {"lengths": lengths, "summary": hist["summary"], "series": hist["settings"]},
              "success_history": success, "table": {"columns": list(HEADERS), "rows": [r.cells() for r in rows]}}
    from vlaccel import atomic
    from vlaccel.bench.report import dumps

    atomic.write_text(out / "demo.json", dumps(result))
    print(f"details: {out / 'demo.json'}")
    return 0


def table_rows(benched: dict, series: dict, at: int, success: dict) -> list[DemoRow]:
    """The demo's rows from ``bench_preset`` results per preset, ``history_scaling``'s series (index ``at`` of
    its lengths) and the closed-loop averages per condition (``summarize(...)["average"]``)."""

    def solved(condition: str) -> dict:
        return {"successes": success[condition]["successes"], "episodes": success[condition]["n"]}

    base = {name: b["latency_ms"]["baseline"]["e2e"] for name, b in benched.items()}
    baseline_ms = statistics.median(base.values())
    first = next(iter(benched.values()))
    full_ms, full_kv = series["full"]["step_ms"][at], series["full"]["kv_bytes"][at] / 2**20
    return [
        DemoRow("baseline", baseline_ms, baseline_ms, first["gflops"]["baseline"], None, **solved("none+hist")),
        *[DemoRow(name, base[name], b["latency_ms"]["accelerated"]["e2e"], b["gflops"]["accelerated"], None,
                  **solved(f"{name}+hist")) for name, b in benched.items()],
        DemoRow(FULL_CACHE, full_ms, full_ms, None, full_kv, **solved("none+hist")),
        DemoRow(KV_EFFICIENT, full_ms, series["kv-efficient"]["step_ms"][at], None,
                series["kv-efficient"]["kv_bytes"][at] / 2**20, **solved("kv-efficient+hist")),
    ]
