"""``vlaccel collect`` and ``vlaccel eval``: their flags are generated from :class:`CollectCommand` and
:class:`EvalCommand` (``vlaccel.config_cli``).

Heavy imports (mujoco, metaworld, torch, ray) happen inside the command functions.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import sys
from collections.abc import Iterable
from typing import Annotated

import tyro

from vlaccel.config_cli import check, check_numbers, parse_config
from vlaccel.errors import UsageError

_TASKS_FLAG = tyro.conf.arg(metavar="TASK [TASK ...]")

#: ``--preset A B --preset C`` gives ``(("A", "B"), ("C",))``; the config joins the groups (argparse's "extend").
RepeatableNames = Annotated[tyro.conf.UseAppendAction[tuple[tuple[str, ...], ...]],
                            tyro.conf.arg(metavar="NAME [NAME ...]")]


def joined_names(groups: Iterable[str | Iterable[str]]) -> tuple[str, ...]:
    """The names of ``groups`` in order, one flat tuple (a plain name counts as a group of one)."""
    return tuple(name for group in groups for name in ([group] if isinstance(group, str) else group))


def _task_list() -> str:
    """The tasks ``--tasks`` takes, for the commands' help."""
    from vlaccel.sim.tasks import LONG_HORIZON_SUITE, TASKS, suite_tasks

    return (f"--tasks: {', '.join(TASKS)}; long-horizon tasks run only when named: "
            f"{', '.join(suite_tasks(LONG_HORIZON_SUITE))}.")


@dataclasses.dataclass
class CollectCommand:
    """Run Meta-World's scripted experts and save one compressed .npz per successful episode under
    OUT/<task>/seed_<seed>.npz (resumable: episodes whose file exists are skipped)."""

    tasks: Annotated[tuple[str, ...] | None, _TASKS_FLAG] = None
    """Tasks to collect (None: the core suite; long-horizon tasks only when named)."""
    episodes: int = 60
    """Episodes per task (seeds SEED..SEED+N-1)."""
    out: str = "data/demos"
    """Output directory."""
    seed: int = 0
    """First seed."""
    workers: int | None = None
    """Worker processes (None: all cores)."""
    frame_every: int = 4
    """Save an image every N env steps."""
    image_size: int = 128
    """Rendered image size in pixels (square)."""
    overwrite: bool = False
    """Re-collect episodes whose file exists."""
    action_noise: float = 0.0
    """DART: std of Gaussian noise on the executed xyz actions (the file keeps the expert's clean actions), so demos show recoveries from off-course states; use other --seed values than the clean demos' (0: no noise)."""
    noise_hold: int = 8
    """Env steps each noise draw is held."""
    roll_in: Annotated[str | None, tyro.conf.arg(metavar="POLICY")] = None
    """DAgger-style demos: this policy ('reference' or a path) drives each episode until a random hand-off frame, then the expert finishes; every step is labelled by the expert."""
    handoff_max: Annotated[int | None, tyro.conf.arg(metavar="FRAMES")] = None
    """Latest hand-off frame with --roll-in (None: a third of the task's horizon)."""

    def __post_init__(self) -> None:
        check(self)

    def validate(self) -> None:
        """Refuse numbers out of range and contradictory flags (``UsageError`` naming them) before any work."""
        check_numbers(self, {"episodes": (1, None, "int"), "seed": (0, None, "int"), "workers": (1, None, "int"),
                             "frame_every": (1, None, "int"), "image_size": (1, None, "int"),
                             "action_noise": (0, None, "float"), "noise_hold": (1, None, "int"),
                             "handoff_max": (1, None, "int")})
        if self.roll_in is not None and self.action_noise > 0:
            raise UsageError("--roll-in and --action-noise both leave the expert's path; pass one of them")
        if self.handoff_max is not None and self.roll_in is None:
            raise UsageError("--handoff-max needs --roll-in POLICY (the policy that drives until the hand-off)")


