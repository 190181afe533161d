"""``vlaccel`` command line. Every command is a config dataclass (:data:`COMMANDS`); heavy imports happen inside
the command.

Each command's flags are generated from its config dataclass by tyro (``vlaccel.config_cli.parse_config``): one
flag per field, its help the field's docstring, and the checks in the config's ``validate()``. Commands build the
same config objects as the Python API (``vlaccel.presets``), nothing CLI-only. Bad input
(``vlaccel.errors.UsageError``) is printed as one line with exit status 2; any other exception is a bug and
propagates with its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import os
import sys

from vlaccel.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Command:
    """One ``vlaccel`` subcommand: where it runs and which dataclass its flags come from."""

    entry: str
    """``module:function`` called with the command's arguments (unparsed); it parses them into ``config`` with
    ``vlaccel.config_cli.parse_config`` and runs the command, returning the exit status."""
    config: str
    """``module:Class`` of the config dataclass whose fields are the command's flags."""
    summary: str
    """One line for ``vlaccel --help``."""

    @property
    def module(self) -> str:
        return self.entry.partition(":")[0]

    def config_type(self) -> type:
        """The config dataclass (imports its module)."""
        module, _, name = self.config.partition(":")
        return getattr(importlib.import_module(module), name)

    def main(self, argv: list[str]) -> int:
        """Parse ``argv`` into the config and run the command."""
        module, _, name = self.entry.partition(":")
        return int(getattr(importlib.import_module(module), name)(argv) or 0)


#: Every ``vlaccel`` command, in the order ``vlaccel --help`` lists them.
COMMANDS: dict[str, Command] = {
    "info": Command("vlaccel.info:main", "vlaccel.info:InfoCommand",
                    "parameters, tokens per frame and FLOPs per call of a policy"),
    "presets": Command("vlaccel.presets_cli:main", "vlaccel.presets_cli:PresetsCommand",
                       "list the presets and what each resolves to for a policy"),
    "collect": Command("vlaccel.sim.cli:main_collect", "vlaccel.sim.cli:CollectCommand",
                       "collect scripted Meta-World expert demos (.npz per episode)"),
    "eval": Command("vlaccel.sim.cli:main_eval", "vlaccel.sim.cli:EvalCommand",
                    "closed-loop success rate: baseline vs. presets on paired seeds"),
    "train-reference": Command("vlaccel.training.cli:main", "vlaccel.training.train_config:TrainConfig",
                               "train the reference VLA on simulator demos (resumable; --config RECIPE.toml)"),
    "bench": Command("vlaccel.bench.cli:main", "vlaccel.bench.cli:BenchCommand",
                     "speedup, FLOPs, KV memory and fidelity of presets vs the baseline policy"),
    "train-kv-gate": Command("vlaccel.training.kv_gate_cli:main", "vlaccel.training.kv_gate_cli:GateCommand",
                             "train the KV-Efficient gate for a policy (distillation from full history)"),
    "demo": Command("vlaccel.demo:main", "vlaccel.demo:DemoCommand",
                    "baseline vs fast vs EfficientVLA vs KV-Efficient on the bundled policy, one table"),
}


def available_commands() -> dict[str, Command]:
    """The commands of :data:`COMMANDS` whose module is part of this installation."""
    out = {}
    for name, command in COMMANDS.items():
        try:
            found = importlib.util.find_spec(command.module) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if found:
            out[name] = command
    return out


def build_parser() -> argparse.ArgumentParser:
    """``vlaccel [-h] COMMAND ...``: the command list; each command parses its own arguments."""
    parser = argparse.ArgumentParser(prog="vlaccel", description="Accelerate VLA policies, and measure what it costs. "
                                     "`vlaccel COMMAND --help` lists a command's flags.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in available_commands().items():
        sub.add_parser(name, help=command.summary, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("MUJOCO_GL", "egl")
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv else None
    try:
        if command in COMMANDS:
            return COMMANDS[command].main(argv[1:])
        parser = build_parser()
        parser.parse_args(argv)  # --help exits 0, an unknown command exits 2
        parser.print_help()
        return 2
    except UsageError as err:
        print(f"vlaccel {command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (``vlaccel bench --help | head``): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit would fail again
        return 1


if __name__ == "__main__":
    sys.exit(main())
