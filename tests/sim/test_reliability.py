"""The results file reports what it skips, and eval workers do not outlive a killed parent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from vlaccel.sim.episode_store import load_records

RECORD = {"task": "reach-v3", "seed": 3, "preset": "none", "history": False, "success": True}


def test_bad_lines_are_skipped_with_file_and_line(tmp_path):
    path = tmp_path / "results.jsonl"
    incomplete = {k: v for k, v in RECORD.items() if k != "task"}
    path.write_text(json.dumps(RECORD) + "\n" + json.dumps(incomplete) + "\n"
                    + json.dumps({**RECORD, "seed": 4}) + "\n" + '{"task": "reach-v3", "se')
    with pytest.warns(RuntimeWarning) as said:
        records = load_records(path)
    assert sorted(r["seed"] for r in records) == [3, 4]  # nothing finished is lost
    messages = [str(w.message) for w in said]
    assert any(f"{path}:2: skipped a line that is not an episode record (no task)" in m for m in messages)
    assert any(f"{path}:4: skipped a line that is not JSON" in m for m in messages)


PARENT = """
import sys, time
from vlaccel.sim.workers import process_pool
pool = process_pool(1)
print(pool.submit(__import__("os").getpid).result(), flush=True)
pool.submit(time.sleep, 120)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its (new) parent's reap is gone too
        return f.read().split()[2] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_the_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    assert _alive(worker)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(worker), "the worker outlived its killed parent"


KILLED_EVAL = """
import sys
sys.path.insert(0, {root!r})
from tests.sim.test_evaluate import HoldStillPolicy
from vlaccel.sim.evaluate import run_eval
run_eval(HoldStillPolicy, tasks=["reach-v3"], episodes=6, workers=0, out_path={out!r}, progress=False)
"""


@pytest.mark.sim
def test_eval_killed_mid_run_resumes_without_loss_or_duplicates(tmp_path):
    pytest.importorskip("metaworld")
    from pathlib import Path

    from tests.sim.test_evaluate import HoldStillPolicy
    from vlaccel.sim.evaluate import run_eval

    out = tmp_path / "res.jsonl"
    root = str(Path(__file__).resolve().parents[2])
    run = subprocess.Popen([sys.executable, "-c", KILLED_EVAL.format(root=root, out=str(out))])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 2):
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    finished = out.read_text().count("\n")
    assert 2 <= finished < 6, f"kill the run mid-way: {finished} episodes had finished"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a torn last line is reported and run again
        run_eval(HoldStillPolicy, tasks=["reach-v3"], episodes=6, workers=0, out_path=out, progress=False)
        records = load_records(out)
    assert sorted(r["seed"] for r in records) == list(range(1000, 1006))
    complete = [json.loads(line) for line in out.read_text().splitlines() if line.strip().endswith("}")]
    assert len({r["seed"] for r in complete}) == len(complete) == 6  # each episode recorded once
