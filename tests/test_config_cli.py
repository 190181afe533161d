"""Every command's flags are generated from a config dataclass: every field is a flag with its docstring as help,
a recipe file sets the defaults, and a bad flag is a usage error (exit 2), not a traceback."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from vlaccel.cli import COMMANDS, main


def _flags(config_type: type, prefix: str = "") -> dict[str, str]:
    """flag -> the first words of its field's docstring, for every field (nested dataclasses too)."""
    hints = typing.get_type_hints(config_type, include_extras=True)
    docs = _field_docs(config_type)
    flags = {}
    for field in dataclasses.fields(config_type):
        hint = hints[field.name]
        inner = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
        if dataclasses.is_dataclass(inner):
            omit = typing.get_origin(hint) is typing.Annotated  # tyro.conf.OmitArgPrefixes: flags keep their names
            flags.update(_flags(inner, prefix if omit else f"{prefix}{field.name}."))
        else:
            flags["--" + (prefix + field.name).replace("_", "-")] = " ".join(docs[field.name].split()[:3])
    return flags


def _field_docs(config_type: type) -> dict[str, str]:
    import ast
    import inspect
    import textwrap

    body = ast.parse(textwrap.dedent(inspect.getsource(config_type))).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = after.value.value
    missing = {f.name for f in dataclasses.fields(config_type)} - set(docs)
    assert not missing, f"{config_type.__name__} fields without a docstring (their flag would have no help): {missing}"
    return docs


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_is_a_config_dataclass_whose_fields_are_its_flags(command, capsys, monkeypatch):
    """``vlaccel COMMAND --help`` is generated from the command's config dataclass: each field, with its docstring."""
    config_type = COMMANDS[command].config_type()
    assert dataclasses.is_dataclass(config_type) and hasattr(config_type, "validate"), config_type
    monkeypatch.setenv("COLUMNS", "200")  # one help line per flag
    with pytest.raises(SystemExit, match="^0$") as exit_info:  # SystemExit's message is its exit status
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: vlaccel {command} ")
    text = " ".join(out.split())
    flags = _flags(config_type)
    for flag, words in flags.items():
        assert flag in text, f"{command} --help does not list {flag}"
        assert words in text, f"{command} --help lacks the help of {flag} ({words!r}...)"


def test_the_command_list_names_every_command(capsys):
    with pytest.raises(SystemExit, match="^0$"):
        main(["--help"])
    words = capsys.readouterr().out.split()
    for name, command in COMMANDS.items():
        assert name in words and command.summary in " ".join(words), name
    assert main([]) == 2  # no command: the list, exit status 2


def test_experiment_fields_are_grouped_not_top_level(capsys):
    with pytest.raises(SystemExit, match="^0$"):  # --help exits with status 0
        main(["train-reference", "--help"])
    text = capsys.readouterr().out
    assert "--experiment.freeze-head" in text and "--freeze-head" not in text.replace("--experiment.freeze-head", "")


@pytest.mark.parametrize("argv", [["train-reference", "--no-such-flag"], ["train-kv-gate", "--steps", "many"],
                                  ["bench", "--preset-model", "huge"]])
def test_a_bad_flag_is_a_usage_error_that_names_it(argv, capsys):
    with pytest.raises(SystemExit, match="^2$") as exit_info:  # SystemExit's message is its exit status
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert argv[1] in err, err


def test_train_reference_reads_a_recipe_and_flags_override_it(tmp_path):
    from tests.training.test_train_reference import make_demos
    from vlaccel.models import load_policy
    from vlaccel.training.flags import parse_args

    make_demos(tmp_path / "demos", n=1, frames=3)
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(f'data = "{tmp_path / "demos"}"\nrun_dir = "{tmp_path / "run"}"\npreset = "tiny"\nsteps = 50\n'
                      'batch_size = 2\nshift_pad = 0\nbf16 = false\nwarmup = 1\n\n[experiment]\naux_object_weight = 0.0\n')
    assert parse_args(["--config", str(recipe)]).steps == 50
    assert main(["train-reference", "--config", str(recipe), "--steps", "2"]) == 0
    assert load_policy(tmp_path / "run" / "policy").config.image_size == 32
    card = (tmp_path / "run" / "policy" / "model_card.json").read_text()
    assert '"steps": 2' in card and '"preset": "tiny"' in card


