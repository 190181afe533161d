"""Bad input, one table: each row is a call that must be refused, with the error type and what the message says.

Every row leaves the policy untouched (checked after each refusal on a fixed observation)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import vlaccel
from vlaccel.adapters import UnsupportedModelError
from vlaccel.config import TechniqueConfig, config_from_dict
from vlaccel.errors import MissingInputError, UnknownNameError, UsageError, WrongStateError, WrongTypeError
from vlaccel.techniques import DenoiseStepsConfig, KVEfficientConfig, LayerPruneConfig
from vlaccel.techniques.kv_efficient.gate import GateFingerprintError, GateMismatchError

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


def _replace(folder, name, write):
    """``folder`` after its file ``name`` is replaced: ``write(path)`` makes the new one (a folder, other bytes)."""
    (folder / name).unlink()
    write(folder / name)
    return folder


def _load_with(file_name, write):
    """A call loading the saved policy after ``write(path)`` replaced (or added) its file ``file_name``."""
    def call(policy, tmp_path):
        folder = _saved(policy, tmp_path)
        (folder / file_name).unlink(missing_ok=True)
        write(folder / file_name)
        return vlaccel.load_policy(folder)
    return call


def _load_weights_edited(edit):
    """A call loading the saved policy after ``edit(tensors, first name)`` changed its ``model.safetensors``."""
    from safetensors.torch import load_file, save_file

    def call(policy, tmp_path):
        folder = _saved(policy, tmp_path)
        tensors = load_file(str(folder / "model.safetensors"))
        edit(tensors, sorted(tensors)[0])
        save_file(tensors, str(folder / "model.safetensors"))
        return vlaccel.load_policy(folder)
    return call


def _torn_npz(path):
    np.savez(path, image=np.zeros((4, 8, 8, 3), np.uint8), instruction=np.array(["a"] * 4))
    path.write_bytes(path.read_bytes()[:200])


def _cast_policy_with_its_gate(policy, tmp_path):
    """The saved policy with a gate trained for it in its ``kv_gate/``, loaded and cast with ``.to(bfloat16)``
    outside vlaccel, then given KV-Efficient with ``gate=None`` (its folder's gate)."""
    from tests.techniques.kv_efficient.helpers import tiny_gate

    folder = _saved(policy, tmp_path)
    shutil.copytree(tiny_gate(policy), folder / "kv_gate")
    cast = vlaccel.load_policy(folder).to(torch.bfloat16)
    return vlaccel.apply(cast, KVEfficientConfig(window=policy.config.tokens_per_frame, budget=1))


def _twice(policy, *configs):
    vlaccel.apply(policy, *configs)
    return vlaccel.apply(policy, *configs)


def _removed_twice(policy):
    handle = vlaccel.apply(policy, DenoiseStepsConfig(steps=5))
    handle.remove()
    handle.remove()


@dataclasses.dataclass(frozen=True)
class _NoHandlerConfig(TechniqueConfig):
    """A technique config whose class names no handler (a plugin missing its ``handler = "module:Class"``)."""

    level: int = 1


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
    # --- loaders probed for raw errors (each row's comment: what the user saw before) ---------------------------
    # a weights file that is empty or random bytes: already one line (safetensors' error wrapped)
    ("weights-empty", lambda p, t: vlaccel.load_policy(_saved(p, t, weights_bytes=0)), UsageError,
     r"model.safetensors is not a readable safetensors file .*save or copy it again"),
    ("weights-garbage", _load_with("model.safetensors", lambda f: f.write_bytes(bytes(range(256)) * 20)), UsageError,
     r"model.safetensors is not a readable safetensors file .*save or copy it again"),
    # was "OSError: No such device (os error 19)" inside the safetensors message
    ("weights-a-folder", _load_with("model.safetensors", Path.mkdir), UsageError,
     r"model.safetensors is a folder, not a file; .*save the policy again"),
    # was a raw IsADirectoryError
    ("config-a-folder", _load_with("config.json", Path.mkdir), UsageError,
     r"config.json is a folder, not a file; .*save the policy again"),
    ("config-null-field", _load_edited("lm_hidden", None), UsageError,
     r"config.json: lm_hidden must be an integer in \[1, \d+\], got None; set it to the value"),
    ("config-bool-for-float", _load_edited("cfg_scale", True), UsageError,
     r"config.json: cfg_scale must be a finite number >= 0, got True; set it"),
    ("config-empty", lambda p, t: vlaccel.load_policy(_saved(p, t, config_bytes=b"")), UsageError,
     r"config.json is not valid JSON"),
    # was loaded without a word: integers cast to float32 parameters
    ("weights-integers", _load_weights_edited(lambda d, k: d.__setitem__(k, d[k].to(torch.int64))), UsageError,
     r"model.safetensors: \S+ is stored as I64, not a floating-point type .*save the policy again"),
    # was loaded without a word: every action NaN
    ("weights-nan", _load_weights_edited(lambda d, k: d[k].view(-1).__setitem__(0, float("nan"))), UsageError,
     r"model.safetensors: \S+ has non-finite values \(NaN or inf\).*use an earlier checkpoint"),
    # was "zipfile.BadZipFile: File is not a zip file"
    ("calibration-torn", _load_with("calibration.npz", _torn_npz), UsageError,
     r"calibration.npz is not a readable .npz archive \(BadZipFile.*write it again with numpy.savez, or remove it"),
    # was "ValueError: Object arrays cannot be loaded when allow_pickle=False" (no file named)
    ("calibration-object-array",
     _load_with("calibration.npz", lambda f: np.savez(f, image=np.array([{"x": 1}, None], dtype=object))),
     UsageError, r"calibration.npz: array 'image' is an object array, which vlaccel does not load"),
    # was "FileNotFoundError: no demos (<task>/*.npz) under '.../calibration.npz'"
    ("calibration-a-folder", _load_with("calibration.npz", Path.mkdir), UsageError,
     r"calibration.npz is a folder; .*replace it with that file, or remove it"),
    # was "unknown policy 'ReferenceVLA(...' (a multi-line repr)"
    ("load-a-loaded-policy", lambda p, t: vlaccel.load_policy(p), WrongTypeError,
     r"load_policy takes a bundled name \(reference\) or a folder path, got ReferenceVLA; it is already loaded"),
    # info.py read the card with a bare json.loads (JSONDecodeError); models.io.read_card names the file
    ("model-card-torn", lambda p, t: __import__("vlaccel.models.io", fromlist=["read_card"]).read_card(
        _write(_saved(p, t), "model_card.json", "{")), UsageError,
     r"model_card.json is not a readable JSON model card .*fix it or delete it"),
    # was a raw RecursionError
    ("gate-json-too-deep", lambda p, t: vlaccel.apply(p, KVEfficientConfig(
        window=p.config.tokens_per_frame, budget=1, gate=str(_write(_gate(p, t), "gate.json", "[" * 100_000)))),
     GateMismatchError, r"gate.json is not valid JSON \(maximum recursion depth.*retrain the gate"),
    # was a raw IsADirectoryError
    ("gate-json-a-folder", lambda p, t: vlaccel.apply(p, KVEfficientConfig(
        window=p.config.tokens_per_frame, budget=1, gate=str(_replace(_gate(p, t), "gate.json", Path.mkdir)))),
     GateMismatchError, r"gate.json is a folder, not a file: .*train one with `vlaccel train-kv-gate`"),
    # was loaded without a word (cast to float)
    ("gate-integer-weights", _apply_gate(state=_first_tensor(lambda d, k: d.__setitem__(k, d[k].to(torch.int64)))),
     GateMismatchError, r"gate.safetensors: \S+ is stored as torch.int64, but a gate's weights are floating point"),
    # was a warning "trained for window=x" at every apply
    ("gate-kv-setting-text", _apply_gate(meta=lambda d: d["kv"].__setitem__("window", "x")), GateMismatchError,
     r"gate.json: kv.window must be an integer >= 0, got 'x'; retrain the gate"),
    # said what was wrong, not the fix
    ("gate-utility-bool", _apply_gate(meta=lambda d: d["sizes"].__setitem__("init_utility", True)), GateMismatchError,
     r"gate.json: sizes.init_utility must be a number in \(0, 1\), got True; retrain the gate"),
    # was a bare ValueError (right advice): a random policy has no gate; the shipped one is the bundled policy's
    ("gate-none-for-this-policy", lambda p, t: vlaccel.apply(p, *vlaccel.presets.get("kv-efficient")),
     GateFingerprintError, r"no trained gate for this policy \(fingerprint \w+\): the shipped gate belongs to the "
     r"bundled reference policy. Train one with `vlaccel train-kv-gate"),
    # said only "train one for this policy": a policy cast with .to(bfloat16) outside vlaccel has a gate, for the
    # float32 weights it was trained on (PrecisionConfig keeps them: see test_the_gate_is_found_under_precision)
    ("gate-policy-cast-outside-vlaccel", _cast_policy_with_its_gate, GateFingerprintError,
     r"trained for policy fingerprint .* This policy's weights are bfloat16: if it was cast outside vlaccel "
     r"\(policy.to\(torch.bfloat16\)\).*apply PrecisionConfig\('bfloat16'\) with vlaccel.apply instead"),
    # said "... so the file would not match its config.json; save before applying": advice about saving
    ("gate-after-layer-pruning", lambda p, t: (vlaccel.apply(p, LayerPruneConfig(keep_layers=2, method="last")),
                                               vlaccel.apply(p, KVEfficientConfig(
                                                   window=p.config.tokens_per_frame, budget=1, gate="unused"))),
     UsageError, r"^a KV gate is matched to the plain policy's weights, and LayerPruneConfig \(applied\) changed "
     r"them and cannot give them back; apply KVEfficientConfig in the same vlaccel.apply call as LayerPruneConfig"),
    # --- vlaccel.apply and the names and dicts it is given ---------------------------------------------------------
    # was "TypeError: expected technique configs, got str: 'efficientvla'" (no way forward)
    ("apply-a-preset-name", lambda p, t: vlaccel.apply(p, "efficientvla"), WrongTypeError,
     r"got str: 'efficientvla'; a preset name goes through vlaccel.presets: "
     r"vlaccel.apply\(policy, \*vlaccel.presets.get\('efficientvla'\)\)"),
    ("apply-a-list", lambda p, t: vlaccel.apply(p, vlaccel.presets.get("ddim5")), WrongTypeError,
     r"got list: .*unpack the list: vlaccel.apply\(policy, \*configs\)"),
    ("apply-none", lambda p, t: vlaccel.apply(p, None), WrongTypeError,
     r"expected technique configs, got NoneType: None; pass instances of the technique configs"),
    ("apply-a-config-class", lambda p, t: vlaccel.apply(p, DenoiseStepsConfig), WrongTypeError,
     r"pass an instance: DenoiseStepsConfig\(...\)"),
    ("apply-nothing", lambda p, t: vlaccel.apply(p), UsageError, r"apply\(\) needs at least one config"),
    # was "RuntimeError: DenoiseStepsConfig is already applied to this model" (nothing was applied)
    ("apply-one-technique-twice-in-one-call",
     lambda p, t: vlaccel.apply(p, DenoiseStepsConfig(steps=5), DenoiseStepsConfig(steps=3)), WrongStateError,
     r"DenoiseStepsConfig is given twice in this apply call; pass one"),
    ("apply-a-technique-again", lambda p, t: _twice(p, DenoiseStepsConfig(steps=5)), WrongStateError,
     r"DenoiseStepsConfig is already applied to this model; call handle.remove\(\) first"),
    ("apply-a-config-without-handler", lambda p, t: vlaccel.apply(p, _NoHandlerConfig()), WrongTypeError,
     r"_NoHandlerConfig names no handler; set its class attribute handler = 'module:HandlerClass'"),
    # was "AttributeError: 'str' object has no attribute '__dict__'"
    ("apply-to-a-policy-name", lambda p, t: vlaccel.apply("reference", DenoiseStepsConfig(steps=5)), WrongTypeError,
     r"vlaccel.apply takes the loaded model, got the str 'reference'; load it first: "
     r"policy = vlaccel.load_policy\('reference'\)"),
    ("apply-to-an-unsupported-model", lambda p, t: vlaccel.apply(torch.nn.Linear(2, 2), DenoiseStepsConfig(steps=5)),
     UnsupportedModelError, r"vlaccel has no adapter for Linear. Supported: "),
    ("remove-a-handle-twice", lambda p, t: _removed_twice(p), WrongStateError,
     r"this handle was already removed; its techniques are undone"),
    ("preset-unknown", lambda p, t: vlaccel.presets.get("nope"), UnknownNameError,
     r"unknown preset 'nope'; known: none, "),
    ("preset-not-a-name", lambda p, t: vlaccel.presets.get(DenoiseStepsConfig(steps=5)), UnknownNameError,
     r"unknown preset DenoiseStepsConfig\(steps=5\): a preset is named by a str; known: none, "),
    ("config-dict-unknown-field", lambda p, t: config_from_dict({"technique": "denoise_steps", "steps": 5, "stpes": 3}),
     UsageError, r"DenoiseStepsConfig has no field\(s\) \['stpes'\]; valid fields: \['steps'\]"),
    # was the config's bare ValueError
    ("config-dict-wrong-type", lambda p, t: config_from_dict({"technique": "denoise_steps", "steps": "5"}),
     UsageError, r"DenoiseStepsConfig.steps must be an integer >= 1, got '5'"),
    ("config-dict-unknown-technique", lambda p, t: config_from_dict({"technique": "nope"}), UnknownNameError,
     r"unknown technique 'nope'; known: \[.*'denoise_steps'"),
    # was "AttributeError: 'list' object has no attribute 'get'"
    ("config-dict-a-list", lambda p, t: config_from_dict([1]), WrongTypeError,
     r"config_from_dict takes a dict like a config's to_dict\(\) gives .*got list"),
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
    (["eval", "--workers", "-1"], "vlaccel eval: error: --workers must be an integer >= 0, got -1"),
    (["collect", "--workers", "0"], "vlaccel collect: error: --workers must be an integer >= 1, got 0"),
])
def test_cli_refuses_bad_worker_counts(argv, match, capsys):
    from vlaccel.cli import main

    assert main(argv) == 2
    assert capsys.readouterr().err == match + "\n"


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
    (["train-kv-gate", "--target-retention", "2"], "--target-retention must be a number > 0 and <= 1, got 2.0"),
    # was a ValueError traceback after the policy and the demos were loaded
    (["train-kv-gate", "--target-retention", "1"], "--target-retention must be a number > 0 and < 1, got 1.0"),
    (["train-kv-gate", "--target-retention", "0"], "--target-retention must be a number > 0 and <= 1, got 0.0"),
    (["train-kv-gate", "--cognition-weight", "0"], "--cognition-weight and --action-weight are both 0"),
    (["train-kv-gate", "--eval-budgets", "4", "0"], "--eval-budgets must be integers >= 1"),
    (["train-kv-gate", "--synthetic", "2", "--out", "{file}/gate"], "--out {file}/gate: {file} is a file"),
    (["train-kv-gate", "--compensate", "language_model.*"], "--compensate trains the policy too: pass --policy-out"),
    (["train-kv-gate", "--policy-out", "{tmp}/p"], "without --compensate the policy is not changed: drop --policy-out"),
    (["train-kv-gate", "--compensate", "language_model.*", "--policy-out", "{tmp}/p", "--out", "{tmp}/g"],
     "with --compensate the gate belongs to the compensated policy"),
    (["train-kv-gate", "--compensate", "language_model.*", "--policy-out", "{file}/p"],
     "--policy-out {file}/p: {file} is a file"),
    (["train-kv-gate", "--compensate-lr", "0"], "--compensate-lr must be a number > 0, got 0.0"),
    (["train-kv-gate", "--full-history-weight", "1"], "--full-history-weight trains the policy with its full "
                                                       "history: it needs --compensate PATTERN"),
    (["train-kv-gate", "--full-history-weight", "-1"], "--full-history-weight must be a number >= 0, got -1.0"),
    (["train-kv-gate", "--teacher", "reference", "--teacher-tasks", "push-v3"],
     "--teacher/--teacher-tasks choose what the compensated policy is distilled from: they need --compensate"),
    (["train-kv-gate", "--compensate", "language_model.*", "--policy-out", "{tmp}/p", "--teacher", "reference"],
     "--teacher and --teacher-tasks go together"),
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
    (["eval", "--against", "{tmp}/old.jsonl"], "--against {tmp}/old.jsonl: no such results file"),
    (["eval", "--against", "{file}"], "--against {file}: holds no episode record"),
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
