"""Closed-loop success rate of a policy on the simulator suite, baseline vs. acceleration presets.

    summary = run_eval("reference", tasks=["reach-v3", "reach-memory"], episodes=20,
                       presets=["efficientvla"], history=True, workers=2, out_path="runs/eval.jsonl")
    print(render_table(summary))

Protocol
* Every condition (the baseline "none" and each preset) runs on the SAME seeds, `seed0 .. seed0+episodes-1`
  (default seed0 = 1000, disjoint from the demo seeds 0..N), so presets are compared to the baseline
  pair by pair (`vlaccel.sim.stats.paired_difference`).
* At each policy call the first `action_repeat` (4) actions of the returned 16-step chunk are executed,
  then the policy observes again. `history=True` uses `policy.reset(instruction)` + `policy.step(image,
  proprio)` (each call appends that frame to the model's KV cache); otherwise `predict_action`.
  An episode ends at the first success (success) or after the task's `max_steps` (failure).
* Latency is `time.perf_counter()` around the policy call only (not the simulator), after one warm-up
  call per loaded policy.
* One JSON line per finished episode is appended to `out_path` as it finishes. A rerun with the same file
  skips episodes already finished (task, seed, preset, history); episodes that raised are retried. Each
  record carries the condition's `identity` (a digest of the policy's weights, the preset's configs and
  files such as a trained gate): a rerun whose identity differs is refused instead of mixing the two.
* An exception inside an episode becomes a record with "error" set: it counts as a failure in the success
  rate and is reported separately. A worker process that dies is restarted; its episodes are retried once.
* Episodes run in `workers` spawned processes (each loads the policy once per preset and keeps it), in
  this process with `workers=0`, or as Ray tasks with `ray_address` ("local" starts a local cluster).
  The same function, `run_episode(job)`, runs each episode on every path.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from vlaccel.sim.stats import paired_difference, wilson
from vlaccel.sim.tasks import get_task, resolve_tasks

BASELINE = "none"
DEFAULT_SEED0 = 1000
ACTION_REPEAT = 4

PolicySpec = str | Callable[[], Any]


# ---------------------------------------------------------------------- policies
def policy_label(spec: PolicySpec) -> str:
    """A stable, human-readable name for a policy spec (stored in every record)."""
    if isinstance(spec, str):
        return spec
    mod = getattr(spec, "__module__", None) or "?"
    name = getattr(spec, "__qualname__", None) or type(spec).__qualname__
    return f"{mod}:{name}"


def load_policy(spec: PolicySpec) -> Any:
    """ "reference" or a checkpoint path -> `vlaccel.load_policy`; "pkg.module:factory" -> that factory
    called with no arguments; a (picklable, top-level) callable -> called with no arguments."""
    if callable(spec):
        return spec()
    if ":" in spec and not os.path.exists(spec):
        module, _, attr = spec.partition(":")
        if os.getcwd() not in sys.path:  # like `python -m`: modules in the working directory resolve
            sys.path.append(os.getcwd())
        factory = importlib.import_module(module)
        for part in attr.split("."):
            factory = getattr(factory, part)
        return factory()
    import vlaccel

    return vlaccel.load_policy(spec)


def policy_fingerprint(spec: PolicySpec) -> str | None:
    """Fingerprint of the policy's weights (``vlaccel.fingerprint``) and of its config, whose decoding settings
    (denoising steps, guidance scale) change the episodes as much as the weights do; None for a policy that is no
    torch module."""
    policy = load_policy(spec)
    if not hasattr(policy, "state_dict"):
        return None
    from vlaccel.models.io import fingerprint

    config = getattr(policy, "config", None)
    if not hasattr(config, "to_dict"):
        return fingerprint(policy)
    settings = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{fingerprint(policy)}-{settings}"


def _file_digest(path: str) -> str:
    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else "missing"


def condition_identity(policy_fp: str | None, preset: str) -> str:
    """Digest of everything that decides a condition's episodes: the policy's weights and, for a preset, its
    configs and the files they load (``TechniqueConfig.weight_files``, e.g. the KV-Efficient gate)."""
    parts: dict[str, Any] = {"policy": policy_fp}
    if preset != BASELINE:
        import vlaccel

        configs = vlaccel.presets.get(preset)
        parts["configs"] = [c.to_dict() for c in configs]
        parts["files"] = [_file_digest(f) for c in configs for f in c.weight_files()]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


_POLICIES: dict[tuple[str, str], tuple[Any, Any]] = {}


def get_policy(spec: PolicySpec, preset: str, image_size: int = 128) -> tuple[Any, Any]:
    """(policy, handle) for this process, loaded and accelerated once per (policy, preset), warmed up."""
    key = (policy_label(spec), preset)
    if key not in _POLICIES:
        policy = load_policy(spec)
        handle = None
        if preset != BASELINE:
            import vlaccel

            handle = vlaccel.apply(policy, *vlaccel.presets.get(preset))
        warm = np.zeros((image_size, image_size, 3), dtype=np.uint8)
        policy.predict_action(warm, "warm up", proprio=np.zeros(4, dtype=np.float32))
        _POLICIES[key] = (policy, handle)
    return _POLICIES[key]


def as_action_chunk(out: Any) -> np.ndarray:
    """A policy's output (tensor or array, [chunk, 4] or [1, chunk, 4]) as a float32 [chunk, 4] array; a clear
    error for any other shape or a non-finite action."""
    if hasattr(out, "detach"):
        out = out.detach().float().cpu().numpy()
    chunk = np.asarray(out, dtype=np.float32)
    if chunk.ndim == 3 and chunk.shape[0] == 1:
        chunk = chunk[0]
    if chunk.ndim != 2 or chunk.shape[1] != 4 or chunk.shape[0] < 1:
        raise ValueError(f"policy returned actions of shape {chunk.shape}; expected [chunk, 4]")
    if not np.all(np.isfinite(chunk)):
        raise ValueError("policy returned non-finite actions")
    return chunk


# ---------------------------------------------------------------------- one episode
def rollout(
    policy: Any,
    env: Any,
    *,
    seed: int,
    history: bool = False,
    action_repeat: int = ACTION_REPEAT,
    handle: Any = None,
    record_frames: bool = False,
) -> dict:
    """Run one closed-loop episode of `policy` in `env` (a SimEnv). Returns success, steps, policy_calls,
    latency stats and, with record_frames, the observed images under "frames"."""
    obs = env.reset(seed=seed)
    if handle is not None and hasattr(handle, "reset"):
        handle.reset()
    if history:
        policy.reset(env.instruction)
    latencies: list[float] = []
    frames = [obs.image] if record_frames else []
    success = done = False
    while not (success or done):
        t0 = time.perf_counter()
        if history:
            out = policy.step(obs.image, proprio=obs.state)
        else:
            out = policy.predict_action(obs.image, env.instruction, proprio=obs.state)
        latencies.append(time.perf_counter() - t0)
        chunk = as_action_chunk(out)
        n = min(action_repeat, len(chunk))
        for k in range(n):
            obs, step_success, done = env.step(chunk[k], render=(k == n - 1))
            success = success or step_success
            if success or done:
                break
        if record_frames and obs.image is not None:
            frames.append(obs.image)
    lat_ms = 1000.0 * np.asarray(latencies)
    result = {
        "success": bool(success),
        "steps": int(env.t),
        "policy_calls": len(latencies),
        "latency_ms_mean": float(lat_ms.mean()),
        "latency_ms_median": float(np.median(lat_ms)),
        "latency_ms_max": float(lat_ms.max()),
    }
    if record_frames:
        result["frames"] = frames
    return result


def run_episode(job: dict) -> dict:
    """Evaluate one (task, seed, preset) episode described by `job`; never raises.

    Used as-is by the in-process path, the process pool and Ray. Caches the env and the policy in the
    executing process.
    """
    os.environ.setdefault("MUJOCO_GL", "egl")
    rec = {k: job[k] for k in ("task", "seed", "preset", "history", "policy_label", "action_repeat")}
    rec["policy"] = rec.pop("policy_label")
    rec["identity"] = job.get("identity")
    t0 = time.perf_counter()
    try:
        if job.get("threads"):
            _set_torch_threads(job["threads"])
        from vlaccel.sim.env import cached_env

        env = cached_env(job["task"], job["image_size"])
        policy, handle = get_policy(job["policy"], job["preset"], job["image_size"])
        video = job.get("video_path")
        res = rollout(
            policy,
            env,
            seed=job["seed"],
            history=job["history"],
            action_repeat=job["action_repeat"],
            handle=handle,
            record_frames=bool(video),
        )
        frames = res.pop("frames", None)
        if video and frames:
            _write_gif(video, frames)
            res["video"] = video
        rec.update(res)
        rec["error"] = None
    except Exception as e:  # noqa: BLE001  (any failure is recorded; the run goes on)
        rec.update(success=False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-2000:])
    rec["max_steps"] = get_task(job["task"]).max_steps
    rec["wall_s"] = round(time.perf_counter() - t0, 3)
    rec["pid"] = os.getpid()
    return rec


def _set_torch_threads(n: int) -> None:
    try:
        import torch
    except ImportError:
        return
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _write_gif(path: str, frames: list[np.ndarray]) -> None:
    import imageio.v3 as iio

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.stack(frames), duration=120, loop=0)


# ---------------------------------------------------------------------- records on disk
def record_key(rec: dict) -> tuple[str, int, str, bool]:
    return rec["task"], int(rec["seed"]), rec["preset"], bool(rec["history"])


def load_records(path: str | Path) -> list[dict]:
    """All records in a results file; for an episode recorded more than once (an error, then a retry),
    the last record wins. Torn trailing lines (a killed run) are ignored."""
    path = Path(path)
    if not path.exists():
        return []
    latest: dict[tuple, dict] = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            latest[record_key(rec)] = rec
    return list(latest.values())


def _error_record(job: dict, message: str) -> dict:
    return {
        "task": job["task"],
        "seed": job["seed"],
        "preset": job["preset"],
        "history": job["history"],
        "policy": job["policy_label"],
        "action_repeat": job["action_repeat"],
        "identity": job.get("identity"),
        "success": False,
        "error": message,
        "max_steps": get_task(job["task"]).max_steps,
    }


# ---------------------------------------------------------------------- the run
def run_eval(
    policy_spec: PolicySpec = "reference",
    tasks: Iterable[str] | None = None,
    episodes: int = 20,
    presets: Iterable[str] = (),
    history: bool = False,
    workers: int = 1,
    out_path: str | Path = "runs/eval.jsonl",
    ray_address: str | None = None,
    video_dir: str | Path | None = None,
    seed0: int = DEFAULT_SEED0,
    action_repeat: int = ACTION_REPEAT,
    image_size: int = 128,
    progress: bool = True,
) -> dict:
    """Evaluate baseline + `presets` on `episodes` paired seeds per task; returns `summarize(out_path)`.

    workers: 0 = in this process; K >= 1 = K spawned worker processes (ignored with ray_address).
    """
    task_names = resolve_tasks(list(tasks) if tasks is not None else None)
    conditions = list(dict.fromkeys([BASELINE, *presets]))
    if episodes <= 0 or action_repeat <= 0:
        raise ValueError("episodes and action_repeat must be positive")
    label = policy_label(policy_spec)
    out_path = Path(out_path)
    existing = load_records(out_path)
    other = {(r.get("policy"), r.get("action_repeat")) for r in existing} - {(label, action_repeat)}
    if other:
        raise ValueError(
            f"{out_path} already holds results of (policy, action_repeat) {sorted(other, key=str)}, not "
            f"{(label, action_repeat)}; use a different --out file"
        )
    fp = policy_fingerprint(policy_spec)
    identities = {c: condition_identity(fp, c) for c in conditions}
    stale = sorted({r["preset"] for r in existing
                    if r.get("identity") is not None and r["preset"] in identities
                    and r["identity"] != identities[r["preset"]]})
    if stale:
        raise ValueError(
            f"{out_path} holds episodes of {stale} run with other policy weights or other preset settings (a "
            "retrained policy or gate, or a changed preset) than now; resuming would mix the two. Use a different "
            "--out file"
        )
    finished = {record_key(r) for r in existing if not r.get("error")}
    n_workers = max(1, int(workers))
    threads = max(1, (os.cpu_count() or 1) // n_workers) if (workers > 0 or ray_address) else None
    jobs = []
    for task in task_names:
        for i in range(episodes):
            seed = seed0 + i
            for preset in conditions:
                if (task, seed, preset, bool(history)) in finished:
                    continue
                video = None
                if video_dir is not None and i == 0:
                    mode = "hist" if history else "single"
                    video = str(Path(video_dir) / f"{task}__{preset}__{mode}__seed{seed}.gif")
                jobs.append(
                    {
                        "policy": policy_spec,
                        "policy_label": label,
                        "identity": identities[preset],
                        "task": task,
                        "seed": seed,
                        "preset": preset,
                        "history": bool(history),
                        "action_repeat": action_repeat,
                        "image_size": image_size,
                        "video_path": video,
                        "threads": threads,
                    }
                )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if jobs:
        _terminate_last_line(out_path)
        with open(out_path, "a") as out, _progress(progress, len(jobs)) as tick:

            def emit(rec: dict) -> None:
                out.write(json.dumps(rec) + "\n")
                out.flush()
                tick(rec)

            if ray_address:
                _run_ray(jobs, emit, ray_address)
            elif workers <= 0:
                for job in jobs:
                    emit(run_episode(job))
            else:
                _run_pool(jobs, emit, n_workers)
    return summarize(out_path)


def _terminate_last_line(path: Path) -> None:
    """A killed run can leave a torn last line; start appending on a fresh line."""
    if path.exists() and path.stat().st_size > 0:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")


def _run_pool(jobs: list[dict], emit: Callable[[dict], None], workers: int, max_attempts: int = 2) -> None:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    attempts: dict[tuple, int] = {}
    remaining = jobs
    while remaining:
        broken: list[dict] = []
        with ProcessPoolExecutor(
            max_workers=min(workers, len(remaining)), mp_context=mp.get_context("spawn")
        ) as pool:
            futures = {pool.submit(run_episode, job): job for job in remaining}
            for fut in as_completed(futures):
                job = futures[fut]
                try:
                    emit(fut.result())
                except BrokenProcessPool:
                    broken.append(job)
                except Exception as e:  # noqa: BLE001  (e.g. the job could not be pickled)
                    emit(_error_record(job, f"{type(e).__name__}: {e}"))
        remaining = []
        for job in broken:  # a worker died (segfault, OOM kill): retry its episodes in a fresh pool
            key = record_key(job)
            attempts[key] = attempts.get(key, 0) + 1
            if attempts[key] >= max_attempts:
                emit(_error_record(job, "worker process died (BrokenProcessPool)"))
            else:
                remaining.append(job)


def _run_ray(jobs: list[dict], emit: Callable[[dict], None], address: str) -> None:
    import ray

    started = not ray.is_initialized()
    if started:
        if address == "local":
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1, max_retries=1)(run_episode)
        pending = {remote.remote(job): job for job in jobs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            try:
                emit(ray.get(done[0]))
            except Exception as e:  # noqa: BLE001  (the Ray worker died or the task could not run)
                emit(_error_record(job, f"{type(e).__name__}: {e}"))
    finally:
        if started:
            ray.shutdown()


class _progress:
    """Rich progress bar showing running success counts; a no-op when disabled."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total
        self.ok = self.err = 0

    def __enter__(self) -> Callable[[dict], None]:
        if not self.enabled:
            return lambda rec: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
        )
        self.bar.__enter__()
        self.task = self.bar.add_task("eval", total=self.total)
        return self._tick

    def _tick(self, rec: dict) -> None:
        self.ok += bool(rec.get("success"))
        self.err += bool(rec.get("error"))
        self.bar.update(
            self.task,
            advance=1,
            description=f"eval {rec['task']} [{rec['preset']}] ok={self.ok} err={self.err}",
        )

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)


