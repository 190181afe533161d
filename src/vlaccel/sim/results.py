"""Results of an evaluation: per task and condition, success rates with confidence intervals, latency, and
each preset's paired difference from the baseline (``summarize``); the same as a rich table (``render_table``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vlaccel.sim.episode_store import load_records
from vlaccel.sim.protocol import BASELINE
from vlaccel.sim.stats import paired_difference, wilson


def condition_label(preset: str, history: bool) -> str:
    """A condition's name in a summary: the preset, with "+hist" in history mode."""
    return f"{preset}+hist" if history else preset


def _cell(recs: list[dict]) -> dict:
    n = len(recs)
    k = sum(bool(r.get("success")) for r in recs)
    errors = sum(bool(r.get("error")) for r in recs)
    ok = [r for r in recs if not r.get("error")]
    calls = sum(r.get("policy_calls") or 0 for r in ok)
    # a record without latency (written by hand, or by an older vlaccel) counts in the rates, not in the means
    timed = [r for r in ok if r.get("latency_ms_mean") is not None and r.get("policy_calls")]
    timed_calls = sum(r["policy_calls"] for r in timed)
    lat = sum(r["latency_ms_mean"] * r["policy_calls"] for r in timed) / timed_calls if timed_calls else None
    lo, hi = wilson(k, n)
    late = [r["latency_ms_late"] for r in ok if r.get("latency_ms_late") is not None]
    kv_end = [r["kv_bytes_end"] for r in ok if r.get("kv_bytes_end") is not None]
    steps = [r["steps"] for r in ok if r.get("steps") is not None]
    return {
        "n": n,
        "successes": k,
        "errors": errors,
        "success_rate": k / n if n else None,
        "ci95": [lo, hi],
        "latency_ms": lat,
        "policy_calls": calls,
        "mean_steps": float(np.mean(steps)) if steps else None,
        "latency_ms_late": float(np.mean(late)) if late else None,  # mean over episodes of their last calls' median
        "kv_bytes_end": float(np.mean(kv_end)) if kv_end else None,  # mean over episodes, at each one's end
    }


def _paired(new: dict[str, list[dict]], base: dict[str, list[dict]], tasks: list[str]) -> dict:
    """Paired success differences of condition ``new`` against ``base`` (records by task), on the seeds both
    ran: per task and pooled over tasks."""
    per_task, all_pairs = {}, []
    for t in tasks:
        base_by_seed = {r["seed"]: bool(r.get("success")) for r in base.get(t, [])}
        pairs = [(bool(r.get("success")), base_by_seed[r["seed"]]) for r in new.get(t, []) if r["seed"] in base_by_seed]
        if pairs:
            per_task[t] = paired_difference(pairs)
            all_pairs += pairs
    return {"per_task": per_task, "all": paired_difference(all_pairs)}


def _by_condition(records: list[dict]) -> tuple[dict[str, dict[str, list[dict]]], dict[str, tuple[str, bool]],
                                                list[str]]:
    """Records grouped by condition and task, each condition's (preset, history), and the tasks in file order."""
    by_cond: dict[str, dict[str, list[dict]]] = {}
    cond_key: dict[str, tuple[str, bool]] = {}
    tasks: list[str] = []
    for r in records:
        c = condition_label(r["preset"], bool(r["history"]))
        cond_key[c] = (r["preset"], bool(r["history"]))
        by_cond.setdefault(c, {}).setdefault(r["task"], []).append(r)
        if r["task"] not in tasks:
            tasks.append(r["task"])
    return by_cond, cond_key, tasks


def compare_files(new_path: str | Path, old_path: str | Path) -> dict:
    """Two policies on the same seeds (e.g. a fine-tune and the policy it started from, each with its own results
    file): the paired success difference new - old per task and pooled, on the (task, seed) pairs both ran, with
    Newcombe's paired 95 % CI and McNemar's exact p. Under ``"pairs"``, keyed ``"<new condition> vs <old
    condition>"``: every condition both files hold against itself, and every preset of the new file against the old
    file's baseline in its history mode (the accelerated new policy against the old one as it ran plain)."""
    new, new_keys, tasks = _by_condition(load_records(new_path))
    old, _, old_tasks = _by_condition(load_records(old_path))
    tasks = [t for t in tasks if t in old_tasks]
    pairs = {}
    for c in new:
        preset, hist = new_keys[c]
        for o in dict.fromkeys([c, condition_label(BASELINE, hist)]):
            if o in old:
                pairs[f"{c} vs {o}"] = _paired(new[c], old[o], tasks)

    def policies(by_cond: dict[str, dict[str, list[dict]]]) -> list[str]:
        return sorted({r.get("policy", "?") for recs in by_cond.values() for rs in recs.values() for r in rs})

    return {"new": str(new_path), "old": str(old_path), "policies": {"new": policies(new), "old": policies(old)},
            "pairs": pairs}


