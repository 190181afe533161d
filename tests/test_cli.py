"""The ``vlaccel`` entry point: bad input is one line and exit status 2; a bug propagates with its traceback."""

from __future__ import annotations

import pytest

import vlaccel.info
from vlaccel.cli import main
from vlaccel.errors import MissingInputError, UnknownNameError, UsageError


def test_an_internal_error_inside_a_command_propagates_with_its_traceback(monkeypatch):
    def buggy(args):
        return {}["missing"] + len(None)  # a KeyError from a bug, not from the user's input

    monkeypatch.setattr(vlaccel.info, "run", buggy)
    with pytest.raises(KeyError, match="missing"):
        main(["info"])

    def typo(args):
        raise TypeError("describe() got an unexpected keyword argument 'presets'")

    monkeypatch.setattr(vlaccel.info, "run", typo)
    with pytest.raises(TypeError, match="unexpected keyword"):
        main(["info"])


def test_a_usage_error_inside_a_command_is_one_line_and_exit_2(monkeypatch, capsys):
    def refuses(args):
        raise UsageError("--foo needs --bar: pass --bar too")

    monkeypatch.setattr(vlaccel.info, "run", refuses)
    assert main(["info"]) == 2
    assert capsys.readouterr().err == "vlaccel info: error: --foo needs --bar: pass --bar too\n"


@pytest.mark.parametrize(("argv", "message"), [
    (["info", "--policy", "no/such/policy"], "unknown policy 'no/such/policy'"),
    (["train-reference", "--experiment.freeze-head"], "set freeze_backbone too"),
    (["train-reference", "--data", "no/such/demos"], "no demo directory no/such/demos"),
    (["bench", "--from-json", "no/such.json"], "--from-json no/such.json: no such file"),
    (["collect", "--episodes", "0"], "--episodes must be an integer >= 1, got 0"),
    (["eval", "--tasks", "no-such-task"], "unknown task 'no-such-task'; choose from"),
    (["eval", "--preset", "no-such-preset", "--workers", "0"], "unknown preset 'no-such-preset'; available"),
])
def test_bad_input_the_user_gave_is_reported_in_one_line(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vlaccel {argv[0]}: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_usage_errors_are_still_the_builtin_types_callers_catch():
    assert issubclass(UsageError, ValueError)
    assert issubclass(MissingInputError, FileNotFoundError) and issubclass(MissingInputError, UsageError)
    assert issubclass(UnknownNameError, KeyError) and issubclass(UnknownNameError, UsageError)
    assert str(UnknownNameError("unknown task 'x'")) == "unknown task 'x'"  # not quoted like a KeyError
