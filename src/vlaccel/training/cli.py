"""``vlaccel train-reference``: listed in ``vlaccel.cli.COMMANDS``; its flags are generated from ``TrainConfig``."""

from __future__ import annotations

import functools

from vlaccel.training.flags import command_line, parse_args

__all__ = ["COMMAND", "command_line", "main", "parse_args"]

COMMAND = "train-reference"


def main(argv: list[str]) -> int:
    from vlaccel.training.reference import train

    train(parse_args(argv), log=functools.partial(print, flush=True))  # flushed: readable in background logs
    return 0
