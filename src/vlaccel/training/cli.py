"""``vlaccel train-reference``: registered into the main CLI; its flags are in ``training.flags``."""

from __future__ import annotations

import argparse
import functools

from vlaccel.training.flags import _task_weight, add_arguments, command_line, config_from_args

__all__ = ["_task_weight", "add_arguments", "command_line", "config_from_args", "register", "run"]

COMMAND = "train-reference"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(COMMAND, help="train the reference VLA on simulator demos (resumable)")
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vlaccel.training.reference import train

    train(config_from_args(args), log=functools.partial(print, flush=True))  # flushed: readable in background logs
    return 0
