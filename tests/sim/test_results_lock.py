"""One run at a time per results file: a second ``eval`` on the same ``--out`` is refused, naming the file and
the running process, before it loads anything; a lock left by a killed run is taken over."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vlaccel.errors import UsageError
from vlaccel.sim.episode_store import load_records, lock_path, results_lock


@pytest.fixture
def running_pid():
    """The pid of a process that runs for the whole test."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _finished_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_held_file_is_refused_naming_it_and_the_process(tmp_path, running_pid):
    out = tmp_path / "res.jsonl"
    lock_path(out).write_text(f"{running_pid}\n")
    with pytest.raises(UsageError, match=rf"{out} is in use by another run \(process {running_pid}, lock file") as err:
        with results_lock(out):
            pass
    assert "\n" not in str(err.value)
    assert lock_path(out).read_text() == f"{running_pid}\n"  # the other run's lock is left alone


def test_the_lock_holds_this_pid_and_goes_at_exit(tmp_path):
    out = tmp_path / "res.jsonl"
    with results_lock(out) as lock:
        assert lock.read_text() == f"{os.getpid()}\n"
        with pytest.raises(UsageError, match=f"process {os.getpid()}"):  # a second run, even in this process
            with results_lock(out):
                pass
    assert not lock.exists()
    with pytest.raises(KeyboardInterrupt, match="stopped by the user"), results_lock(out):
        raise KeyboardInterrupt("stopped by the user")
    assert not lock.exists()


def test_a_stale_lock_is_taken_over(tmp_path):
    out = tmp_path / "res.jsonl"
    lock_path(out).write_text(f"{_finished_pid()}\n")
    with results_lock(out) as lock:
        assert lock.read_text() == f"{os.getpid()}\n"
    assert not lock.exists()


def test_a_second_eval_is_refused_before_any_episode(tmp_path, running_pid):
    pytest.importorskip("metaworld")
    from tests.sim.test_evaluate import HoldStillPolicy
    from vlaccel.sim.evaluate import run_eval

    out = tmp_path / "res.jsonl"
    lock_path(out).write_text(f"{running_pid}\n")
    with pytest.raises(UsageError, match=f"process {running_pid}"):
        run_eval(HoldStillPolicy, tasks=["reach-v3"], episodes=1, workers=0, out_path=out, progress=False)
    assert not out.exists() and load_records(out) == []
    lock_path(out).unlink()
    run_eval(HoldStillPolicy, tasks=["reach-v3"], episodes=1, workers=0, out_path=out, progress=False)
    assert len(out.read_text().splitlines()) == 1 and not lock_path(out).exists()
