"""Bad input, one table: each row is a call that must be refused, with the error type and what the message says.

Every row leaves the policy untouched (checked after each refusal on a fixed observation)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import vlaccel
from vlaccel.errors import MissingInputError, UsageError
from vlaccel.techniques import DenoiseStepsConfig, KVEfficientConfig, LayerPruneConfig

INSTR = "open the drawer"


def _load_edited(field, value):
    """A call loading the saved policy with ``config.json``'s ``field`` set to ``value`` (checked before building)."""
    return lambda p, t: vlaccel.load_policy(_saved(p, t, lambda d: d.__setitem__(field, value)))


def _write(folder, name, text):
    """``folder`` after writing ``text`` into its file ``name``."""
    (folder / name).write_text(text)
    return folder


def _image(policy, dtype=np.uint8, size=None):
    size = size or policy.config.image_size
    return np.zeros((size, size, 3), dtype)


def _saved(policy, tmp_path, edit=None, weights_bytes=None, config_bytes=None):
    folder = vlaccel.save_policy(policy, tmp_path / "saved")
    if edit is not None:
        data = json.loads((folder / "config.json").read_text())
        edit(data)
        (folder / "config.json").write_text(json.dumps(data))
    if config_bytes is not None:
        (folder / "config.json").write_bytes(config_bytes)
    if weights_bytes is not None:
        raw = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(raw[:weights_bytes])
    return folder


def _gate(policy, tmp_path, meta=None, state=None, weights_bytes=None):
    """A copy of a gate trained for ``policy``, its ``gate.json`` edited by ``meta(dict)`` and its tensors by
    ``state(dict)``, or its weights file cut to ``weights_bytes``; returns the folder."""
    from safetensors.torch import load_file, save_file

    from tests.techniques.kv_efficient.helpers import tiny_gate

    folder = Path(shutil.copytree(tiny_gate(policy), tmp_path / "gate"))
    if meta is not None:
        data = json.loads((folder / "gate.json").read_text())
        meta(data)
        (folder / "gate.json").write_text(json.dumps(data))
    if state is not None:
        tensors = load_file(str(folder / "gate.safetensors"))
        state(tensors)
        save_file(tensors, str(folder / "gate.safetensors"))
    if weights_bytes is not None:
        raw = (folder / "gate.safetensors").read_bytes()
        (folder / "gate.safetensors").write_bytes(raw[:weights_bytes])
    return folder


def _apply_gate(**edits):
    """A call applying KV-Efficient with a gate edited by ``edits`` (see ``_gate``)."""
    def call(policy, tmp_path):
        folder = _gate(policy, tmp_path, **edits)
        return vlaccel.apply(policy, KVEfficientConfig(window=policy.config.tokens_per_frame, budget=1, gate=str(folder)))
    return call


def _first_tensor(edit):
    return lambda tensors: edit(tensors, sorted(tensors)[0])


