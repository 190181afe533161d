"""``vlaccel bench``: speed, FLOPs, memory and fidelity of every preset against the unaccelerated policy."""

from __future__ import annotations

import dataclasses
import os
from typing import Literal

import tyro

from vlaccel import atomic
from vlaccel.bench.harness import BenchOptions
from vlaccel.config_cli import check, check_numbers, parse_config

COMMAND = "bench"


@dataclasses.dataclass
class BenchCommand:
    """Speedup, FLOPs, KV memory and fidelity of presets against the unaccelerated policy, baseline and accelerated
    calls alternated in one process (medians over repeats)."""

    policy: str | None = None
    """'reference' (bundled) or the folder of a saved policy."""
    preset_model: Literal["tiny", "default"] | None = None
    """Benchmark a random-weight reference VLA of this size (None: the bundled reference policy if it exists, else a random 'default'-size one)."""
    model: str | None = None
    """Benchmark a flow-matching VLA instead of the reference policy: a named random-weight model (pi0, pi0-small, pi0-tiny: transformers' PI0ForConditionalGeneration; lerobot-smolvla, lerobot-pi0, lerobot-pi05 at published size, each also as -tiny (and pi0 / pi0.5 as -vocab1k: the published sizes with a 1,024-token vocabulary, the same compute in 3 GB less memory): LeRobot's policies, which need LeRobot installed), or a folder: a LeRobot policy folder (config.json + model.safetensors) or a transformers pi0 checkpoint. Per-part latency (vision / VLM prefix / expert steps), FLOPs, parameters, prefix-KV bytes, action SQNR."""
    preset: tuple[str, ...] | None = None
    """Presets to measure (None: every registered one; with --model: the EfficientVLA presets, head-cache and ddim5)."""
    combine: tuple[str, ...] = ()
    """Also measure every --preset combined with each of these presets (e.g. bf16 compile), named 'PRESET+NAME'."""
    json: str | None = None
    """Write the result as one JSON object to this path ('-' = stdout)."""
    plot: str | None = None
    """Write PNG plots into this folder."""
    markdown: str | None = None
    """Write the tables as markdown to this path (for docs)."""
    threads: int | None = None
    """torch intra-op threads (None: all cores)."""
    from_json: str | None = None
    """Measure nothing: re-render the tables, plots, markdown (and --json) of a saved result."""
    measurement: tyro.conf.OmitArgPrefixes[BenchOptions] = dataclasses.field(default_factory=BenchOptions)
    """Measurement settings."""

    def __post_init__(self) -> None:
        check(self)

    def validate(self) -> None:
        """Refuse a number out of range (``UsageError`` naming the flag) before anything is loaded."""
        check_numbers(self, {"threads": (1, None, "int")})

    def check_outputs(self) -> None:
        """Refuse ``--json``, ``--markdown`` or ``--plot`` paths that cannot be written, before measuring."""
        from vlaccel.atomic import check_writable

        if self.json not in (None, "-"):
            check_writable(self.json, "--json")
        if self.markdown is not None:
            check_writable(self.markdown, "--markdown")
        if self.plot is not None:
            check_writable(self.plot, "--plot", folder=True)


def parse_args(argv: list[str]) -> BenchCommand:
    return parse_config(BenchCommand, argv, f"vlaccel {COMMAND}", BenchCommand.__doc__ or "")


def main(argv: list[str]) -> int:
    return run(parse_args(argv))


def run(args: BenchCommand) -> int:
    import json

    import torch
    from rich.console import Console

    from vlaccel.bench import harness
    from vlaccel.bench.history import summarize
    from vlaccel.errors import MissingInputError, UsageError

    options = args.measurement
    args.check_outputs()
    if options.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but torch.cuda.is_available() is False (CPU-only torch?); "
                         "pass --device cpu or install a CUDA build of torch")
    threads = args.threads or os.cpu_count() or 1
    if threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    to_stdout = args.json == "-"
    console = Console(stderr=to_stdout)
    if not console.is_terminal:
        console.width = max(console.width, 150)  # logs and docs: keep the wide tables unwrapped
    if args.model:
        return _run_flow(args, console, to_stdout)
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
    console.print(f"policy: {source}; torch threads: {torch.get_num_threads()}; device: {options.device}; "
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


def _run_flow(args: BenchCommand, console, to_stdout: bool) -> int:
    import sys

    from vlaccel.bench import flow_bench
    from vlaccel.bench.report import dumps
    from vlaccel.errors import check_names
    from vlaccel.presets import names

    presets = tuple(args.preset or flow_bench.DEFAULT_PRESETS)
    check_names("preset", [p for spec in presets for p in spec.split("+")], names())
    result = flow_bench.run_flow_bench(args.model, presets, repeats=args.measurement.repeats,
                                       warmup=args.measurement.warmup, device=args.measurement.device,
                                       log=console.print)
    table = flow_bench.to_markdown(result)
    console.print(table)
    if args.markdown:
        atomic.write_text(args.markdown, table)
    if args.json:
        text = dumps(result)
        if to_stdout:
            sys.stdout.write(text + "\n")
        else:
            atomic.write_text(args.json, text + "\n")
    return 1 if any("error" in s for s in result["settings"].values()) else 0


def _emit(result: dict, args: BenchCommand, console, to_stdout: bool) -> int:
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
        atomic.write_text(args.markdown, report.to_markdown(result))
        console.print(f"markdown: {args.markdown}")
    if args.json:
        text = report.dumps(result)
        if to_stdout:
            sys.stdout.write(text + "\n")
        else:
            atomic.write_text(args.json, text + "\n")
            console.print(f"JSON: {args.json}")
    return 1 if result["errors"] else 0
