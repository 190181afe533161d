"""``vlaccel`` command line. Each subsystem registers its own subcommands; heavy imports happen inside them.

Commands build the same config objects as the Python API (``vlaccel.presets``), nothing CLI-only. Bad input
(``vlaccel.errors.UsageError``) is printed as one line with exit status 2; any other exception is a bug and
propagates with its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from vlaccel.errors import UsageError

# Modules exposing ``register(subparsers)``. Optional ones are skipped only if their *extra* is missing.
_COMMAND_MODULES = [
    "vlaccel.info",
    "vlaccel.presets_cli",
    "vlaccel.sim.cli",
    "vlaccel.training.cli",
    "vlaccel.bench.cli",
    "vlaccel.training.kv_gate_cli",
    "vlaccel.demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlaccel", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and (err.name == name or name.startswith(err.name + ".")):
                continue  # that command is not part of this version
            raise
        module.register(sub)
    return parser


# Commands whose flags are generated from a config dataclass (``vlaccel.config_cli``): they get their arguments
# unparsed, as ``module.main(argv)``.
_CONFIG_COMMANDS = {
    "train-reference": "vlaccel.training.cli",
    "train-kv-gate": "vlaccel.training.kv_gate_cli",
    "bench": "vlaccel.bench.cli",
}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("MUJOCO_GL", "egl")
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv else None
    try:
        if command in _CONFIG_COMMANDS:
            return int(importlib.import_module(_CONFIG_COMMANDS[command]).main(argv[1:]) or 0)
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except UsageError as err:
        print(f"vlaccel {command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
