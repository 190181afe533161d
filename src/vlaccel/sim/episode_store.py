"""The results file: one JSON line per finished episode, appended as it finishes and read back on a rerun."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

REQUIRED = ("task", "seed", "preset", "history")


def record_key(rec: dict) -> tuple[str, int, str, bool]:
    """What identifies an episode within one results file: (task, seed, preset, history)."""
    return rec["task"], int(rec["seed"]), rec["preset"], bool(rec["history"])


def load_records(path: str | Path) -> list[dict]:
    """All records in a results file; for an episode recorded more than once (an error, then a retry),
    the last record wins. A line that is not a complete record (a torn last line of a killed run, an edited
    line) is skipped with a warning naming the file and line number: its episode runs again, nothing finished
    is lost."""
    path = Path(path)
    if not path.exists():
        return []
    latest: dict[tuple, dict] = {}
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            problem = None
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                problem = f"not JSON ({err.msg})"
            else:
                missing = [k for k in REQUIRED if not isinstance(rec, dict) or k not in rec]
                if missing:
                    problem = f"not an episode record (no {', '.join(missing)})"
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
