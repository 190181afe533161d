"""`vlaccel collect` and `vlaccel eval`: registered into the main CLI by `register(subparsers)`.

Heavy imports (mujoco, metaworld, torch, ray) happen inside the command functions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable


def at_least(low: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``low`` (argparse turns the ValueError into a usage error naming the flag)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def register(subparsers: argparse._SubParsersAction) -> None:
    from vlaccel.sim.tasks import LONG_HORIZON_SUITE, TASKS, suite_tasks

    task_help = (f"tasks to run (default: the core suite): {', '.join(TASKS)}; long-horizon tasks run only when named: "
                 f"{', '.join(suite_tasks(LONG_HORIZON_SUITE))}")

    p = subparsers.add_parser(
        "collect",
        help="collect scripted Meta-World expert demos (.npz per episode)",
        description="Run Meta-World's scripted experts and save one compressed .npz "
        "per successful episode under OUT/<task>/seed_<seed>.npz.",
    )
    p.add_argument("--tasks", nargs="+", metavar="TASK", help=task_help)
    p.add_argument("--episodes", type=int, default=60, help="episodes per task (seeds SEED..SEED+N-1)")
    p.add_argument("--out", default="data/demos", help="output directory (default: data/demos)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default: 0)")
    p.add_argument("--workers", type=at_least(1), default=None, help="worker processes (default: all cores)")
    p.add_argument("--frame-every", type=int, default=4, help="save an image every N env steps (default: 4)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--overwrite", action="store_true", help="re-collect episodes whose file exists")
    p.add_argument("--action-noise", type=float, default=0.0,
                   help="DART: std of Gaussian noise on the executed xyz actions (the file keeps the expert's clean "
                        "actions), so demos show recoveries from off-course states; use other --seed values than "
                        "the clean demos' (default: 0, no noise)")
    p.add_argument("--noise-hold", type=int, default=8, help="env steps each noise draw is held (default: 8)")
    p.add_argument("--roll-in", metavar="POLICY", default=None,
                   help="DAgger-style demos: this policy ('reference' or a path) drives each episode until a random "
                        "hand-off frame, then the expert finishes; every step is labelled by the expert")
    p.add_argument("--handoff-max", type=int, default=None, metavar="FRAMES",
                   help="latest hand-off frame with --roll-in (default: a third of the task's horizon)")
    p.set_defaults(func=cmd_collect)

    p = subparsers.add_parser(
        "eval",
        help="closed-loop success rate: baseline vs. presets on paired seeds",
        description="Roll out a policy in the simulator suite. The baseline and every "
        "--preset run on the same seeds; results are appended to --out "
        "(JSON lines) and a rerun skips finished episodes.",
    )
    p.add_argument("--policy", default="reference", help="'reference', a checkpoint path, or module:factory")
    p.add_argument("--tasks", nargs="+", metavar="TASK", help=task_help)
    p.add_argument("--episodes", type=int, default=20, help="episodes (seeds) per task (default: 20)")
    p.add_argument(
        "--preset",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME",
        help="acceleration presets to compare with the baseline ('none' always runs)",
    )
    p.add_argument("--history", action="store_true", help="history mode: policy.reset + policy.step")
    p.add_argument(
        "--workers", type=at_least(0), default=1, help="worker processes; 0 = in this process (default: 1)"
    )
    p.add_argument(
        "--ray", metavar="ADDRESS", help="run episodes as Ray tasks ('local' starts a local cluster)"
    )
    p.add_argument(
        "--out", default="runs/eval.jsonl", help="results file, JSON lines (default: runs/eval.jsonl)"
    )
    p.add_argument("--json", metavar="PATH", help="also write the summary JSON object here")
    p.add_argument("--video", metavar="DIR", help="save a GIF of the first episode per task and preset")
    p.add_argument("--seed", type=int, default=1000, help="first evaluation seed (default: 1000)")
    p.add_argument(
        "--action-repeat", type=int, default=4, help="actions executed per policy call (default: 4)"
    )
    p.set_defaults(func=cmd_eval)


def cmd_collect(args: argparse.Namespace) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    from rich.console import Console

    from vlaccel.sim.collect import collect

    report = collect(
        args.tasks,
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


def cmd_eval(args: argparse.Namespace) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    from rich.console import Console

    from vlaccel.sim.evaluate import run_eval
    from vlaccel.sim.results import render_pairwise, render_table

    summary = run_eval(
        args.policy,
        tasks=args.tasks,
        episodes=args.episodes,
        presets=args.preset,
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
    if summary["errors"]:
        console.print(
            f"[red]{summary['errors']} episodes raised[/red] (counted as failures; see 'error' in {args.out})"
        )
    if args.json:
        from vlaccel import atomic

        atomic.write_text(args.json, json.dumps(summary, indent=2))
        console.print(f"summary JSON: {args.json}")
    return 0
