"""The evaluation's progress bar (rich), with running success and error counts."""

from __future__ import annotations

from collections.abc import Callable


class EvalProgress:
    """Context manager yielding ``tick(record)``, called once per finished episode; a no-op when disabled."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total
        self.ok = self.err = 0

    def __enter__(self) -> Callable[[dict], None]:
        if not self.enabled:
            return lambda rec: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
        )
        self.bar.__enter__()
        self.task = self.bar.add_task("eval", total=self.total)
        return self._tick

    def _tick(self, rec: dict) -> None:
        self.ok += bool(rec.get("success"))
        self.err += bool(rec.get("error"))
        self.bar.update(
            self.task,
            advance=1,
            description=f"eval {rec['task']} [{rec['preset']}] ok={self.ok} err={self.err}",
        )

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)
