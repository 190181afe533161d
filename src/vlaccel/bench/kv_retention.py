"""Retention policies side by side at equal KV budget: action and cognition error against the full history.

Each episode is played in history mode (``reset`` + ``step`` per frame) once with the full ``DynamicCache``
and once per setting, on the same frames. The action sampler is deterministic (fixed noise seed), so every
difference comes from the cache. Errors are averaged over the frames at which the setting's cache had already
compressed something (earlier frames are identical by construction), then over episodes (mean and standard
error). Settings are also compared pairwise with the first one on the same episodes (mean difference of the
per-episode action MSE, its standard error, and on how many episodes the first one was better). KV bytes are
read off the cache tensors at the last frame.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from vlaccel.techniques.kv_efficient.config import KVEfficientConfig

__all__ = ["compare_retentions", "format_table", "split_holdout"]


def split_holdout(episodes: Sequence[Any], fraction: float) -> tuple[list[Any], list[Any]]:
    """(train, held out): the last ``fraction`` of each task's episodes (by their order) is held out."""
    by_task: dict[str, list[Any]] = {}
    for e in episodes:
        by_task.setdefault(e.instruction, []).append(e)
    train, held = [], []
    for group in by_task.values():
        n_held = int(round(fraction * len(group)))
        train += group[: len(group) - n_held]
        held += group[len(group) - n_held:]
    return train, held


def _play(policy: Any, ep: Any, frames: int) -> tuple[np.ndarray, np.ndarray, int, list[int]]:
    policy.reset(ep.instruction)
    actions, cogs, stored = [], [], []
    for t in range(frames):
        state = None if ep.states is None else ep.states[t]
        actions.append(policy.step(ep.images[t], state))
        cogs.append(policy.last_cognition[0].numpy())
        stored.append(sum(int(layer.keys.shape[-2]) for layer in policy.cache.layers))
    kv = int(sum(layer.keys.nbytes + layer.values.nbytes for layer in policy.cache.layers))
    return np.stack(actions), np.stack(cogs), kv, stored


def compare_retentions(policy: Any, episodes: Sequence[Any], settings: Mapping[str, KVEfficientConfig],
                       max_frames: int | None = None, progress: bool = True) -> dict[str, Any]:
    """JSON-ready comparison of ``settings`` (name -> config) against the full history on ``episodes``."""
    import vlaccel
    from vlaccel.progress import progress_bar

    per: dict[str, dict[str, list[float]]] = {n: {"action_mse": [], "cog_rel": [], "kv_bytes": []} for n in settings}
    by_task: dict[str, dict[str, list[float]]] = {n: {} for n in settings}
    by_episode: dict[str, dict[int, float]] = {n: {} for n in settings}
    cog_by_episode: dict[str, dict[int, float]] = {n: {} for n in settings}
    full_kv: list[int] = []
    with progress_bar("compare retentions", len(episodes) * (1 + len(settings)), enabled=progress) as bar, \
            torch.no_grad():
        for e, ep in enumerate(episodes):
            frames = len(ep.images) if max_frames is None else min(max_frames, len(ep.images))
            a_full, z_full, kv_full, stored_full = _play(policy, ep, frames)
            full_kv.append(kv_full)
            bar.advance()
            for name, cfg in settings.items():
                with vlaccel.applied(policy, cfg):
                    a, z, kv, stored = _play(policy, ep, frames)
                # frames whose cache had compressed something: fewer slots stored than the full cache
                active = np.array([s < f for s, f in zip(stored, stored_full, strict=True)], dtype=bool)
                if active.any():
                    per[name]["action_mse"].append(float(((a[active] - a_full[active]) ** 2).mean()))
                    rel = ((z[active] - z_full[active]) ** 2).sum(-1) / (z_full[active] ** 2).sum(-1)
                    per[name]["cog_rel"].append(float(rel.mean()))
                    by_task[name].setdefault(getattr(ep, "task", "") or "?", []).append(per[name]["action_mse"][-1])
                    by_episode[name][e] = per[name]["action_mse"][-1]
                    cog_by_episode[name][e] = per[name]["cog_rel"][-1]
                per[name]["kv_bytes"].append(kv)
                bar.advance()

    def stat(xs: list[float]) -> dict[str, float]:
        if not xs:
            return {"mean": float("nan"), "sem": float("nan"), "n": 0}
        arr = np.asarray(xs)
        return {"mean": float(arr.mean()), "sem": float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else 0.0,
                "n": len(arr)}

    ref = next(iter(settings))

    def paired(values: dict[str, dict[int, float]]) -> dict[str, dict[str, float]]:
        out = {}
        for name in settings:
            if name == ref:
                continue
            common = sorted(set(values[ref]) & set(values[name]))
            diff = [values[name][e] - values[ref][e] for e in common]
            out[name] = {**stat(diff), "wins_of_" + ref: int(sum(d > 0 for d in diff))}
        return out

    return {
        "episodes": len(episodes), "max_frames": max_frames, "full_kv_bytes": float(np.mean(full_kv)),
        "paired_action_mse_minus_" + ref: paired(by_episode),
        "paired_cognition_rel_err_minus_" + ref: paired(cog_by_episode),
        "settings": {n: {"config": settings[n].to_dict(), "action_mse": stat(v["action_mse"]),
                         "cognition_rel_err": stat(v["cog_rel"]), "kv_bytes": float(np.mean(v["kv_bytes"])),
                         "kv_reduction": float(np.mean(full_kv) / max(1.0, np.mean(v["kv_bytes"]))),
                         "action_mse_by_task": {t: stat(x) for t, x in sorted(by_task[n].items())}}
                     for n, v in per.items()},
    }


def format_table(result: Mapping[str, Any], by_task: bool = False):
    from rich.table import Table

    if by_task:
        names = list(result["settings"])
        tasks = sorted({t for r in result["settings"].values() for t in r["action_mse_by_task"]})
        t = Table(title="action MSE vs full history, per task (mean over episodes)")
        t.add_column("task")
        for n in names:
            t.add_column(n, justify="right")
        for task in tasks:
            t.add_row(task, *[f"{result['settings'][n]['action_mse_by_task'].get(task, {}).get('mean', float('nan')):.5f}"
                              for n in names])
        return t

    t = Table(title=f"retention at equal KV budget: error vs full history ({result['episodes']} held-out episodes)")
    ref = next(iter(result["settings"]))
    pa = result.get("paired_action_mse_minus_" + ref, {})
    pc = result.get("paired_cognition_rel_err_minus_" + ref, {})

    def delta(d: dict[str, float] | None, digits: int) -> str:
        return "" if d is None else f"{d['mean']:+.{digits}f} ± {d['sem']:.{digits}f} ({d['wins_of_' + ref]}/{d['n']})"

    for col in ("setting", "action MSE", "Δ vs 1st row (1st better in)", "cognition rel. err",
                "Δ vs 1st row (1st better in) ", "KV bytes", "KV reduction"):
        t.add_column(col, justify="left" if col == "setting" else "right")
    for name, r in result["settings"].items():
        a, c = r["action_mse"], r["cognition_rel_err"]
        t.add_row(name, f"{a['mean']:.5f} ± {a['sem']:.5f}", delta(pa.get(name), 5), f"{c['mean']:.4f} ± {c['sem']:.4f}",
                  delta(pc.get(name), 4), f"{r['kv_bytes'] / 1024:.0f} KiB", f"{r['kv_reduction']:.2f}x")
    return t
