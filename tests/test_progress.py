"""The one progress display: a rich bar on a terminal, plain rate-limited lines elsewhere, nothing when disabled."""

from __future__ import annotations

import io

from rich.console import Console

from vlaccel.progress import progress_bar


def test_plain_lines_off_a_terminal_first_last_and_rate_limited():
    out = io.StringIO()
    console = Console(file=out, force_terminal=False)
    with progress_bar("train", 100, console=console, every_s=3600) as bar:
        for step in range(1, 101):
            bar.update(step, loss=0.5 / step)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # the first line and the last; the 99 updates in between are within every_s
    assert lines[0].startswith("train: 0/100 (") and lines[1].startswith("train: 100/100 (")
    assert lines[1].endswith("loss 0.005")


def test_plain_lines_every_update_when_the_interval_is_zero_with_description_and_info():
    out = io.StringIO()
    with progress_bar("collect", 3, console=Console(file=out, force_terminal=False), every_s=0) as bar:
        bar.advance(description="collect reach-v3", dropped=0)
        bar.advance(dropped=1)
    lines = out.getvalue().splitlines()
    assert lines[1].startswith("collect reach-v3: 1/3 (") and "left) dropped 0" in lines[1]
    assert lines[2].startswith("collect reach-v3: 2/3") and lines[2].endswith("dropped 1")


def test_rich_bar_on_a_terminal_and_nothing_when_disabled():
    out = io.StringIO()
    with progress_bar("eval", 2, console=Console(file=out, force_terminal=True, width=100)) as bar:
        bar.advance(ok=1)
        bar.advance(ok=2)
    shown = out.getvalue()
    assert "eval" in shown and "2/2" in shown and "ok 2" in shown
    quiet = io.StringIO()
    with progress_bar("eval", 2, enabled=False, console=Console(file=quiet, force_terminal=False)) as bar:
        bar.advance()
    assert quiet.getvalue() == ""


def test_a_resumed_run_estimates_what_is_left_from_its_own_rate(monkeypatch):
    """Resumed at 900 of 1000: after 100 s for 10 steps, 90 steps are left at 10 s each (not 900 steps per 100 s)."""
    import vlaccel.progress

    now = [0.0]
    monkeypatch.setattr(vlaccel.progress.time, "perf_counter", lambda: now[0])
    out = io.StringIO()
    with progress_bar("train", 1000, completed=900, console=Console(file=out, force_terminal=False), every_s=0) as b:
        now[0] = 100.0
        b.update(910)
        lines = out.getvalue().splitlines()
    assert lines[0] == "train: 900/1000 (0 s)"  # nothing done in this run yet: no estimate
    assert lines[1] == "train: 910/1000 (100 s, ~900 s left)", lines
