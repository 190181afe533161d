"""One progress display for every long command (collect, eval, train-reference, train-kv-gate, bench).

    with progress_bar("collect", total=len(jobs)) as bar:
        for job in jobs:
            ...
            bar.advance(description=f"collect {task}", ok=written)

On a terminal it is a rich bar (description, bar, done/total, elapsed, remaining, the ``info`` fields); anywhere
else (a log file, CI) the same facts as plain, flushed lines on the console's stream: at most one every
``every_s`` seconds, plus the first and the last, so a background log is readable and never floods.
``enabled=False`` shows nothing.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

__all__ = ["ProgressBar", "progress_bar"]

PLAIN_EVERY_S = 30.0


class ProgressBar:
    """A progress display for ``total`` units of work (see the module docstring). Use as a context manager."""

    def __init__(self, description: str, total: int | None, *, completed: int = 0, enabled: bool = True,
                 every_s: float = PLAIN_EVERY_S, transient: bool = False, console: Any = None) -> None:
        self.description, self.total, self.completed = description, total, int(completed)
        self.enabled, self.every_s, self.transient = enabled, float(every_s), transient
        self.info: dict[str, Any] = {}
        self._console = console
        self._rich: Any = None
        self._task: Any = None
        self._start = self._last_line = 0.0
        self._completed_at_start = self.completed  # a resumed run: the rate counts only this run's units

    # ------------------------------------------------------------------ context
    def __enter__(self) -> ProgressBar:
        self._start = time.perf_counter()
        if not self.enabled:
            return self
        from rich.console import Console

        console = self._console = self._console or Console()
        if console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._rich = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                  console=console, transient=self.transient)
            self._rich.__enter__()
            self._task = self._rich.add_task(self.description, total=self.total, completed=self.completed, info="")
        else:
            self._line()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._rich is not None:
            self._rich.__exit__(exc_type, exc, tb)
            self._rich = None
        elif self.enabled and exc_type is None:
            self._line()

    # ------------------------------------------------------------------ updates
    def advance(self, n: int = 1, *, description: str | None = None, **info: Any) -> None:
        """``n`` more units done; optionally a new description and ``info`` fields (shown as ``key value``)."""
        self.update(self.completed + n, description=description, **info)

    def update(self, completed: int, *, description: str | None = None, **info: Any) -> None:
        """Set the units done (e.g. a resumed run's step); as :meth:`advance` otherwise."""
        self.completed = int(completed)
        if description is not None:
            self.description = description
        self.info.update(info)
        if self._rich is not None:
            self._rich.update(self._task, completed=self.completed, description=self.description,
                              info=self._info_text())
        elif self.enabled and time.perf_counter() - self._last_line >= self.every_s:
            self._line()

    # ------------------------------------------------------------------ internals
    def _info_text(self) -> str:
        return " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.info.items())

    def _line(self) -> None:
        self._last_line = now = time.perf_counter()
        elapsed = now - self._start
        done = f"{self.completed}/{self.total}" if self.total is not None else str(self.completed)
        eta = ""
        done_here = self.completed - self._completed_at_start
        if self.total and done_here > 0 and self.completed < self.total and elapsed > 0:
            eta = f", ~{elapsed / done_here * (self.total - self.completed):.0f} s left"
        info = self._info_text()
        # the console's stream: stderr when stdout carries a result (bench --json -)
        print(f"{self.description}: {done} ({elapsed:.0f} s{eta}){' ' + info if info else ''}",
              file=self._console.file, flush=True)


def progress_bar(description: str, total: int | None, **kwargs: Any) -> ProgressBar:
    """A :class:`ProgressBar` (the one way vlaccel's commands show progress)."""
    return ProgressBar(description, total, **kwargs)