@dataclasses.dataclass
class EvalCommand:
    """Roll out a policy in the simulator suite. The baseline and every --preset run on the same seeds; results
    are appended to --out (JSON lines) and a rerun skips finished episodes."""

    policy: str = "reference"
    """'reference', a checkpoint path, or module:factory."""
    tasks: Annotated[tuple[str, ...] | None, _TASKS_FLAG] = None
    """Tasks to run (None: the core suite; long-horizon tasks only when named)."""
    episodes: int = 20
    """Episodes (seeds) per task."""
    preset: RepeatableNames = ()
    """Acceleration presets to compare with the baseline ('none' always runs); --preset A B and --preset A --preset B both work."""
    history: bool = False
    """History mode: policy.reset + policy.step."""
    workers: int = 1
    """Worker processes; 0 = in this process."""
    ray: Annotated[str | None, tyro.conf.arg(metavar="ADDRESS")] = None
    """Run episodes as Ray tasks ('local' starts a local cluster)."""
    out: str = "runs/eval.jsonl"
    """Results file, JSON lines."""
    json: Annotated[str | None, tyro.conf.arg(metavar="PATH")] = None
    """Also write the summary JSON object here."""
    video: Annotated[str | None, tyro.conf.arg(metavar="DIR")] = None
    """Save a GIF of the first episode per task and preset into this folder."""
    seed: int = 1000
    """First evaluation seed."""
    action_repeat: int = 4
    """Actions executed per policy call."""
    against: Annotated[str | None, tyro.conf.arg(metavar="RESULTS.jsonl")] = None
    """Also compare with another policy's results file (e.g. the policy this one was fine-tuned from, run with the same --seed): paired success differences per task on the seeds both files hold, each condition against the same one there and each preset against its baseline there."""

    def __post_init__(self) -> None:
        self.preset = joined_names(self.preset)
        check(self)

    def validate(self) -> None:
        """Refuse numbers out of range (``UsageError`` naming the flag) and an --against file that is missing or
        holds no episode, before any work."""
        check_numbers(self, {"episodes": (1, None, "int"), "workers": (0, None, "int"), "seed": (0, None, "int"),
                             "action_repeat": (1, None, "int")})
        if self.against is not None:
            from pathlib import Path

            from vlaccel.sim.episode_store import load_records

            if not Path(self.against).is_file():
                raise UsageError(f"--against {self.against}: no such results file; pass the .jsonl file another "
                                 "`vlaccel eval --out` wrote")
            if not load_records(self.against):
                raise UsageError(f"--against {self.against}: holds no episode record; pass the .jsonl file "
                                 "another `vlaccel eval --out` wrote")
            if Path(self.against).resolve() == Path(self.out).resolve():
                raise UsageError(f"--against {self.against} is --out itself; pass the other policy's results file")


def _description(config_type: type) -> str:
    """The command's help text: its config's docstring, then the tasks ``--tasks`` takes."""
    return f"{inspect.cleandoc(config_type.__doc__ or '')}\n{_task_list()}"


def parse_collect(argv: list[str]) -> CollectCommand:
    return parse_config(CollectCommand, argv, "vlaccel collect", _description(CollectCommand))


def parse_eval(argv: list[str]) -> EvalCommand:
    return parse_config(EvalCommand, argv, "vlaccel eval", _description(EvalCommand))


def main_collect(argv: list[str]) -> int:
    return run_collect(parse_collect(argv))


def main_eval(argv: list[str]) -> int:
    return run_eval(parse_eval(argv))


def run_collect(args: CollectCommand) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    from rich.console import Console

    from vlaccel.sim.collect import collect

    report = collect(
        list(args.tasks) if args.tasks is not None else None,
        episodes_per_task=args.episodes,
        out_dir=args.out,
        seed0=args.seed,
        frame_every=args.frame_every,
        workers=args.workers,
        image_size=args.image_size,
        overwrite=args.overwrite,
        action_noise=args.action_noise,
        noise_hold=args.noise_hold,
        roll_in=args.roll_in,
        handoff_max=args.handoff_max,
    )
    console = Console()
    console.print(
        f"wrote {report.written} demos to {args.out} ({report.existing} already there), "
        f"dropped {len(report.dropped)} failed episodes, "
        f"{report.episodes_per_min:.0f} episodes/min"
    )
    if report.dropped:
        console.print(f"dropped: {report.dropped[:20]}{' ...' if len(report.dropped) > 20 else ''}")
    return 0


def run_eval(args: EvalCommand) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    from rich.console import Console

    from vlaccel.sim import evaluate
    from vlaccel.sim.results import render_pairwise, render_table

    summary = evaluate.run_eval(
        args.policy,
        tasks=args.tasks,
        episodes=args.episodes,
        presets=list(args.preset),
        history=args.history,
        workers=args.workers,
        out_path=args.out,
        ray_address=args.ray,
        video_dir=args.video,
        seed0=args.seed,
        action_repeat=args.action_repeat,
    )
    console = Console(width=None if sys.stdout.isatty() else 170)  # a log file gets the whole table, not 80 columns
    console.print(render_table(summary))
    pairwise = render_pairwise(summary)
    if pairwise is not None:
        console.print(pairwise)
    if args.against is not None:
        from vlaccel.sim.results import compare_files, render_comparison

        summary["against"] = compare_files(args.out, args.against)
        if summary["against"]["pairs"]:
            console.print(render_comparison(summary["against"]))
        else:
            console.print(f"--against {args.against}: no condition (preset and history mode) in common with this run")
    if summary["errors"]:
        console.print(
            f"[red]{summary['errors']} episodes raised[/red] (counted as failures; see 'error' in {args.out})"
        )
    if args.json:
        from vlaccel import atomic

        atomic.write_text(args.json, json.dumps(summary, indent=2))
        console.print(f"summary JSON: {args.json}")
    return 0
