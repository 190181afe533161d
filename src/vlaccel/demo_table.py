"""The ``vlaccel demo`` table as plain text that fits a log: at most 80 columns, one unit per column, a legend
under it.

Every row carries the baseline median it was timed against (``base ms``: baseline and accelerated calls alternate
in one run per row), and its speedup is the ratio of the two medians as printed, so the three columns always
agree: ``speedup == base ms / ms`` to the printed precision.
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Sequence

WIDTH = 80
HEADERS = ("condition", "base ms", "ms", "speedup", "GFLOPs", "KV MiB", "success", "%")
_GAP = "  "
_MISSING = "-"


@dataclasses.dataclass(frozen=True)
class DemoRow:
    """One condition of the demo: its timing against its own paired baseline, cost and closed-loop success."""

    condition: str
    """Short name (a preset, ``baseline``, or a history-mode cache); described in the legend."""
    base_ms: float
    """Median ms per call of the unaccelerated policy, timed alternately with this row."""
    ms: float
    """Median ms per call of this condition."""
    gflops: float | None
    """GFLOPs per call (None: not counted for this row)."""
    kv_mib: float | None
    """KV-cache size in MiB after the history (None: a single-observation row, no cache)."""
    successes: int
    """Closed-loop episodes that succeeded."""
    episodes: int
    """Closed-loop episodes run."""

    def cells(self) -> tuple[str, ...]:
        """The row as printed, one cell per :data:`HEADERS` entry."""
        base, ms = f"{self.base_ms:.1f}", f"{self.ms:.1f}"
        speedup = f"{float(base) / float(ms):.2f}x" if float(ms) > 0 else _MISSING
        rate = f"{100 * self.successes / self.episodes:.0f}" if self.episodes else _MISSING
        return (self.condition, base, ms, speedup, _number(self.gflops), _number(self.kv_mib),
                f"{self.successes}/{self.episodes}", rate)


def _number(value: float | None) -> str:
    return _MISSING if value is None else f"{value:.2f}"


def render(title: str, rows: Sequence[DemoRow], legend: Sequence[str], descriptions: dict[str, str],
           width: int = WIDTH) -> str:
    """The table under ``title``, then ``legend`` (one paragraph per entry) and a description per condition,
    every line at most ``width`` characters (a condition name too long for the table is shortened)."""
    table = [HEADERS, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]
    rest = sum(widths[1:]) + len(_GAP) * (len(HEADERS) - 1)
    widths[0] = max(len(HEADERS[0]), min(widths[0], width - rest))
    lines = [*textwrap.wrap(title, width)]
    for i, line in enumerate(table):
        name = line[0] if len(line[0]) <= widths[0] else line[0][: widths[0] - 1] + "~"
        cells = [name.ljust(widths[0]), *(cell.rjust(w) for cell, w in zip(line[1:], widths[1:]))]
        lines.append(_GAP.join(cells).rstrip())
        if i == 0:
            lines.append("-" * min(width, sum(widths) + len(_GAP) * (len(HEADERS) - 1)))
    lines.append("")
    for paragraph in legend:
        lines += textwrap.wrap(paragraph, width, subsequent_indent="  ")
    name_width = min(max((len(n) for n in descriptions), default=0), width // 3)
    for name, text in descriptions.items():
        lines += textwrap.wrap(f"{name.ljust(name_width)}  {text}", width,
                               subsequent_indent=" " * (name_width + 2))
    return "\n".join(lines)
