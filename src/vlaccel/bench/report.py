"""Rendering a benchmark result: rich tables for people, strict JSON for machines, PNG plots.

JSON has no infinity: non-finite floats (the SQNR of an output identical to the baseline is +inf) are
written as the strings ``"inf"``, ``"-inf"``, ``"nan"``, so the file parses with any strict reader.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = [
    "TARGETS", "check_targets", "dumps", "plot_history", "plot_presets", "print_report", "to_jsonable", "to_markdown",
]


def to_jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj


def dumps(result: dict[str, Any], indent: int | None = 2) -> str:
    return json.dumps(to_jsonable(result), indent=indent, allow_nan=False)


# (preset or history setting (alternatives split by "|"), where, metric, comparison, threshold, target)
TARGETS: list[tuple[str, str, str, str, float, str]] = [
    ("efficientvla", "presets", "speedup_e2e", ">=", 2.0, "EfficientVLA full preset end-to-end speedup"),
    ("efficientvla", "presets", "flops_fraction", "<=", 0.35, "EfficientVLA full preset FLOPs fraction"),
    ("efficientvla-tokens", "presets", "speedup_e2e", ">=", 1.25, "token pruning only, end-to-end speedup"),
    ("head-cache", "presets", "speedup_by_module.action_head", ">=", 2.5, "head cache (N=5), action head alone"),
    ("kv-gated|kv-efficient", "history", "kv_bytes_reduction", ">=", 3.0, "KV-Efficient at 64 steps: KV bytes reduction"),
    ("kv-gated|kv-efficient", "history", "per_step_speedup", ">=", 1.5, "KV-Efficient at 64 steps: per-step speedup"),
    ("kv-gated|kv-efficient", "history", "step_latency_growth", "<=", 0.10, "KV-Efficient per-step latency growth 16->96"),
    ("full", "history", "linear_r2", ">=", 0.9, "full cache: per-step latency linear in history length (R2; ours)"),
    ("kv-gated|kv-efficient", "history", "cache_update_fraction", "<", 0.05, "KV-Efficient gate overhead: cache.update share of a step (upper bound)"),
]


def _lookup(entry: dict[str, Any], metric: str) -> Any:
    for part in metric.split("."):
        if not isinstance(entry, dict) or part not in entry:
            return None
        entry = entry[part]
    return entry


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets whose preset / history setting was measured, with the value and whether it is met."""
    out = []
    for names, where, metric, op, threshold, what in TARGETS:
        table = result.get("presets", {}) if where == "presets" else result.get("history", {}).get("summary", {})
        name = next((n for n in names.split("|") if n in table), None)
        value = _lookup(table[name], metric) if name else None
        if value is None:
            continue
        met = {">=": value >= threshold, "<=": value <= threshold, "<": value < threshold}[op]
        out.append({"target": what, "setting": name, "metric": metric, "value": value,
                    "threshold": f"{op} {threshold:g}", "met": bool(met)})
    return out


def _fmt(x: Any, spec: str = ".2f", suffix: str = "") -> str:
    if x is None:
        return "-"
    if isinstance(x, str):  # a non-finite value read back from JSON ("inf")
        return x
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x > 0 else ("-inf" if x < 0 else "nan")
    return f"{x:{spec}}{suffix}"