def test_a_recipe_that_does_not_exist_or_has_a_typo_is_one_line_exit_2(tmp_path, capsys):
    assert main(["train-reference", "--config", str(tmp_path / "none.toml")]) == 2
    assert "none.toml: no such file" in capsys.readouterr().err
    (tmp_path / "typo.toml").write_text("stepz = 3\n")
    assert main(["train-reference", "--config", str(tmp_path / "typo.toml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlaccel train-reference: error: ") and "['stepz']" in err and err.count("\n") == 1


@pytest.mark.parametrize(("extra", "message"), [(["--config", "b.toml"], "--config given twice"),
                                                ([], "--config needs a path")])
def test_config_flag_twice_or_without_a_path_is_one_line_exit_2(tmp_path, capsys, extra, message):
    recipe = tmp_path / "a.toml"
    recipe.write_text("steps = 3\n")
    argv = ["--config", str(recipe), *extra] if extra else ["--steps", "3", "--config"]
    assert main(["train-reference", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlaccel train-reference: error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize(("argv", "message"), [
    (["train-reference", "--experiment.freeze-head"], "set freeze_backbone too"),
    (["bench", "--repeats", "0"], "--repeats must be an integer >= 1"),
])
def test_contradictory_fields_are_one_line_usage_errors_whatever_the_tyro_version(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vlaccel {argv[0]}: error: ") and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize(("argv", "expected"), [
    (["eval", "--history", "--preset", "efficientvla", "kv-efficient", "--workers", "2"],
     {"history": True, "preset": ("efficientvla", "kv-efficient"), "workers": 2}),
    (["eval", "--preset", "fast", "--episodes", "3", "--preset", "ddim5", "head-cache"],
     {"preset": ("fast", "ddim5", "head-cache"), "episodes": 3, "history": False}),
    (["eval", "--tasks", "reach-v3", "push-v3", "--ray", "local", "--json", "s.json", "--video", "gifs"],
     {"tasks": ("reach-v3", "push-v3"), "ray": "local", "json": "s.json", "video": "gifs"}),
    (["collect", "--tasks", "reach-memory-long", "--action-noise", "0.2", "--noise-hold", "8", "--seed", "10000",
      "--overwrite"], {"tasks": ("reach-memory-long",), "action_noise": 0.2, "seed": 10000, "overwrite": True}),
    (["collect", "--roll-in", "reference", "--handoff-max", "9", "--workers", "1"],
     {"roll_in": "reference", "handoff_max": 9, "workers": 1, "tasks": None}),
    (["presets", "--policy", "tiny", "--preset", "efficientvla", "kv-efficient", "--json"],
     {"preset": ("efficientvla", "kv-efficient"), "json": True}),
    (["info", "--preset", "tiny", "--json"], {"preset": "tiny", "policy": None, "json": True}),
    (["demo", "--tasks", "reach-v3", "push-v3", "--history-steps", "16"],
     {"tasks": ("reach-v3", "push-v3"), "history_steps": 16, "episodes": 2}),
])
def test_the_flag_spellings_the_docs_use_still_parse(argv, expected, monkeypatch):
    """``--preset A B`` and ``--preset A --preset B`` (eval), multi-value ``--tasks``, bare ``--history``."""
    parsed = []

    def record(config) -> int:
        parsed.append(config)
        return 0

    monkeypatch.setattr(_RUNS[argv[0]], record)
    assert main(argv) == 0
    assert {name: getattr(parsed[0], name) for name in expected} == expected


# the function each command hands its parsed config to
_RUNS = {"eval": "vlaccel.sim.cli.run_eval", "collect": "vlaccel.sim.cli.run_collect", "info": "vlaccel.info.run",
         "presets": "vlaccel.presets_cli.run", "demo": "vlaccel.demo.run"}
