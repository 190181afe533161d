"""Running episode jobs elsewhere: a pool of spawned processes (a dead worker's episodes are retried once in a
fresh pool) or Ray tasks. Both hand every finished record to ``emit`` as it arrives."""

from __future__ import annotations

from collections.abc import Callable

from vlaccel.sim.episode import error_record, run_episode
from vlaccel.sim.episode_store import record_key


def run_pool(jobs: list[dict], emit: Callable[[dict], None], workers: int, max_attempts: int = 2) -> None:
    """Run ``jobs`` in ``workers`` spawned processes; an episode whose worker died ``max_attempts`` times is
    emitted as an error record."""
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
                    emit(error_record(job, f"{type(e).__name__}: {e}"))
        remaining = []
        for job in broken:  # a worker died (segfault, OOM kill): retry its episodes in a fresh pool
            key = record_key(job)
            attempts[key] = attempts.get(key, 0) + 1
            if attempts[key] >= max_attempts:
                emit(error_record(job, "worker process died (BrokenProcessPool)"))
            else:
                remaining.append(job)


def run_ray(jobs: list[dict], emit: Callable[[dict], None], address: str) -> None:
    """Run ``jobs`` as Ray tasks on the cluster at ``address`` ("local" starts a local one, shut down after)."""
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
                emit(error_record(job, f"{type(e).__name__}: {e}"))
    finally:
        if started:
            ray.shutdown()