def summarize(jsonl_path: str | Path) -> dict:
    """Per task and condition: success rate with Wilson 95 % CI, errors, mean latency per policy call;
    the pooled average over tasks; and each preset's paired success difference vs. the baseline
    (same task, seed and history mode) with Newcombe's paired 95 % CI and McNemar's exact p; and, under
    "pairwise", the same pooled comparison for every other pair of presets in one history mode."""
    records = load_records(jsonl_path)
    by_cond, cond_key, tasks = _by_condition(records)
    # baseline conditions first, then presets in first-seen order
    conds = sorted(by_cond, key=lambda c: (cond_key[c][1], cond_key[c][0] != BASELINE))
    summary: dict[str, Any] = {
        "file": str(jsonl_path),
        "policies": sorted({r.get("policy", "?") for r in records}),
        "conditions": conds,
        "tasks": {},
        "average": {},
        "paired": {},
        "pairwise": {},
        "errors": sum(bool(r.get("error")) for r in records),
    }
    for t in tasks:
        summary["tasks"][t] = {c: _cell(by_cond[c].get(t, [])) for c in conds if by_cond[c].get(t)}
    for c in conds:
        summary["average"][c] = _cell([r for recs in by_cond[c].values() for r in recs])
    for c in conds:
        preset, hist = cond_key[c]
        base = condition_label(BASELINE, hist)
        if preset == BASELINE or base not in by_cond:
            continue
        summary["paired"][c] = {"baseline": base, **_paired(by_cond[c], by_cond[base], tasks)}
    # every other pair of conditions in the same history mode (e.g. a gated cache against each retention)
    for i, a in enumerate(conds):
        for b in conds[i + 1:]:
            if cond_key[a][1] == cond_key[b][1] and BASELINE not in (cond_key[a][0], cond_key[b][0]):
                summary["pairwise"][f"{b} vs {a}"] = _paired(by_cond[b], by_cond[a], tasks)["all"]
    return summary


def render_table(summary: dict):
    """A rich Table: one row per (task, condition), plus the pooled average."""
    from rich.table import Table

    table = Table(title=f"closed-loop success ({', '.join(summary['policies']) or 'no results'})")
    for col, kw in [
        ("task", {"no_wrap": True}),
        ("preset", {"no_wrap": True}),
        ("success", {"justify": "right"}),
        ("95% CI", {"justify": "right"}),
        ("Δ vs base [95% CI]", {"justify": "right"}),
        ("ms/call", {"justify": "right"}),
        ("ms/call, last 16", {"justify": "right"}),
        ("KV KiB at end", {"justify": "right"}),
        ("n", {"justify": "right"}),
        ("errors", {"justify": "right"}),
    ]:
        table.add_column(col, **kw)

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.0f}%"

    rows = [(t, cells) for t, cells in summary["tasks"].items()] + [("average", summary["average"])]
    for t, cells in rows:
        for j, (c, cell) in enumerate(cells.items()):
            paired = summary["paired"].get(c)
            if paired is None:
                delta = ""
            else:
                p = paired["all"] if t == "average" else paired["per_task"].get(t)
                delta = (
                    ""
                    if p is None
                    else (
                        f"{100 * p['delta']:+.0f} pp [{100 * p['ci95'][0]:+.0f}, {100 * p['ci95'][1]:+.0f}]"
                        f" p={p['mcnemar_p']:.2g}"
                    )
                )
            lat = "-" if cell["latency_ms"] is None else f"{cell['latency_ms']:.3g}"
            late = "-" if cell.get("latency_ms_late") is None else f"{cell['latency_ms_late']:.3g}"
            kv = "-" if cell.get("kv_bytes_end") is None else f"{cell['kv_bytes_end'] / 1024:.0f}"
            table.add_row(
                t if j == 0 else "",
                c,
                pct(cell["success_rate"]),
                f"{pct(cell['ci95'][0])}-{pct(cell['ci95'][1])}",
                delta,
                lat,
                late,
                kv,
                str(cell["n"]),
                str(cell["errors"]) if cell["errors"] else "",
                end_section=(j == len(cells) - 1),
            )
    return table


def render_pairwise(summary: dict) -> Any:
    """A rich Table of ``summary["pairwise"]``: each pair of presets, pooled over tasks (None when empty)."""
    from rich.table import Table

    if not summary.get("pairwise"):
        return None
    table = Table(title="paired success differences between presets (pooled over tasks)")
    for col in ("comparison", "Δ [95% CI]", "only first / only second", "McNemar p", "pairs"):
        table.add_column(col, justify="left" if col == "comparison" else "right", no_wrap=True)
    for name, p in summary["pairwise"].items():
        table.add_row(name, f"{100 * p['delta']:+.0f} pp [{100 * p['ci95'][0]:+.0f}, {100 * p['ci95'][1]:+.0f}]",
                      f"{p['only_new']} / {p['only_baseline']}", f"{p['mcnemar_p']:.2g}", str(p["n_pairs"]))
    return table


def render_comparison(comparison: dict) -> Any:
    """A rich Table of :func:`compare_files`: per pair of conditions and task, new - old on the same seeds."""
    from rich.table import Table

    names = f"{', '.join(comparison['policies']['new'])} vs {', '.join(comparison['policies']['old'])}"
    table = Table(title=f"paired against {comparison['old']} ({names})")
    for col in ("new vs old", "task", "new / old successes", "Δ [95% CI]", "only new / only old", "McNemar p"):
        table.add_column(col, justify="left" if col in ("new vs old", "task") else "right", no_wrap=True)
    for cond, paired in comparison["pairs"].items():
        rows = [*paired["per_task"].items(), ("all", paired["all"])]
        for j, (task, p) in enumerate(rows):
            table.add_row(cond if j == 0 else "", task,
                          f"{p['both'] + p['only_new']} / {p['both'] + p['only_baseline']} of {p['n_pairs']}",
                          f"{100 * p['delta']:+.0f} pp [{100 * p['ci95'][0]:+.0f}, {100 * p['ci95'][1]:+.0f}]",
                          f"{p['only_new']} / {p['only_baseline']}", f"{p['mcnemar_p']:.2g}",
                          end_section=j == len(rows) - 1)
    return table
