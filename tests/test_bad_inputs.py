"""Bad input, one table: each row is a call that must be refused, with the error type and what the message says.

Every row leaves the policy untouched (checked after each refusal on a fixed observation)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import vlaccel
from vlaccel.errors import MissingInputError, UsageError
from vlaccel.techniques import DenoiseStepsConfig, LayerPruneConfig

INSTR = "open the drawer"


def _load_edited(field, value):
    """A call loading the saved policy with ``config.json``'s ``field`` set to ``value`` (checked before building)."""
    return lambda p, t: vlaccel.load_policy(_saved(p, t, lambda d: d.__setitem__(field, value)))


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

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert match in capsys.readouterr().err


def test_a_saved_config_round_trips_every_field(tiny_policy, tmp_path, frames):
    """The complement of config-missing-field: a complete file loads to the same actions."""
    loaded = vlaccel.load_policy(_saved(tiny_policy, tmp_path))
    np.testing.assert_array_equal(loaded.predict_action(frames[0], INSTR), tiny_policy.predict_action(frames[0], INSTR))
