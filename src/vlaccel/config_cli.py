"""Every command's flags are generated from its config dataclass (tyro): one flag per field, its help the field's
docstring, nested dataclasses as ``--group.field``. ``vlaccel.cli`` hands a command its arguments unparsed; the
command's ``main(argv)`` parses them with :func:`parse_config` and runs.

A command may also read a recipe file: ``--config PATH`` (before or among the flags) loads a config whose values
become the defaults, and the flags given beside it override them.
"""

from __future__ import annotations

import contextvars
import dataclasses
import inspect
import math
import shlex
from typing import Any, Callable, TypeVar

from vlaccel.errors import UsageError

T = TypeVar("T")

CONFIG_FLAG = "--config"

# True while tyro constructs a config: tyro versions differ in what they make of an exception raised inside a
# constructor (1.0.0 passes it on, later ones print their own parse error), so the checks run after parsing.
_PARSING = contextvars.ContextVar("vlaccel_config_parsing", default=False)


def check(config: Any) -> None:
    """For a config's ``__post_init__``: run its ``validate()`` (a ``UsageError`` naming the field), now, or once
    ``parse_config`` has built the whole config."""
    if not _PARSING.get():
        config.validate()


def check_number(config: Any, name: str, low: float | None = None, high: float | None = None, *,
                 integer: bool = False, above: bool = False, prefix: str = "") -> None:
    """Refuse ``config.name`` unless it is a finite number (an integer with ``integer``) ``>= low`` (``> low`` with
    ``above``) and ``<= high``; ``None`` passes (an optional field left unset). The ``UsageError`` names the flag."""
    value = getattr(config, name)
    if value is None:
        return
    kind = "an integer" if integer else "a number"
    bounds = [f"{'>' if above else '>='} {low}"] if low is not None else []
    bounds += [f"<= {high}"] if high is not None else []
    ok = (isinstance(value, int) if integer else isinstance(value, (int, float))) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and (low is None or (value > low if above else value >= low))
    if not ok or (high is not None and value > high):
        raise UsageError(f"{flag_name(prefix + name)} must be {' '.join([kind, ' and '.join(bounds)]).strip()}, "
                         f"got {value!r}")


def check_numbers(config: Any, ranges: dict[str, tuple], prefix: str = "") -> None:
    """``check_number`` for each ``field: (low, high, kind)`` of ``ranges``; kind is ``"int"`` (an integer),
    ``"float"`` (a number) or ``"float>"`` (a number above ``low``, e.g. a learning rate > 0)."""
    for name, (low, high, kind) in ranges.items():
        check_number(config, name, low, high, integer=kind == "int", above=kind == "float>", prefix=prefix)


def _check_tree(config: Any) -> None:
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            _check_tree(value)
    if hasattr(config, "validate"):
        config.validate()


def split_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    """``--config PATH`` (or ``--config=PATH``) taken out of ``argv``: (PATH or None, the other arguments)."""
    path, rest, i = None, [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == CONFIG_FLAG or arg.startswith(CONFIG_FLAG + "="):
            if path is not None:
                raise UsageError(f"{CONFIG_FLAG} given twice ({path} and {arg}); pass one recipe and set the rest "
                                 "with flags")
            if "=" in arg:
                path = arg.split("=", 1)[1]
            elif i + 1 < len(argv):
                path, i = argv[i + 1], i + 1
            else:
                raise UsageError(f"{CONFIG_FLAG} needs a path: {CONFIG_FLAG} RECIPE.toml")
        else:
            rest.append(arg)
        i += 1
    return path, rest


def parse_config(config_type: type[T], argv: list[str], prog: str, description: str,
                 default: T | None = None, load: Callable[[str], T] | None = None) -> T:
    """The config ``argv`` states (tyro). With ``load``, ``--config PATH`` reads defaults from a file first."""
    import tyro

    description = inspect.cleandoc(description)
    if load is not None:
        path, argv = split_config_flag(argv)
        if path is not None:
            default = load(path)
        description += (f"\n\n{CONFIG_FLAG} PATH reads a recipe file (TOML, the same field names); flags given beside "
                        "it override its values.")
    token = _PARSING.set(True)
    try:
        config = tyro.cli(config_type, args=argv, prog=prog, description=description, default=default)
    finally:
        _PARSING.reset(token)
    _check_tree(config)
    return config


def flag_name(path: str) -> str:
    """The flag tyro generates for a field path (``experiment.freeze_head`` -> ``--experiment.freeze-head``)."""
    return "--" + path.replace("_", "-")


def command_line(prog: str, config: Any, defaults: Any | None = None, prefix: str = "") -> str:
    """``prog`` with the flags that set ``config``'s non-default fields in the form tyro parses (``--name`` /
    ``--no-name`` for booleans, ``--tasks A B``, ``--task-weights TASK W ...``, ``--out None``), shell-quoted:
    parsing it gives ``config`` back."""
    return shlex.join([*shlex.split(prog), *_flags(config, defaults or type(config)(), prefix)])


def _flags(config: Any, defaults: Any, prefix: str) -> list[str]:
    argv: list[str] = []
    for field in dataclasses.fields(config):
        value, default = getattr(config, field.name), getattr(defaults, field.name)
        path = prefix + field.name
        if dataclasses.is_dataclass(value):
            argv += _flags(value, default, path + ".")
            continue
        if value == default:
            continue
        if isinstance(value, bool):
            head, _, name = path.rpartition(".")
            argv.append(flag_name(path) if value else flag_name((head + "." if head else "") + "no_" + name))
        elif value is None:
            argv += [flag_name(path), "None"]
        elif isinstance(value, dict):
            argv += [flag_name(path), *(str(x) for item in value.items() for x in item)]
        elif isinstance(value, (list, tuple)):
            argv += [flag_name(path), *map(str, value)]
        else:
            argv += [flag_name(path), str(value)]
    return argv
