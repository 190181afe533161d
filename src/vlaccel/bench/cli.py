"""``vlaccel bench``: speed, FLOPs, memory and fidelity of every preset against the unaccelerated policy."""

from __future__ import annotations

import argparse
import os


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="speedup, FLOPs, KV memory and fidelity of presets vs the baseline policy",
                       description=__doc__)
    p.add_argument("--policy", default=None, help="'reference' (bundled) or the folder of a saved policy")
    p.add_argument("--preset-model", choices=["tiny", "default"], default=None,
                   help="benchmark a random-weight reference VLA of this size (default: the bundled reference "
                        "policy if it exists, else a random 'default'-size one)")
    p.add_argument("--model", choices=["pi0", "pi0-small", "pi0-tiny"], default=None,
                   help="benchmark transformers' PI0ForConditionalGeneration instead (random weights; pi0 = the "
                        "published 3.5 B size, pi0-small = the same depth at narrow widths): per-part latency, FLOPs, "
                        "parameters and prefix-KV bytes of each --preset (default: the EfficientVLA presets, ddim5)")
    p.add_argument("--preset", nargs="+", default=None, metavar="NAME",
                   help="presets to measure (default: every registered one; see `vlaccel.presets.names()`)")
    p.add_argument("--combine", nargs="+", default=(), metavar="NAME",
                   help="also measure every --preset combined with each of these presets (e.g. bf16 compile): "
                        "settings named 'PRESET+NAME'; pairs that set the same technique twice are skipped")
    p.add_argument("--history", action="store_true",
                   help="also run the history study: per-step latency and KV bytes vs episode length, full "
                        "cache vs KV-Efficient settings and the presets")
    p.add_argument("--history-lengths", type=int, nargs="+", default=None, metavar="N",
                   help="history lengths in control steps (default: 1 2 4 ... 64 96: one real reach-memory-long episode)")
    p.add_argument("--history-repeats", type=int, default=1, help="lockstep episodes to take medians over")
    p.add_argument("--history-window", type=int, default=4,
                   help="per-step latency at N = median of steps N-window+1..N over the repeats (default 4)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the result as one JSON object ('-' = stdout)")
    p.add_argument("--plot", default=None, metavar="DIR", help="write PNG plots into this folder")
    p.add_argument("--markdown", default=None, metavar="PATH", help="write the tables as markdown (for docs)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--threads", type=int, default=None,
                   help=f"torch intra-op threads (default: all {os.cpu_count()} cores)")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per policy (median; default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up rounds (default 3)")
    p.add_argument("--samples", type=int, default=16, help="observations for the fidelity metrics (default 16)")
    p.add_argument("--demos", default="data/demos",
                   help="recorded demos for fidelity and layer-pruning calibration (default: data/demos)")
    p.add_argument("--from-json", default=None, metavar="PATH",
                   help="measure nothing: re-render the tables, plots, markdown (and --json) of a saved result")
    p.add_argument("--profile", action="store_true",
                   help="add torch.profiler's top ops of one baseline and one accelerated call per preset")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    import torch
    from rich.console import Console

    from vlaccel.bench import harness
    from vlaccel.bench.history import DEFAULT_LENGTHS, summarize
    from vlaccel.errors import MissingInputError, UsageError

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but torch.cuda.is_available() is False (CPU-only torch?); "
                         "pass --device cpu or install a CUDA build of torch")
    threads = args.threads or os.cpu_count() or 1
    if threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    options = harness.BenchOptions(
        repeats=args.repeats, warmup=args.warmup, device=args.device, fidelity_samples=args.samples,
        demos_dir=args.demos, history=args.history,
        history_lengths=tuple(args.history_lengths or DEFAULT_LENGTHS), history_repeats=args.history_repeats,
        history_window=args.history_window, profile=args.profile,
    )
    to_stdout = args.json == "-"
    console = Console(stderr=to_stdout)
    if not console.is_terminal:
        console.width = max(console.width, 150)  # logs and docs: keep the wide tables unwrapped
    if args.model:
        return _run_pi0(args, console, to_stdout)
    if args.from_json:
        if not os.path.isfile(args.from_json):
            raise MissingInputError(f"--from-json {args.from_json}: no such file; pass the JSON a `vlaccel bench --json "
                                    "PATH` run wrote")
        with open(args.from_json) as f:
            result = json.load(f)
        if "history" in result:  # derived numbers are recomputed from the measured series
            result["history"]["summary"] = summarize(result["history"]["lengths"], result["history"]["settings"])
        return _emit(result, args, console, to_stdout)
    policy, source = harness.resolve_policy(args.policy, args.preset_model)
    presets = args.preset or harness.default_presets()
    console.print(f"policy: {source}; torch threads: {torch.get_num_threads()}; device: {args.device}; "
                  f"presets: {', '.join(presets)}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if threads > 1 and load > (os.cpu_count() or 1):
        console.print(f"[yellow]warning:[/yellow] load average {load:.1f} on {os.cpu_count()} cores: other processes "
                      f"compete for the CPU, and {threads} threads per op then wait on each other; --threads 1 "
                      "gives steadier timings on a shared machine")

    from vlaccel.progress import progress_bar

    class _BarProgress(harness.Progress):
        """One bar per harness task, shown until the next task starts (or the benchmark ends)."""

        bar = None

        def task(self, description: str, total: int):
            self.close()
            self.bar = progress_bar(description, total, transient=True, console=console).__enter__()
            return self.bar.advance

        def close(self) -> None:
            if self.bar is not None:
                self.bar.__exit__(None, None, None)
                self.bar = None

    sink = _BarProgress()
    try:
        result = harness.run_benchmark(policy, presets, options, source, sink, combine=args.combine)
    finally:
        sink.close()
    return _emit(result, args, console, to_stdout)


def _run_pi0(args: argparse.Namespace, console, to_stdout: bool) -> int:
    import sys

    from vlaccel.bench import pi0_bench
    from vlaccel.bench.report import dumps

    presets = tuple(args.preset or pi0_bench.DEFAULT_PRESETS)
    result = pi0_bench.run_pi0_bench(args.model, presets, repeats=args.repeats, warmup=args.warmup,
                                     device=args.device, log=console.print)
    table = pi0_bench.to_markdown(result)
    console.print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    if args.json:
        text = dumps(result)
        if to_stdout:
            sys.stdout.write(text + "\n")
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return 0


def _emit(result: dict, args: argparse.Namespace, console, to_stdout: bool) -> int:
    import sys

    from vlaccel.bench import report

    result["targets"] = report.check_targets(result)
    report.print_report(result, console)
    if args.plot:
        paths = [report.plot_presets(result, args.plot), report.plot_pareto(result, args.plot)] \
            if result["presets"] else []
        if "history" in result:
            paths.append(report.plot_history(result, args.plot))
        console.print("plots: " + ", ".join(str(p) for p in paths))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(report.to_markdown(result))
        console.print(f"markdown: {args.markdown}")
    if args.json:
        text = report.dumps(result)
        if to_stdout:
            sys.stdout.write(text + "\n")
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
            console.print(f"JSON: {args.json}")
    return 1 if result["errors"] else 0
