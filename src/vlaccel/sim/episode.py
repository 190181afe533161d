"""One closed-loop episode: ``rollout`` of a policy in a ``SimEnv``, and ``run_episode(job)``, which every
execution path (in process, process pool, Ray) runs for each episode and which turns any failure into a record."""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from vlaccel.sim.policies import get_policy
from vlaccel.sim.protocol import ACTION_REPEAT
from vlaccel.sim.tasks import get_task


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


LATE_CALLS = 16


def _held_kv_bytes(policy: Any) -> int | None:
    """KV bytes the policy's episode cache holds now (``vlaccel.memory.kv_bytes``), None without one."""
    cache = getattr(policy, "cache", None)
    if cache is None or getattr(cache, "layers", None) is None:
        return None
    from vlaccel.memory import kv_bytes

    return int(kv_bytes(cache))


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
    latency stats (also the median of the last ``LATE_CALLS`` calls), in history mode the KV bytes the cache
    holds at the episode's end, and, with record_frames, the observed images under "frames"."""
    obs = env.reset(seed=seed)
    if handle is not None and hasattr(handle, "reset"):
        handle.reset()
    if history:
        policy.reset(env.instruction)
    latencies: list[float] = []
    frames = [obs.image] if record_frames else []
    success = done = False
    kv_end = None
    try:
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
        if history:
            kv_end = _held_kv_bytes(policy)
    finally:
        if history and hasattr(policy, "end_episode"):  # free the episode's cache; the policy is reused
            policy.end_episode()
    lat_ms = 1000.0 * np.asarray(latencies)
    result = {
        "success": bool(success),
        "steps": int(env.t),
        "policy_calls": len(latencies),
        "latency_ms_mean": float(lat_ms.mean()),
        "latency_ms_median": float(np.median(lat_ms)),
        "latency_ms_max": float(lat_ms.max()),
        # the last calls of the episode, where a growing cache is largest (flat for a bounded one)
        "latency_ms_late": float(np.median(lat_ms[-LATE_CALLS:])),
        "kv_bytes_end": kv_end,
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
            res.update(_saved_video(video, frames))
        rec.update(res)
        rec["error"] = None
    except Exception as e:  # noqa: BLE001  (any failure is recorded; the run goes on)
        rec.update(success=False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-2000:])
    rec["max_steps"] = get_task(job["task"]).max_steps
    rec["wall_s"] = round(time.perf_counter() - t0, 3)
    rec["pid"] = os.getpid()
    return rec


def error_record(job: dict, message: str) -> dict:
    """The record of an episode that could not run at all (its worker died, the job could not be sent)."""
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


def _set_torch_threads(n: int) -> None:
    try:
        import torch
    except ImportError:
        return
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _saved_video(path: str, frames: list[np.ndarray]) -> dict:
    """``{"video": path}`` once the GIF is written, or ``{"video_error": why}``: a GIF that cannot be written
    (a full disk, an unwritable folder) never turns the finished episode's result into a failure."""
    try:
        _write_gif(path, frames)
    except Exception as e:  # noqa: BLE001  (recorded beside the result)
        return {"video": None, "video_error": f"{path}: {type(e).__name__}: {e}"}
    return {"video": path}


def _write_gif(path: str, frames: list[np.ndarray]) -> None:
    import imageio.v3 as iio

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.stack(frames), duration=120, loop=0)