# (id, call(policy, tmp_path), error type, message pattern)
CASES = [
    ("proprio-nan", lambda p, t: p.predict_action(_image(p), INSTR, [np.nan, 0, 0, 0][: p.config.proprio_dim]),
     ValueError, "proprio has non-finite values"),
    ("proprio-inf-in-episode", lambda p, t: (p.reset(INSTR), p.step(_image(p), [np.inf] * p.config.proprio_dim)),
     ValueError, "proprio has non-finite values"),
    ("proprio-2d", lambda p, t: p.predict_action(_image(p), INSTR, np.zeros((2, p.config.proprio_dim))),
     ValueError, r"proprio must have shape \(4,\)"),
    ("proprio-scalar", lambda p, t: p.predict_action(_image(p), INSTR, 1.0), ValueError, r"proprio must have shape"),
    ("proprio-text", lambda p, t: p.predict_action(_image(p), INSTR, "up"), ValueError, "proprio must be 4 numbers"),
    ("image-float", lambda p, t: p.predict_action(_image(p, np.float32), INSTR), ValueError, "expected dtype uint8"),
    ("image-size", lambda p, t: p.predict_action(_image(p, size=17), INSTR), ValueError, "resize the image"),
    ("instruction-too-long", lambda p, t: p.predict_action(_image(p), "a " * 40_000), ValueError,
     "the instruction is .* tokens; this policy takes at most"),
    ("config-missing-field", lambda p, t: vlaccel.load_policy(_saved(p, t, lambda d: d.pop("init_noise_scale"))),
     UsageError, r"config.json has no init_noise_scale"),
    ("config-missing-readout-heads",
     lambda p, t: vlaccel.load_policy(_saved(p, t, lambda d: d.pop("visual_readout_heads"))),
     UsageError, "has no visual_readout_heads"),
    ("config-not-json", lambda p, t: ((_saved(p, t) / "config.json").write_text("{"),
                                      vlaccel.load_policy(t / "saved")), UsageError, "is not valid JSON"),
    ("weights-truncated", lambda p, t: vlaccel.load_policy(_saved(p, t, weights_bytes=1000)), UsageError,
     r"model.safetensors is not a readable safetensors file"),
    # config.json is checked before any model is built: its JSON, every field, then the shapes it implies against
    # the weights file's header (lm_hidden=16384 used to allocate tens of GB before the mismatch showed)
    ("config-size-not-the-weights", _load_edited("lm_hidden", 16384), UsageError,
     r"config.json does not match .*model.safetensors: \S+ is \[\d+(, \d+)*\] in the weights but the config "
     r"implies \[.*16384.*; check lm_hidden"),
    ("config-drops-a-part", _load_edited("proprio_dim", 0), UsageError,
     r"model.safetensors does not hold the tensors .*config.json implies \(missing: none; unexpected: proprio_proj"),
    ("config-zero-layers", _load_edited("lm_layers", 0), UsageError,
     r"config.json: lm_layers must be an integer in \[1, 1024\], got 0; set it to the value"),
    ("config-negative-width", _load_edited("dit_width", -32), UsageError,
     r"config.json: dit_width must be an integer in \[1, \d+\], got -32"),
    ("config-float-layers", _load_edited("lm_layers", 4.0), UsageError, r"config.json: lm_layers must be an integer"),
    ("config-bool-size", _load_edited("proprio_dim", True), UsageError, r"config.json: proprio_dim must be an integer"),
    ("config-text-size", _load_edited("lm_hidden", "64"), UsageError, r"config.json: lm_hidden must be an integer"),
    ("config-nan", _load_edited("cfg_scale", float("nan")), UsageError,
     r"config.json: cfg_scale must be a finite number >= 0, got nan"),
    ("config-infinite", _load_edited("rope_theta", float("inf")), UsageError,
     r"config.json: rope_theta must be a finite number > 0, got inf"),
    ("config-dropout-above-one", _load_edited("cfg_dropout", 1.5), UsageError,
     r"config.json: cfg_dropout must be a finite number >= 0 and <= 1, got 1.5"),
    ("config-spacing-number", _load_edited("timestep_spacing", 3), UsageError,
     r"config.json: timestep_spacing must be a string, got 3"),
    ("config-heads-indivisible", _load_edited("lm_heads", 3), UsageError,
     r"config.json: lm_heads 3 must be a multiple of lm_kv_heads 2"),
    ("config-vocab-not-the-tokenizer", _load_edited("vocab_size", 401), UsageError,
     r"config.json: these sizes do not build a ReferenceVLA \(config.vocab_size=401 but the shipped tokenizer"),
    ("config-unknown-field", _load_edited("lm_hiden", 64), UsageError,
     r"config.json: unknown ReferenceVLAConfig field\(s\) \['lm_hiden'\]; remove them"),
    ("config-a-list", lambda p, t: vlaccel.load_policy(_saved(p, t, config_bytes=b"[1, 2]")), UsageError,
     r"config.json must be a JSON object of ReferenceVLAConfig fields, got list"),
    ("config-not-utf8", lambda p, t: vlaccel.load_policy(_saved(p, t, config_bytes=b"\xff\xfe{}")), UsageError,
     r"config.json is not UTF-8 text \(byte 0\)"),
    ("config-huge-file", lambda p, t: vlaccel.load_policy(_saved(p, t, config_bytes=b" " * (2 << 20) + b"{}")),
     UsageError, r"config.json is \d+ bytes; a policy config.json is about a kilobyte"),
    ("load-empty-name", lambda p, t: vlaccel.load_policy(""), MissingInputError, "no policy given"),
    ("load-the-weights-file", lambda p, t: vlaccel.load_policy(_saved(p, t) / "model.safetensors"),
     MissingInputError, "is a file; pass the policy's folder"),
    ("denoise-steps-past-training", lambda p, t: vlaccel.apply(p, DenoiseStepsConfig(steps=10_000)), ValueError,
     "takes at most"),
    ("denoise-steps-bool", lambda p, t: DenoiseStepsConfig(steps=True), ValueError, "must be an integer >= 1"),
    ("keep-layers-bool", lambda p, t: LayerPruneConfig(keep_layers=True), ValueError, "must be an integer >= 1"),
    ("drop-layers-bool", lambda p, t: LayerPruneConfig(drop_layers=False), ValueError, "must be an integer >= 0"),
    ("save-layer-pruned", lambda p, t: (vlaccel.apply(p, LayerPruneConfig(keep_layers=1, method="last")),
                                        vlaccel.save_policy(p, t / "pruned")), UsageError,
     "LayerPruneConfig is applied and changed this policy's parameters"),
    # a gate file is checked whole before the cache uses it; every refusal names the file
    ("gate-nan-weights", _apply_gate(state=_first_tensor(lambda d, k: d[k].view(-1)[0].fill_(float("nan")))),
     UsageError, r"gate.safetensors: \S+ has non-finite values"),
    ("gate-inf-weights", _apply_gate(state=_first_tensor(lambda d, k: d[k].view(-1)[-1].fill_(float("inf")))),
     UsageError, r"gate.safetensors: \S+ has non-finite values"),
    ("gate-missing-tensor", _apply_gate(state=_first_tensor(lambda d, k: d.pop(k))), UsageError,
     r"gate.safetensors does not hold the tensors .* \(missing: \['"),
    ("gate-extra-tensor", _apply_gate(state=lambda d: d.__setitem__("extra", torch.zeros(2))), UsageError,
     r"gate.safetensors does not hold the tensors .*unexpected: \['extra'\]"),
    ("gate-tensor-reshaped", _apply_gate(state=_first_tensor(lambda d, k: d.__setitem__(k, d[k].reshape(-1)[:1]))),
     UsageError, r"gate.safetensors: \S+ is \[1\] but gate.json's sizes imply"),
    ("gate-truncated", _apply_gate(weights_bytes=100), UsageError,
     r"gate.safetensors is not a readable safetensors file"),
    ("gate-size-negative", _apply_gate(meta=lambda d: d["sizes"].__setitem__("agg_hidden", -8)), UsageError,
     r"gate.json: sizes.agg_hidden must be an integer in \[1, \d+\], got -8"),
    ("gate-size-text", _apply_gate(meta=lambda d: d["sizes"].__setitem__("lstm_hidden", "8")), UsageError,
     r"gate.json: sizes.lstm_hidden must be an integer"),
    ("gate-size-missing", _apply_gate(meta=lambda d: d["sizes"].pop("head_dim")), UsageError,
     r"gate.json: 'sizes' must hold .*missing: \['head_dim'\]"),
    ("gate-size-unknown", _apply_gate(meta=lambda d: d["sizes"].__setitem__("depth", 2)), UsageError,
     r"gate.json: 'sizes' must hold .*unknown: \['depth'\]"),
    ("gate-utility-nan", _apply_gate(meta=lambda d: d["sizes"].__setitem__("init_utility", float("nan"))), UsageError,
     r"gate.json: sizes.init_utility must be a number in \(0, 1\), got nan"),
    ("gate-json-a-list", _apply_gate(meta=lambda d: (d.clear(), d.update({"x": 1}))), UsageError,
     r"gate.json has no 'sizes'"),
    ("gate-json-torn", lambda p, t: vlaccel.apply(p, KVEfficientConfig(
        window=p.config.tokens_per_frame, budget=1,
        gate=str(_write(_gate(p, t), "gate.json", "{")))), UsageError, r"gate.json is not valid JSON"),
]


