"""``vlaccel train-reference``: registered into the main CLI; its flags are generated from ``TrainConfig``."""

from __future__ import annotations

import argparse
import functools

from vlaccel.config_cli import register_stub
from vlaccel.training.flags import command_line, parse_args

__all__ = ["COMMAND", "command_line", "main", "parse_args", "register"]

COMMAND = "train-reference"


def register(sub: argparse._SubParsersAction) -> None:
    register_stub(sub, COMMAND, "train the reference VLA on simulator demos (resumable; --config RECIPE.toml)")


def main(argv: list[str]) -> int:
    from vlaccel.training.reference import train

    train(parse_args(argv), log=functools.partial(print, flush=True))  # flushed: readable in background logs
    return 0
