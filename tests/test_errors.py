"""One error family: every exception class vlaccel defines derives from ``vlaccel.errors.VlaccelError``.

The check imports every module under ``src/vlaccel`` (a module that needs a missing third-party package, such
as an optional extra, is left out) and walks the subclass tree of ``BaseException``, so a class defined in a
class body or a function that ran is found too, not only module-level names.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

import vlaccel
from vlaccel.errors import MissingInputError, PositionLimitError, UnknownNameError, UsageError, VlaccelError


def _module_names() -> list[str]:
    root = Path(vlaccel.__file__).parent
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue  # would run the command
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def _import_all() -> list[str]:
    """Import every vlaccel module; returns those left out because a third-party package is missing."""
    left_out = []
    for name in _module_names():
        try:
            importlib.import_module(name)
        except ImportError as err:
            missing = err.name or ""
            if not missing or missing == "vlaccel" or missing.startswith("vlaccel."):
                raise  # vlaccel's own module or name is missing: a bug, not an optional extra
            left_out.append(f"{name} (needs {missing})")
    return left_out


def _vlaccel_exception_classes() -> list[type[BaseException]]:
    found, todo = set(), [BaseException]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return sorted((cls for cls in found if cls.__module__.split(".")[0] == "vlaccel"
                   and issubclass(cls, Exception) and not issubclass(cls, Warning)),  # a warning is not an error
                  key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


def test_every_vlaccel_exception_derives_from_vlaccel_error():
    _import_all()
    classes = _vlaccel_exception_classes()
    names = {cls.__qualname__ for cls in classes}
    # the walk sees the family (guards against a check that passes because it found nothing)
    assert {"VlaccelError", "UsageError", "MissingInputError", "UnknownNameError", "PositionLimitError",
            "UnsupportedModelError", "GateMismatchError"} <= names, names
    outside = [f"{cls.__module__}.{cls.__qualname__}" for cls in classes
               if not issubclass(cls, VlaccelError)]
    assert not outside, (f"exception classes outside the vlaccel.errors.VlaccelError family: {outside}; derive "
                         "each from VlaccelError (or UsageError for bad user input) beside its built-in base")


def test_user_errors_keep_their_builtin_bases():
    assert issubclass(UsageError, VlaccelError) and issubclass(UsageError, ValueError)
    assert issubclass(MissingInputError, UsageError) and issubclass(MissingInputError, FileNotFoundError)
    assert issubclass(UnknownNameError, UsageError) and issubclass(UnknownNameError, KeyError)
    assert issubclass(PositionLimitError, UsageError)
    from vlaccel.adapters import UnsupportedModelError

    assert issubclass(UnsupportedModelError, VlaccelError) and issubclass(UnsupportedModelError, TypeError)
    assert not issubclass(UnsupportedModelError, UsageError)  # the CLI shows its traceback, as before
    # one plain line, also for the KeyError subclass (a bare KeyError quotes its message)
    assert str(UnknownNameError("unknown task 'x'; available: a, b")) == "unknown task 'x'; available: a, b"


def test_except_vlaccel_error_catches_the_family():
    from vlaccel.adapters import get_adapter

    with pytest.raises(VlaccelError, match="no adapter for Linear"):
        get_adapter(torch.nn.Linear(2, 2))
    with pytest.raises(VlaccelError, match="unknown policy '/nonexistent/policy'"):
        vlaccel.load_policy("/nonexistent/policy")


def test_the_cli_catches_only_usage_errors(monkeypatch, capsys):
    """A ``VlaccelError`` that is not a ``UsageError`` means a bug: the CLI lets it through with its traceback."""
    import vlaccel.info
    from vlaccel.adapters import UnsupportedModelError
    from vlaccel.cli import main

    def unsupported(args):
        raise UnsupportedModelError("vlaccel has no adapter for Thing")

    monkeypatch.setattr(vlaccel.info, "run", unsupported)
    with pytest.raises(UnsupportedModelError, match="no adapter for Thing"):
        main(["info"])

    def refuses(args):
        raise MissingInputError("no policy at ./nowhere: pass --policy PATH")

    monkeypatch.setattr(vlaccel.info, "run", refuses)
    assert main(["info"]) == 2
    assert capsys.readouterr().err == "vlaccel info: error: no policy at ./nowhere: pass --policy PATH\n"


def test_errors_all_lists_the_base():
    import vlaccel.errors

    assert "VlaccelError" in vlaccel.errors.__all__
    assert all(hasattr(vlaccel.errors, name) for name in vlaccel.errors.__all__)