@pytest.mark.parametrize("call, error, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_with_a_clear_error(tiny_policy, frames, tmp_path, call, error, match):
    before = tiny_policy.predict_action(frames[0], INSTR)
    with pytest.raises(error, match=match) as refused:
        call(tiny_policy, tmp_path)
    assert "\n" not in str(refused.value), "a refusal is one line"
    if vlaccel.applied_configs(tiny_policy):
        vlaccel.handle_for(tiny_policy).remove()
    tiny_policy.end_episode()
    np.testing.assert_array_equal(tiny_policy.predict_action(frames[0], INSTR), before)


def test_gate_file_without_sizes(tmp_path):
    from vlaccel.techniques.kv_efficient.gate import load_gate, shipped_gate_dir

    shutil.copytree(shipped_gate_dir(), tmp_path / "gate")
    meta = json.loads((tmp_path / "gate" / "gate.json").read_text())
    del meta["sizes"]
    (tmp_path / "gate" / "gate.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="has no 'sizes'"):
        load_gate(tmp_path / "gate")


@pytest.mark.parametrize("argv, match", [
    (["eval", "--workers", "-1"], "argument --workers: must be an integer >= 0, got -1"),
    (["collect", "--workers", "0"], "argument --workers: must be an integer >= 1, got 0"),
])
def test_cli_refuses_bad_worker_counts(argv, match, capsys):
    from vlaccel.cli import main

    with pytest.raises(SystemExit, match="^2$") as exit_info:  # SystemExit's message is its exit status
        main(argv)
    assert exit_info.value.code == 2
    assert match in capsys.readouterr().err


def test_a_saved_config_round_trips_every_field(tiny_policy, tmp_path, frames):
    """The complement of config-missing-field: a complete file loads to the same actions."""
    loaded = vlaccel.load_policy(_saved(tiny_policy, tmp_path))
    np.testing.assert_array_equal(loaded.predict_action(frames[0], INSTR), tiny_policy.predict_action(frames[0], INSTR))


# (argv, what the one-line refusal says): numbers out of range and unwritable outputs, refused before any work
# (nothing is loaded or measured: each row returns in well under a second)
COMMAND_CASES = [
    (["train-reference", "--steps", "-5"], "--steps must be an integer >= 0, got -5"),
    (["train-reference", "--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
    (["train-reference", "--threads", "0"], "--threads must be an integer >= 1, got 0"),
    (["train-reference", "--lr", "nan"], "--lr must be a number > 0, got nan"),
    (["train-reference", "--window-prob", "1.5"], "--window-prob must be a number >= 0 and <= 1, got 1.5"),
    (["train-reference", "--checkpoint-every", "0"], "--checkpoint-every must be an integer >= 1, got 0"),
    (["train-reference", "--minutes", "-1"], "--minutes must be a number > 0, got -1.0"),
    (["train-reference", "--aux-weight", "-1"], "auxiliary loss weights must be >= 0"),
    (["train-reference", "--experiment.distill-frames", "0"],
     "--experiment.distill-frames must be an integer >= 1, got 0"),
    (["train-reference", "--out", "{file}/policy"], "--out {file}/policy: {file} is a file, not a folder"),
    (["train-kv-gate", "--steps", "-5"], "--steps must be an integer >= 1, got -5"),
    (["train-kv-gate", "--holdout", "1.5"], "--holdout must be a number >= 0 and <= 1, got 1.5"),
    (["train-kv-gate", "--threads", "0"], "--threads must be an integer >= 1, got 0"),
    (["train-kv-gate", "--lr", "0"], "--lr must be a number > 0, got 0.0"),
    (["train-kv-gate", "--budget", "0"], "--budget must be an integer >= 1, got 0"),
    (["train-kv-gate", "--target-retention", "2"], "--target-retention must be a number >= 0 and <= 1, got 2.0"),
    (["train-kv-gate", "--eval-budgets", "4", "0"], "--eval-budgets must be integers >= 1"),
    (["train-kv-gate", "--synthetic", "2", "--out", "{file}/gate"], "--out {file}/gate: {file} is a file"),
    (["bench", "--threads", "0"], "--threads must be an integer >= 1, got 0"),
    (["bench", "--repeats", "0"], "--repeats must be an integer >= 1, got 0"),
    (["bench", "--history-window", "0"], "--history-window must be an integer >= 1, got 0"),
    (["bench", "--history-lengths", "4", "-1"], "--history-lengths must be one or more integers >= 1"),
    (["bench", "--preset-model", "tiny", "--json", "{file}/r.json"], "--json {file}/r.json: {file} is a file"),
    (["bench", "--preset-model", "tiny", "--markdown", "{file}/r.md"], "--markdown {file}/r.md: {file} is a file"),
    (["bench", "--preset-model", "tiny", "--plot", "{file}"], "--plot {file}: it is a file; pass a folder"),
    (["eval", "--episodes", "1", "--out", "{file}/r.jsonl"], "--out {file}/r.jsonl: {file} is a file"),
    (["eval", "--episodes", "1", "--out", "{tmp}/r.jsonl", "--video", "{file}/gifs"],
     "--video {file}/gifs: {file} is a file"),
]


@pytest.mark.parametrize("argv, match", COMMAND_CASES, ids=[" ".join(c[0]) for c in COMMAND_CASES])
def test_commands_refuse_bad_numbers_and_outputs_first(argv, match, tmp_path, capsys, monkeypatch):
    from vlaccel import cli

    def no_work(*args, **kwargs):
        raise AssertionError("the command started work before refusing its input")

    monkeypatch.setattr("vlaccel.load_policy", no_work)
    monkeypatch.setattr("vlaccel.models.load_policy", no_work)
    monkeypatch.setattr("vlaccel.training.reference._load_demos", no_work)
    monkeypatch.setattr("vlaccel.bench.harness.resolve_policy", no_work)
    monkeypatch.setattr("vlaccel.sim.evaluate.load_policy", no_work)
    (tmp_path / "file").write_text("")
    fill = {"file": str(tmp_path / "file"), "tmp": str(tmp_path)}
    try:
        code = cli.main([arg.format(**fill) for arg in argv])
    except SystemExit as exit_info:  # a parse error (tyro) exits
        code = exit_info.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert match.format(**fill) in err
    assert len(err.splitlines()) == 1