def print_report(result: dict[str, Any], console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    env, pol = result["environment"], result["policy"]
    console.print(f"[bold]vlaccel bench[/bold]: {pol['source']}, {pol['parameters'] / 1e6:.2f} M parameters, "
                  f"{pol['gflops_per_predict_action']:.3f} GFLOPs / predict_action")
    console.print(f"torch {env['torch']}, transformers {env['transformers']}, diffusers {env.get('diffusers', '?')}, "
                  f"{env['device']}"
                  f"{' (' + env['gpu'] + ')' if 'gpu' in env else ''}, {env['cpu']}, "
                  f"torch threads = {env['threads']} of {env['cpu_count']} cores")
    console.print(f"fidelity observations: {result['observations']}")
    console.print(f"layer-pruning calibration observations: {result['calibration']}")

    table = Table(title="speedup vs the unaccelerated policy (median of alternating calls)")
    for col in ("preset", "e2e", "vision", "LM", "action head", "FLOPs", "params", "action MSE",
                "action SQNR dB", "cognition SQNR dB", "KV reduction"):
        table.add_column(col, justify="left" if col == "preset" else "right")
    for name, r in result["presets"].items():
        m = r["speedup_by_module"]
        table.add_row(name, _fmt(r["speedup_e2e"], suffix="x"), _fmt(m["vision"], suffix="x"),
                      _fmt(m["language_model"], suffix="x"), _fmt(m["action_head"], suffix="x"),
                      _fmt(r["flops_fraction"], ".3f"), _fmt(r["params_fraction"], ".3f"),
                      _fmt(r.get("action_mse"), ".2e"), _fmt(r.get("action_sqnr_db"), ".1f"),
                      _fmt(r.get("cognition_sqnr_db"), ".1f"), _fmt(r.get("kv_bytes_reduction"), suffix="x"))
    console.print(table)

    table = Table(title="median latency, ms (baseline / accelerated)")
    for col in ("preset", "e2e", "vision", "LM", "action head", "dominant (accelerated)"):
        table.add_column(col, justify="left" if col == "preset" else "right")
    for name, r in result["presets"].items():
        b, a = r["latency_ms"]["baseline"], r["latency_ms"]["accelerated"]
        table.add_row(name, *(f"{b[k]:.1f} / {a[k]:.1f}" for k in ("e2e", "vision", "language_model",
                                                                    "action_head")),
                      f"{r['dominant_module']} {100 * r['dominant_module_share']:.0f}%")
    console.print(table)
    for name, r in result["presets"].items():
        if "profile" in r:
            table = Table(title=f"{name}: top ops of one accelerated call (torch.profiler)")
            for col in ("op", "calls", "self ms", "total ms"):
                table.add_column(col, justify="left" if col == "op" else "right")
            for row in r["profile"]["accelerated"][:8]:
                table.add_row(row["op"], str(row["calls"]), f"{row['self_ms']:.2f}", f"{row['total_ms']:.2f}")
            console.print(table)

    hist = result.get("history")
    if hist:
        names = list(hist["settings"])
        table = Table(title=f"history mode: per-step latency ms / KV MB (frames: {hist['frames']})")
        table.add_column("steps", justify="right")
        for k in names:
            table.add_column(k, justify="right")
        for i, n in enumerate(hist["lengths"]):
            table.add_row(str(n), *(f"{hist['settings'][k]['step_ms'][i]:.1f} / "
                                    f"{hist['settings'][k]['kv_bytes'][i] / 2**20:.2f}" for k in names))
        console.print(table)
        table = Table(title="history summary vs the full cache")
        for col in ("setting", "at steps", "step speedup", "LM speedup", "KV reduction", "action SQNR dB",
                    "growth", "ms per history step", "linear R2", "cache update share"):
            table.add_column(col, justify="left" if col == "setting" else "right")
        for k, s in hist["summary"].items():
            table.add_row(k, str(s["at_steps"]), _fmt(s["per_step_speedup"], suffix="x"),
                          _fmt(s["lm_speedup"], suffix="x"), _fmt(s["kv_bytes_reduction"], suffix="x"),
                          _fmt(s.get("action_sqnr_db_vs_full"), ".1f"),
                          _fmt(100 * s["step_latency_growth"], ".0f", f"% ({s['growth_from']}->{s['growth_to']})"),
                          _fmt(s.get("ms_per_history_step"), ".3f"), _fmt(s.get("linear_r2"), ".3f"),
                          _fmt(100 * s["cache_update_fraction"], ".1f", "%"))
        console.print(table)

    targets = check_targets(result)
    if targets:
        table = Table(title="targets")
        for col in ("target", "value", "threshold", "met"):
            table.add_column(col)
        for t in targets:
            table.add_row(t["target"], _fmt(t["value"], ".3f"), t["threshold"],
                          "[green]yes[/green]" if t["met"] else "[red]no[/red]")
        console.print(table)
    for name, err in result.get("errors", {}).items():
        console.print(f"[red]{name} failed:[/red] {err}")
    for note in result.get("notes", []):
        console.print(f"[yellow]note:[/yellow] {note}")
    console.print("[dim]absolute times depend on the machine and its load; the ratios (baseline and "
                  "accelerated timed alternately) are the headline.[/dim]")


def _save(fig: Any, folder: str | Path, name: str) -> Path:
    """Lay out, write ``folder/name`` (PNG, 120 dpi) and close the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_history(result: dict[str, Any], folder: str | Path) -> Path:
    """history_scaling.png: per-step latency (end to end and language model) and KV MiB against history
    length, one line per setting (full cache black, KV-cache settings dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = result["history"]
    n = hist["lengths"]
    colors = plt.get_cmap("tab20").colors
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for i, (name, s) in enumerate(hist["settings"].items()):
        style = {"color": "black", "linewidth": 2.4} if name == "full" else {
            "color": colors[i % len(colors)], "linestyle": "--" if name.startswith("kv-") else "-"}
        axes[0].plot(n, s["step_ms"], marker="o", markersize=3, label=name, **style)
        axes[1].plot(n, s["lm_ms"], marker="o", markersize=3, label=name, **style)
        axes[2].plot(n, [b / 2**20 for b in s["kv_bytes"]], marker="o", markersize=3, label=name, **style)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("history length (control steps in the KV cache)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("per-step latency, ms (median near N)")
    axes[1].set_ylabel("language model per step, ms")
    axes[2].set_ylabel("KV cache, MiB (bytes held by the cache tensors)")
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=7, ncol=2)
    env = result["environment"]
    fig.suptitle(f"{result['policy']['source']}; {env['device']}, {env['threads']} threads; "
                 f"frames: {hist['frames']}", fontsize=9)
    return _save(fig, folder, "history_scaling.png")


def plot_presets(result: dict[str, Any], folder: str | Path) -> Path:
    """presets_speedup.png: end-to-end and per-module speedup per preset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(result["presets"])
    series = {"end to end": [result["presets"][k]["speedup_e2e"] for k in names]}
    for m, label in (("vision", "vision"), ("language_model", "language model"), ("action_head", "action head")):
        series[label] = [min(result["presets"][k]["speedup_by_module"][m], 20.0) for k in names]
    x = np.arange(len(names))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(names)), 4))
    for i, (label, vals) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, label=label)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylabel("speedup vs baseline (x)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, folder, "presets_speedup.png")


def pareto_frontier(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names of the settings no other setting beats on both axes ((speedup, SQNR dB), higher is better on both),
    ordered by speedup."""
    def dominated(a: tuple[float, float]) -> bool:
        return any(b[0] >= a[0] and b[1] >= a[1] and b != a for b in points.values())

    return sorted((n for n, pt in points.items() if not dominated(pt)), key=lambda n: points[n][0])


def pareto_points(result: dict[str, Any], sqnr_cap: float = 60.0) -> dict[str, tuple[float, float]]:
    """(end-to-end speedup, action SQNR dB capped at ``sqnr_cap``) per measured setting; the baseline at (1, cap).
    Exact settings (infinite SQNR) sit at the cap."""
    points = {"baseline": (1.0, sqnr_cap)}
    for name, entry in result["presets"].items():
        sqnr = entry.get("action_sqnr_db")
        if sqnr is not None and entry.get("speedup_e2e") is not None:
            points[name] = (float(entry["speedup_e2e"]), min(float(sqnr), sqnr_cap))
    return points


def plot_pareto(result: dict[str, Any], folder: str | Path, sqnr_cap: float = 60.0) -> Path:
    """pareto.png: end-to-end speedup against action SQNR, one point per setting, the frontier drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = pareto_points(result, sqnr_cap)
    frontier = pareto_frontier(points)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for name, (speed, sqnr) in points.items():
        on = name in frontier
        ax.scatter(sqnr, speed, color="tab:red" if on else "tab:gray", zorder=3)
        ax.annotate(name, (sqnr, speed), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.plot([points[n][1] for n in frontier], [points[n][0] for n in frontier], color="tab:red",
            linewidth=1, zorder=2, label="Pareto frontier")
    ax.set_xlabel(f"action SQNR vs baseline (dB; exact settings drawn at {sqnr_cap:.0f})")
    ax.set_ylabel("speedup end to end (x)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, folder, "pareto.png")


def to_markdown(result: dict[str, Any]) -> str:
    """The same tables as :func:`print_report`, as GitHub markdown (docs/benchmarks.md is pasted from this)."""
    env, pol = result["environment"], result["policy"]
    lines = [(f"Policy: {pol['source']}, {pol['parameters'] / 1e6:.2f} M parameters, "
              f"{pol['gflops_per_predict_action']:.3f} GFLOPs per `predict_action`. "
              f"torch {env['torch']}, transformers {env['transformers']}, diffusers {env.get('diffusers', '?')}, "
              f"{env['device']}, {env['cpu']}, "
              f"{env['threads']} torch threads of {env['cpu_count']} cores."),
             "", (f"Fidelity observations: {result['observations']}. "
                  f"Layer-pruning calibration: {result['calibration']}."), ""]
    lines += [("| preset | speedup e2e | vision | LM | action head | FLOPs fraction | params fraction | action MSE "
               "| action SQNR dB | cognition SQNR dB | KV reduction | dominant module (accelerated) |"),
              "|---|" + "---:|" * 11]
    for name, r in result["presets"].items():
        m = r["speedup_by_module"]
        lines.append(
            f"| {name} | {_fmt(r['speedup_e2e'], suffix='x')} | {_fmt(m['vision'], suffix='x')} | "
            f"{_fmt(m['language_model'], suffix='x')} | {_fmt(m['action_head'], suffix='x')} | "
            f"{_fmt(r['flops_fraction'], '.3f')} | {_fmt(r['params_fraction'], '.3f')} | "
            f"{_fmt(r.get('action_mse'), '.2e')} | {_fmt(r.get('action_sqnr_db'), '.1f')} | "
            f"{_fmt(r.get('cognition_sqnr_db'), '.1f')} | {_fmt(r.get('kv_bytes_reduction'), suffix='x')} | "
            f"{r['dominant_module']} {100 * r['dominant_module_share']:.0f}% |")
    lines += ["", "Median latency in ms, baseline / accelerated (each pair timed alternately):", "",
              "| preset | e2e | vision | LM | action head |", "|---|---:|---:|---:|---:|"]
    for name, r in result["presets"].items():
        b, a = r["latency_ms"]["baseline"], r["latency_ms"]["accelerated"]
        lines.append(f"| {name} | " + " | ".join(f"{b[k]:.1f} / {a[k]:.1f}" for k in
                                                  ("e2e", "vision", "language_model", "action_head")) + " |")
    hist = result.get("history")
    if hist:
        names = list(hist["settings"])
        lines += ["", f"History mode ({hist['frames']}): per-step latency ms / KV MiB held by the cache tensors", "",
                  "| steps | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
        for i, n in enumerate(hist["lengths"]):
            lines.append(f"| {n} | " + " | ".join(
                f"{hist['settings'][k]['step_ms'][i]:.1f} / {hist['settings'][k]['kv_bytes'][i] / 2**20:.2f}"
                for k in names) + " |")
        lines += ["", ("| setting | at steps | per-step speedup | LM speedup | KV reduction | action SQNR dB vs full "
                       "| latency growth | ms per history step | linear R2 | cache.update share |"),
                  "|---|" + "---:|" * 9]
        for k, s in hist["summary"].items():
            lines.append(
                f"| {k} | {s['at_steps']} | {_fmt(s['per_step_speedup'], suffix='x')} | "
                f"{_fmt(s['lm_speedup'], suffix='x')} | {_fmt(s['kv_bytes_reduction'], suffix='x')} | "
                f"{_fmt(s.get('action_sqnr_db_vs_full'), '.1f')} | "
                f"{_fmt(100 * s['step_latency_growth'], '.0f', '%')} ({s['growth_from']}->{s['growth_to']}) | "
                f"{_fmt(s.get('ms_per_history_step'), '.3f')} | {_fmt(s.get('linear_r2'), '.3f')} | "
                f"{_fmt(100 * s['cache_update_fraction'], '.1f', '%')} |")
    targets = check_targets(result)
    if targets:
        lines += ["", "| target | setting | value | threshold | met |", "|---|---|---:|---|---|"]
        for t in targets:
            lines.append(f"| {t['target']} | {t['setting']} | {_fmt(t['value'], '.3f')} | {t['threshold']} | "
                         f"{'yes' if t['met'] else '**no**'} |")
    for name, err in result.get("errors", {}).items():
        lines.append(f"\n{name} failed: {err}")
    return "\n".join(lines) + "\n"