# ---------------------------------------------------------------------- summary
def condition_label(preset: str, history: bool) -> str:
    return f"{preset}+hist" if history else preset


def _cell(recs: list[dict]) -> dict:
    n = len(recs)
    k = sum(bool(r.get("success")) for r in recs)
    errors = sum(bool(r.get("error")) for r in recs)
    ok = [r for r in recs if not r.get("error")]
    calls = sum(r.get("policy_calls", 0) for r in ok)
    lat = sum(r["latency_ms_mean"] * r["policy_calls"] for r in ok) / calls if calls else None
    lo, hi = wilson(k, n)
    return {
        "n": n,
        "successes": k,
        "errors": errors,
        "success_rate": k / n if n else None,
        "ci95": [lo, hi],
        "latency_ms": lat,
        "policy_calls": calls,
        "mean_steps": float(np.mean([r["steps"] for r in ok])) if ok else None,
    }


def summarize(jsonl_path: str | Path) -> dict:
    """Per task and condition: success rate with Wilson 95 % CI, errors, mean latency per policy call;
    the pooled average over tasks; and each preset's paired success difference vs. the baseline
    (same task, seed and history mode) with Newcombe's paired 95 % CI."""
    records = load_records(jsonl_path)
    by_cond: dict[str, dict[str, list[dict]]] = {}
    cond_key: dict[str, tuple[str, bool]] = {}
    tasks: list[str] = []
    for r in records:
        c = condition_label(r["preset"], bool(r["history"]))
        cond_key[c] = (r["preset"], bool(r["history"]))
        by_cond.setdefault(c, {}).setdefault(r["task"], []).append(r)
        if r["task"] not in tasks:
            tasks.append(r["task"])
    # baseline conditions first, then presets in first-seen order
    conds = sorted(by_cond, key=lambda c: (cond_key[c][1], cond_key[c][0] != BASELINE))
    summary: dict[str, Any] = {
        "file": str(jsonl_path),
        "policies": sorted({r.get("policy", "?") for r in records}),
        "conditions": conds,
        "tasks": {},
        "average": {},
        "paired": {},
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
        per_task, all_pairs = {}, []
        for t in tasks:
            base_by_seed = {r["seed"]: bool(r.get("success")) for r in by_cond[base].get(t, [])}
            pairs = [
                (bool(r.get("success")), base_by_seed[r["seed"]])
                for r in by_cond[c].get(t, [])
                if r["seed"] in base_by_seed
            ]
            if pairs:
                per_task[t] = paired_difference(pairs)
                all_pairs += pairs
        summary["paired"][c] = {"baseline": base, "per_task": per_task, "all": paired_difference(all_pairs)}
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
                    )
                )
            lat = "-" if cell["latency_ms"] is None else f"{cell['latency_ms']:.3g}"
            table.add_row(
                t if j == 0 else "",
                c,
                pct(cell["success_rate"]),
                f"{pct(cell['ci95'][0])}-{pct(cell['ci95'][1])}",
                delta,
                lat,
                str(cell["n"]),
                str(cell["errors"]) if cell["errors"] else "",
                end_section=(j == len(cells) - 1),
            )
    return table
