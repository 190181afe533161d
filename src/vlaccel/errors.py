"""vlaccel's exceptions: one family under ``VlaccelError``, so ``except vlaccel.VlaccelError`` catches what vlaccel
raised on purpose (and nothing from torch, transformers or the caller's own code).

``UsageError`` and its subclasses mean "the input is wrong", as opposed to a bug in vlaccel. The ``vlaccel``
command prints a ``UsageError`` as one line (``vlaccel CMD: error: ...``) and exits with status 2; every other
exception, other ``VlaccelError`` subclasses included, is a bug and propagates with its traceback. Raise one where
a command checks what the user gave it: an unknown preset, task or policy, a bad combination of flags, a file or
folder they named that is missing or unusable. The message says what is wrong and how to fix it.

Each type also subclasses the built-in exception such code raised before (``ValueError``, ``FileNotFoundError``,
``KeyError``, ``TypeError``, ``RuntimeError``), so ``except ValueError`` and ``pytest.raises(FileNotFoundError)``
keep catching them. ``tests/test_errors.py`` fails on an exception class defined in vlaccel outside this family.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["VlaccelError", "UsageError", "MissingInputError", "UnknownNameError", "WrongTypeError", "WrongStateError",
           "PositionLimitError", "check_names"]


class VlaccelError(Exception):
    """Base of every exception vlaccel defines; a subclass also derives from the built-in type it stands for."""


class UsageError(VlaccelError, ValueError):
    """Bad input from the user (a value, a flag combination, a file's contents); the message says how to fix it."""

    def __str__(self) -> str:  # one plain line, also for the KeyError subclass (KeyError quotes its message)
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class MissingInputError(UsageError, FileNotFoundError):
    """A file or folder the user named (or the command's default for it) does not exist or holds nothing usable."""


class UnknownNameError(UsageError, KeyError):
    """A name the user gave (preset, task, policy) is not one of the known ones."""


class WrongTypeError(UsageError, TypeError):
    """An argument of the wrong type: a preset name or a list where ``vlaccel.apply`` takes configs, a str where a
    loaded model goes."""


class WrongStateError(UsageError, RuntimeError):
    """A call the object's current state refuses: a technique applied twice, a handle removed twice or out of
    order."""


class PositionLimitError(UsageError):
    """An episode grew past the positions the model can address (its ``max_position_embeddings``)."""


def check_names(kind: str, names: Iterable[str], known: Iterable[str]) -> None:
    """Raise ``UnknownNameError`` naming every entry of ``names`` that is not in ``known`` and listing ``known``."""
    known = list(known)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UnknownNameError(f"unknown {kind} {', '.join(map(repr, unknown))}; available: {', '.join(known)}")
