"""Running episode jobs elsewhere: a pool of spawned processes (a dead worker's episodes are retried once in a
fresh pool) or Ray tasks. Both hand every finished record to ``emit`` as it arrives."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from vlaccel.sim.episode import error_record, run_episode
from vlaccel.sim.episode_store import record_key


def exit_with_parent(parent_pid: int, period_s: float = 0.5) -> None:
    """Pool initializer: a daemon thread that ends this worker when its parent process is gone (the parent
    killed with SIGKILL cannot shut its pool down; the orphaned worker would otherwise stay, holding a policy)."""

    def watch() -> None:
        while True:
            time.sleep(period_s)
            if os.getppid() != parent_pid:  # reparented: the parent died
                os._exit(1)

    threading.Thread(target=watch, name="vlaccel-exit-with-parent", daemon=True).start()


def process_pool(workers: int) -> Any:
    """A ``ProcessPoolExecutor`` of ``workers`` spawned processes that exit when this process dies."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                               initializer=exit_with_parent, initargs=(os.getpid(),))


def run_pool(jobs: list[dict], emit: Callable[[dict], None], workers: int, max_attempts: int = 2) -> None:
    """Run ``jobs`` in ``workers`` spawned processes; an episode whose worker died ``max_attempts`` times is
    emitted as an error record."""
    from concurrent.futures import as_completed
    from concurrent.futures.process import BrokenProcessPool

    attempts: dict[tuple, int] = {}
    remaining = jobs
    while remaining:
        broken: list[dict] = []
        with process_pool(min(workers, len(remaining))) as pool:
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
