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

Modules: `protocol` (constants), `policies` (policy specs, loaded once per process), `identity` (condition
digests), `episode` (one rollout, `run_episode`), `episode_store` (the JSONL file), `workers` (process pool, Ray),
`progress`, `results` (summary and table). This module plans a run and re-exports their public names.
"""


from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from vlaccel.atomic import check_writable
from vlaccel.errors import UsageError, check_names
from vlaccel.sim.episode import as_action_chunk, rollout, run_episode
from vlaccel.sim.episode_store import load_records, record_key, results_lock, terminate_last_line
from vlaccel.sim.identity import condition_identity, loaded_policy_fingerprint, policy_fingerprint
from vlaccel.sim.policies import PolicySpec, get_policy, load_policy, policy_label
from vlaccel.sim.progress import EvalProgress
from vlaccel.sim.protocol import ACTION_REPEAT, BASELINE, DEFAULT_SEED0
from vlaccel.sim.results import condition_label, render_table, summarize
from vlaccel.sim.tasks import resolve_tasks
from vlaccel.sim.workers import run_pool, run_ray

__all__ = [
    "ACTION_REPEAT",
    "BASELINE",
    "DEFAULT_SEED0",
    "PolicySpec",
    "as_action_chunk",
    "condition_identity",
    "condition_label",
    "get_policy",
    "load_policy",
    "load_records",
    "policy_fingerprint",
    "policy_label",
    "record_key",
    "render_table",
    "rollout",
    "run_episode",
    "run_eval",
    "summarize",
]


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
    if len(conditions) > 1:
        import vlaccel

        check_names("preset", conditions[1:], vlaccel.presets.names())
    if episodes <= 0 or action_repeat <= 0:
        raise UsageError(f"episodes (--episodes) and action_repeat (--action-repeat) must be positive, got "
                         f"{episodes}, {action_repeat}")
    label = policy_label(policy_spec)
    out_path = check_writable(out_path, "--out")
    if video_dir is not None:
        check_writable(video_dir, "--video", folder=True)
    with results_lock(out_path):
        _run_locked(policy_spec, task_names, conditions, episodes, history, workers, out_path, ray_address,
                    video_dir, seed0, action_repeat, image_size, progress, label)
    return summarize(out_path)


def _run_locked(policy_spec: PolicySpec, task_names: list[str], conditions: list[str], episodes: int,
                history: bool, workers: int, out_path: Path, ray_address: str | None, video_dir: str | Path | None,
                seed0: int, action_repeat: int, image_size: int, progress: bool, label: str) -> None:
    """``run_eval``'s work, while this process holds ``out_path``'s lock: the episodes the file lacks."""
    existing = load_records(out_path)
    _check_same_policy(out_path, existing, label, action_repeat)
    loaded = load_policy(policy_spec)
    fp = loaded_policy_fingerprint(loaded)
    identities = {c: condition_identity(fp, c, loaded) for c in conditions}
    _check_same_identities(out_path, existing, identities)
    finished = {record_key(r) for r in existing if not r.get("error")}
    n_workers = max(1, int(workers))
    threads = max(1, (os.cpu_count() or 1) // n_workers) if (workers > 0 or ray_address) else None
    common = {"policy": policy_spec, "policy_label": label, "history": bool(history), "action_repeat": action_repeat,
              "image_size": image_size, "threads": threads}
    jobs = _plan_jobs(task_names, conditions, episodes, seed0, finished, identities, video_dir, common)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if jobs:
        terminate_last_line(out_path)
        with open(out_path, "a") as out, EvalProgress(progress, len(jobs)) as tick:

            def emit(rec: dict) -> None:
                out.write(json.dumps(rec) + "\n")
                out.flush()
                tick(rec)

            _execute(jobs, emit, workers, n_workers, ray_address)


def _check_same_policy(out_path: Path, existing: list[dict], label: str, action_repeat: int) -> None:
    """Refuse a results file that holds another policy's (or another action repeat's) episodes."""
    other = {(r.get("policy"), r.get("action_repeat")) for r in existing} - {(label, action_repeat)}
    if other:
        raise UsageError(
            f"{out_path} already holds results of (policy, action_repeat) {sorted(other, key=str)}, not "
            f"{(label, action_repeat)}; use a different --out file"
        )


def _check_same_identities(out_path: Path, existing: list[dict], identities: dict[str, str]) -> None:
    """Refuse a results file whose episodes of a condition were run with other weights or preset settings."""
    stale = sorted({r["preset"] for r in existing
                    if r.get("identity") is not None and r["preset"] in identities
                    and r["identity"] != identities[r["preset"]]})
    if stale:
        raise UsageError(
            f"{out_path} holds episodes of {stale} run with other policy weights or other preset settings (a "
            "retrained policy or gate, or a changed preset) than now; resuming would mix the two. Use a different "
            "--out file"
        )


def _plan_jobs(task_names: list[str], conditions: list[str], episodes: int, seed0: int, finished: set[tuple],
               identities: dict[str, str], video_dir: str | Path | None, common: dict) -> list[dict]:
    """One job per (task, seed, condition) not finished yet, in task, seed, condition order; a GIF path for the
    first seed of each task and condition when ``video_dir`` is set."""
    jobs = []
    for task in task_names:
        for i in range(episodes):
            seed = seed0 + i
            for preset in conditions:
                if (task, seed, preset, common["history"]) in finished:
                    continue
                video = None
                if video_dir is not None and i == 0:
                    mode = "hist" if common["history"] else "single"
                    video = str(Path(video_dir) / f"{task}__{preset}__{mode}__seed{seed}.gif")
                jobs.append({**common, "identity": identities[preset], "task": task, "seed": seed,
                             "preset": preset, "video_path": video})
    return jobs


def _execute(jobs: list[dict], emit: Callable[[dict], None], workers: int, n_workers: int,
             ray_address: str | None) -> None:
    """Run ``jobs`` on Ray (``ray_address``), in this process (``workers <= 0``) or in a process pool."""
    if ray_address:
        run_ray(jobs, emit, ray_address)
    elif workers <= 0:
        for job in jobs:
            emit(run_episode(job))
    else:
        run_pool(jobs, emit, n_workers)
