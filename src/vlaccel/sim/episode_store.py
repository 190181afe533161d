"""The results file: one JSON line per finished episode, appended as it finishes and read back on a rerun."""

from __future__ import annotations

import json
import os
from pathlib import Path


def record_key(rec: dict) -> tuple[str, int, str, bool]:
    """What identifies an episode within one results file: (task, seed, preset, history)."""
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


def terminate_last_line(path: Path) -> None:
    """A killed run can leave a torn last line; start appending on a fresh line."""
    if path.exists() and path.stat().st_size > 0:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
