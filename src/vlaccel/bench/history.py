"""History scaling: per-step latency and KV bytes as the episode grows, full cache vs compressed caches.

Every setting (the full ``DynamicCache`` plus each compressed-cache configuration) gets its own deep copy
of the policy, and all of them play the *same* episode in lockstep: at each control step every setting
runs ``step(frame)`` once, in strict round robin, so drift of the shared machine hits them alike. The
per-step latency reported at history length N is the median, over repeats, of the steps
``N - window + 1 .. N`` (steps near N); KV bytes are read off the cache tensors right after step N
(``memory.kv_bytes``), and the action chunk at step N is compared with the full cache's.

Also recorded per step: the language model's share (hooks, see ``latency.ModuleTimer``) and the time
spent inside ``cache.update`` (the whole cost of a cache policy's bookkeeping: concatenation for the full
cache; aggregation, gating and eviction for a compressed one).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from vlaccel.bench.fidelity import FidelityAccumulator, episode_frames
from vlaccel.bench.latency import ModuleTimer, _Clock, policy_modules, ratio
from vlaccel.memory import cache_tensor_bytes, kv_bytes, kv_storage_bytes

__all__ = ["DEFAULT_LENGTHS", "history_scaling", "predicted_kv_bytes", "summarize"]

DEFAULT_LENGTHS = (1, 2, 4, 8, 16, 32, 64, 96)  # 96: every reach-memory-long expert episode is >= 97 frames
FULL = "full"


class _UpdateTimer:
    """Time spent in ``cache.update`` (an instance-level wrapper on the bench's own cache object; CUDA
    events on GPU, so no synchronisation is added inside the step)."""

    def __init__(self, clock: _Clock):
        self.clock = clock
        self.spans: list[tuple[Any, Any]] = []

    def wrap(self, cache: Any) -> None:
        inner = cache.update

        def update(*args: Any, **kwargs: Any) -> Any:
            start = self.clock.mark()
            out = inner(*args, **kwargs)
            self.spans.append((start, self.clock.mark()))
            return out

        cache.update = update

    def seconds(self) -> float:
        """Total since the last read (call after the device was synchronised)."""
        total = sum(self.clock.seconds(a, b) for a, b in self.spans)
        self.spans.clear()
        return total


def _window_median(series: list[list[float]], n: int, window: int) -> float:
    """Median over repeats of steps n-window+1..n (1-based) of each repeat's per-step series."""
    lo = max(0, n - window)
    return statistics.median(v for rep in series for v in rep[lo:n])


