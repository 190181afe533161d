"""The results file: one JSON line per finished episode, appended as it finishes and read back on a rerun.

One run at a time per file: :func:`results_lock` holds ``FILE.lock`` (the running process's pid) while a run
reads and appends, so a second run on the same file is refused instead of running every episode again.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from vlaccel.errors import UsageError

REQUIRED = ("task", "seed", "preset", "history")

_NUMBER = "a number"
#: the JSON type of each field the readers use (resume, summary), where a record has it; None allowed where listed
FIELD_TYPES: dict[str, tuple[str, bool]] = {
    "task": ("a string", False), "seed": ("an integer", False), "preset": ("a string", False),
    "history": ("true or false", False), "success": ("true or false", False), "error": ("a string", True),
    "policy": ("a string", False), "action_repeat": ("an integer", False), "identity": ("a string", True),
    "steps": ("an integer", True), "policy_calls": ("an integer", True), "latency_ms_mean": (_NUMBER, True),
    "latency_ms_late": (_NUMBER, True), "kv_bytes_end": (_NUMBER, True),
}
_CHECKS = {
    "a string": lambda v: isinstance(v, str),
    "an integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "true or false": lambda v: isinstance(v, bool),
    _NUMBER: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
}


def record_key(rec: dict) -> tuple[str, int, str, bool]:
    """What identifies an episode within one results file: (task, seed, preset, history)."""
    return rec["task"], int(rec["seed"]), rec["preset"], bool(rec["history"])


def record_problem(rec: object) -> str | None:
    """Why ``rec`` (a parsed line) is not an episode record: not an object, a required field missing, or a field
    of the wrong type (:data:`FIELD_TYPES`); None when it is one."""
    if not isinstance(rec, dict):
        return f"not an episode record (a JSON {type(rec).__name__}, not an object)"
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        return f"not an episode record (no {', '.join(missing)})"
    for name, (kind, nullable) in FIELD_TYPES.items():
        value = rec.get(name)
        if name in rec and not (value is None and nullable) and not _CHECKS[kind](value):
            return f"not an episode record ({name} is {json.dumps(value)[:40]}, not {kind})"
    return None


def load_records(path: str | Path) -> list[dict]:
    """All records in a results file; for an episode recorded more than once (an error, then a retry),
    the last record wins. A line that is not a complete record (a torn last line of a killed run, an edited
    line, a field of the wrong type, bytes that are not UTF-8) is skipped with a warning naming the file and line
    number: its episode runs again, nothing finished is lost."""
    path = Path(path)
    if not path.exists():
        return []
    if path.is_dir():
        raise UsageError(f"{path} is a folder; a results file is a .jsonl file (one JSON record per line): pass one")
    latest: dict[tuple, dict] = {}
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            problem = None
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as err:
                line, problem = "", f"not UTF-8 text (byte {err.start})"
            if not line and problem is None:
                continue
            if problem is None:
                try:
                    rec = json.loads(line)
                except (json.JSONDecodeError, RecursionError) as err:
                    problem = f"not JSON ({getattr(err, 'msg', 'nested too deep')})"
                else:
                    problem = record_problem(rec)
            if problem is not None:
                warnings.warn(f"{path}:{number}: skipped a line that is {problem}; its episode, if any, runs again",
                              RuntimeWarning, stacklevel=2)
                continue
            latest[record_key(rec)] = rec
    return list(latest.values())


def terminate_last_line(path: Path) -> None:
    """A killed run can leave a torn last line; start appending on a fresh line."""
    if path.exists() and path.stat().st_size > 0:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")


#: a lock file with no pid yet is being written by the run that created it, unless it is older than this
_UNWRITTEN_LOCK_S = 10.0


def lock_path(path: str | Path) -> Path:
    """The lock file of the results file ``path``: ``PATH.lock`` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _holder(lock: Path) -> int | None:
    """The pid holding ``lock`` if that process still runs (-1: a lock just created, pid not yet written);
    None when the lock is stale (its process is gone) or already gone."""
    try:
        text, age = lock.read_text().strip(), time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return None
    if not text.isdigit():
        return -1 if age < _UNWRITTEN_LOCK_S else None
    pid = int(text)
    return pid if _pid_alive(pid) else None


@contextlib.contextmanager
def results_lock(path: str | Path) -> Iterator[Path]:
    """Hold the results file ``path`` for this process: create ``PATH.lock`` (``O_CREAT | O_EXCL``) holding
    this pid, removed on exit. A lock whose process is gone (a killed run) is taken over; one whose process runs
    is refused with ``UsageError`` naming the file and that process."""
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pid = _holder(lock)
            if pid is not None:
                who = f"process {pid}" if pid > 0 else "a process that is starting"
                raise UsageError(f"{path} is in use by another run ({who}, lock file {lock}); wait for it to "
                                 f"finish or pass another --out (delete {lock} only if that process is not "
                                 "writing it)") from None
            lock.unlink(missing_ok=True)  # stale: its run was killed
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        break
    else:
        raise UsageError(f"could not take the lock file {lock} for {path}; another run keeps recreating it")
    try:
        yield lock
    finally:
        with contextlib.suppress(OSError):
            if lock.read_text().strip() == str(os.getpid()):
                lock.unlink()
