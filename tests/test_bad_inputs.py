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


def _image(policy, dtype=np.uint8, size=None):
    size = size or policy.config.image_size
    return np.zeros((size, size, 3), dtype)


def _saved(policy, tmp_path, edit=None, weights_bytes=None):
    folder = vlaccel.save_policy(policy, tmp_path / "saved")
    if edit is not None:
        data = json.loads((folder / "config.json").read_text())
        edit(data)
        (folder / "config.json").write_text(json.dumps(data))
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
     UsageError, "the policy config has no init_noise_scale"),
    ("config-missing-readout-heads",
     lambda p, t: vlaccel.load_policy(_saved(p, t, lambda d: d.pop("visual_readout_heads"))),
     UsageError, "has no visual_readout_heads"),
    ("config-not-json", lambda p, t: ((_saved(p, t) / "config.json").write_text("{"),
                                      vlaccel.load_policy(t / "saved")), UsageError, "is not valid JSON"),
    ("weights-truncated", lambda p, t: vlaccel.load_policy(_saved(p, t, weights_bytes=1000)), UsageError,
     r"model.safetensors is not a readable safetensors file"),
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
    with pytest.raises(error, match=match):
        call(tiny_policy, tmp_path)
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