def history_scaling(policy: Any, settings: Mapping[str, Sequence[Any]], lengths: Sequence[int] = DEFAULT_LENGTHS,
                    repeats: int = 1, window: int = 4, device: str = "cpu", demos_dir: str = "data/demos",
                    warmup_steps: int = 3, prepare: Callable[[Any], None] | None = None,
                    on_step: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run the lockstep episodes; return the JSON series (see module docstring).

    A short unrecorded episode of ``warmup_steps`` steps per setting runs first (allocator, kernels).

    ``settings`` maps a name to the technique configs to apply ("full" with ``[]`` is added first if
    missing: it is the reference for speedups, KV reduction and action fidelity). ``prepare(copy)`` runs
    on each setting's policy copy before its configs are applied (e.g. calibration data).
    """
    import vlaccel

    lengths = sorted({int(n) for n in lengths})
    if not lengths or lengths[0] < 1:
        raise ValueError(f"history lengths must be positive integers, got {lengths}")
    if repeats < 1 or window < 1:
        raise ValueError(f"repeats and window must be >= 1, got repeats={repeats}, window={window}")
    settings = {FULL: [], **{k: list(v) for k, v in settings.items() if k != FULL}}
    steps = lengths[-1]
    instruction, frames, proprio, source = episode_frames(policy.config, steps, demos_dir)
    clock = _Clock(device)

    policies, handles, timers, errors = {}, [], {}, {}
    for name, configs in settings.items():
        p = copy.deepcopy(policy)
        try:
            if configs and prepare is not None:
                prepare(p)
            if configs:
                handles.append(vlaccel.apply(p, *configs))
        except Exception as err:  # noqa: BLE001 - a setting this policy does not support: reported, the others still run
            errors[name] = f"{type(err).__name__}: {err}"
            continue
        policies[name] = p
        timers[name] = ModuleTimer(policy_modules(p), device).attach()
    settings = {k: v for k, v in settings.items() if k in policies}

    names = list(settings)
    lat = {k: [] for k in names}  # [repeat][step] seconds
    lm = {k: [] for k in names}
    upd = {k: [] for k in names}
    kv = {k: {} for k in names}
    kv_storage = {k: {} for k in names}
    cache_total = {k: {} for k in names}
    fid = {k: {n: FidelityAccumulator() for n in lengths} for k in names}
    want = set(lengths)
    try:
        for k in names:  # warm-up episode, not recorded
            policies[k].reset(instruction)
            for t in range(min(warmup_steps, steps)):
                policies[k].step(frames[t], proprio[t])
        for _ in range(repeats):
            updaters = {}
            for k in names:
                policies[k].reset(instruction)
                updaters[k] = _UpdateTimer(clock)
                updaters[k].wrap(policies[k].cache)
                for series in (lat, lm, upd):
                    series[k].append([])
            for t in range(steps):
                actions = {}
                for k in names:
                    p, timer, updater = policies[k], timers[k], updaters[k]
                    timer.begin()
                    updater.spans.clear()
                    clock.sync()
                    t0 = time.perf_counter()
                    actions[k] = p.step(frames[t], proprio[t])
                    clock.sync()
                    lat[k][-1].append(time.perf_counter() - t0)
                    lm[k][-1].append(timer.totals()["language_model"])
                    upd[k][-1].append(updater.seconds())
                    if on_step is not None:
                        on_step()
                if t + 1 in want:
                    for k in names:
                        cache = policies[k].cache
                        kv[k][t + 1] = kv_bytes(cache)
                        kv_storage[k][t + 1] = kv_storage_bytes(cache)
                        cache_total[k][t + 1] = cache_tensor_bytes(cache)
                        fid[k][t + 1].add(actions[FULL], actions[k])
    finally:
        for timer in timers.values():
            timer.detach()
        for h in handles:
            h.remove()

    prefix = int(policy.instruction_ids(instruction).shape[1])
    series = {}
    for k in names:
        series[k] = {
            "configs": [c.to_dict() if hasattr(c, "to_dict") else repr(c) for c in settings[k]],
            "step_ms": [1e3 * _window_median(lat[k], n, window) for n in lengths],
            "lm_ms": [1e3 * _window_median(lm[k], n, window) for n in lengths],
            "cache_update_ms": [1e3 * _window_median(upd[k], n, window) for n in lengths],
            "kv_bytes": [kv[k][n] for n in lengths],
            "kv_storage_bytes": [kv_storage[k][n] for n in lengths],
            "cache_tensor_bytes": [cache_total[k][n] for n in lengths],
            "predicted_kv_bytes": predicted_kv_bytes(policy, settings[k], prefix, lengths),
            "action_mse_vs_full": [fid[k][n].result("a").get("a_mse") for n in lengths],
            "action_sqnr_db_vs_full": [fid[k][n].result("a").get("a_sqnr_db") for n in lengths],
        }
    return {"lengths": lengths, "repeats": repeats, "window": window, "frames": source,
            "instruction": instruction, "tokens_per_frame": policy.config.tokens_per_frame,
            "settings": series, "summary": summarize(lengths, series), "errors": errors}


def predicted_kv_bytes(policy: Any, configs: Sequence[Any], prefix: int,
                       lengths: Sequence[int]) -> list[int] | None:
    """KV bytes the analytic cost model (``bench.cost_model``) predicts, for the full cache and for settings
    made of one KV-Efficient config with a fixed budget; ``None`` where the model does not apply (other
    techniques change the layers or tokens, threshold mode keeps a data-dependent number of chunks)."""
    from vlaccel.api import resolve_configs
    from vlaccel.bench import cost_model

    shape = cost_model.LMShape.from_config(policy.language_model.config,
                                           bytes_per_element=policy.dtype.itemsize)
    q = policy.config.tokens_per_frame
    if not configs:
        return [cost_model.kv_bytes(shape, prefix + n * q) for n in lengths]
    if len(configs) != 1 or not type(configs[0]).history_only:
        return None
    (cfg,) = resolve_configs(policy, *configs)  # window and sinks in tokens
    if not cfg.protect_prefix or getattr(cfg, "threshold", None) is not None:
        return None
    chunk = cfg.chunk or q
    return [cost_model.kv_bytes(shape, cost_model.effective_tokens(cfg, prefix, q, chunk, n)) for n in lengths]


def _linear_fit(x: Sequence[int], y: Sequence[float]) -> dict[str, float | None]:
    """Least-squares line y = a + b x: slope (ms per history step) and R^2 (1 = linear growth)."""
    if len(x) < 3:
        return {"ms_per_history_step": None, "linear_r2": None}
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    slope, intercept = np.polyfit(xs, ys, 1)
    resid = ys - (intercept + slope * xs)
    total = float(np.sum((ys - ys.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid ** 2)) / total if total > 0 else 1.0
    return {"ms_per_history_step": float(slope), "linear_r2": r2}


def summarize(lengths: Sequence[int], series: Mapping[str, Mapping[str, list]], at: int = 64) -> dict[str, Any]:
    """Per setting: speedup and KV reduction vs the full cache at ``at`` steps (or the longest run if
    shorter), growth of per-step latency from step 16 (or the first) to the last, cache-update share, and
    a straight-line fit of per-step latency against history length (slope, R^2)."""
    lengths = list(lengths)
    idx_at = lengths.index(at) if at in lengths else len(lengths) - 1
    idx_lo = lengths.index(16) if 16 in lengths else 0
    full = series[FULL]
    out = {}
    for k, s in series.items():
        out[k] = {
            "at_steps": lengths[idx_at],
            "per_step_speedup": ratio(full["step_ms"][idx_at], s["step_ms"][idx_at]),
            "lm_speedup": ratio(full["lm_ms"][idx_at], s["lm_ms"][idx_at]),
            "kv_bytes_reduction": ratio(full["kv_bytes"][idx_at], s["kv_bytes"][idx_at]),
            "growth_from": lengths[idx_lo],
            "growth_to": lengths[-1],
            "step_latency_growth": ratio(s["step_ms"][-1], s["step_ms"][idx_lo]) - 1.0,
            "lm_latency_growth": ratio(s["lm_ms"][-1], s["lm_ms"][idx_lo]) - 1.0,
            "cache_update_fraction": ratio(s["cache_update_ms"][idx_at], s["step_ms"][idx_at]),
            "action_sqnr_db_vs_full": s.get("action_sqnr_db_vs_full", [None] * len(lengths))[idx_at],
            **_linear_fit(lengths, s["step_ms"]),
        }
    return out
