"""The evaluation's progress display (:mod:`vlaccel.progress`), with running success and error counts."""

from __future__ import annotations

from collections.abc import Callable

from vlaccel.progress import ProgressBar


class EvalProgress:
    """Context manager yielding ``tick(record)``, called once per finished episode; shows nothing when disabled."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.bar = ProgressBar("eval", total, enabled=enabled)
        self.ok = self.err = 0

    def __enter__(self) -> Callable[[dict], None]:
        self.bar.__enter__()
        return self._tick

    def _tick(self, rec: dict) -> None:
        self.ok += bool(rec.get("success"))
        self.err += bool(rec.get("error"))
        self.bar.advance(description=f"eval {rec['task']} [{rec['preset']}]", ok=self.ok, err=self.err)

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)
