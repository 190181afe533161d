"""What vlaccel writes: the plain policy under any technique (or a refusal), atomic files, weights-only checkpoints.

Every save here starts from a fresh random float32 tiny policy: its weights are not bfloat16-exact, so a saved
cast copy cannot pass for the plain weights.
"""

from __future__ import annotations

import dataclasses
import os
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import vlaccel
from vlaccel import atomic
from vlaccel.config import TECHNIQUES, TechniqueConfig, register_handler
from vlaccel.errors import UsageError
from vlaccel.models.config import ReferenceVLAConfig
from vlaccel.techniques import CompileConfig, PrecisionConfig, QuantizeConfig, TokenPruneConfig

REFUSED = "is applied and changed this policy's parameters"


def _case(case_id: str):
    from vlaccel.testing import reference_cases

    return next(c for c in reference_cases() if c.id == case_id)


def _fake_torchao(monkeypatch) -> None:
    """Stand in for torchao where it is not installed: ``quantize_`` swaps the weight for a new Parameter holding
    int8-rounded values, as torchao swaps it for a quantized tensor (the handler's own code path runs)."""
    from vlaccel.techniques import quantize

    def quantize_(linear, scheme, filter_fn=None):
        w = linear.weight.detach()
        scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127
        linear.weight = nn.Parameter((w / scale).round() * scale, requires_grad=False)

    fake = types.SimpleNamespace(quantize_=quantize_, **{name: object for name in quantize.SCHEMES.values()})
    monkeypatch.setattr(quantize, "_torchao", lambda: fake)


def _quantize(model, monkeypatch):
    try:
        import torchao  # noqa: F401
    except ImportError:
        _fake_torchao(monkeypatch)
    return QuantizeConfig()


# technique name -> (lossy config for the model, prepare(model) or None); settings of vlaccel.testing's cases
LOSSY = {
    "layer_prune": (lambda m, mp: _case("layer_prune").accelerated(m), _case("layer_prune").prepare),
    "token_prune": (lambda m, mp: _case("token_prune_efficientvla").accelerated(m), None),
    "head_cache": (lambda m, mp: _case("head_cache").accelerated(m), None),
    "denoise_steps": (lambda m, mp: _case("denoise_steps").accelerated(m), None),
    "kv_efficient": (lambda m, mp: _case("kv_efficient").accelerated(m), None),
    "precision": (lambda m, mp: _case("precision_bf16").accelerated(m), None),
    "compile": (lambda m, mp: CompileConfig(backend="eager"), None),
    "quantize": (_quantize, None),
    "cross_kv_reuse": None,  # LeRobot SmolVLA only: the reference policy's adapter cannot take it
}
CANNOT_GIVE_BACK = {"layer_prune"}  # removes layers and MLP channels: saving it is refused


def _builtin_techniques() -> list[str]:
    return [n for n in TECHNIQUES.names() if TECHNIQUES.get(n).__module__.startswith("vlaccel.")]


def _plain(policy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in policy.state_dict().items()}


def _assert_same(state: dict[str, torch.Tensor], plain: dict[str, torch.Tensor]) -> None:
    assert state.keys() == plain.keys()
    differ = [k for k in plain if state[k].dtype != plain[k].dtype or not torch.equal(state[k], plain[k])]
    assert not differ, f"{len(differ)} tensors differ from the plain policy, e.g. {differ[:3]}"


def test_every_builtin_technique_has_a_lossy_setting_here():
    assert set(_builtin_techniques()) <= set(LOSSY), "add the new technique's lossy setting to LOSSY"


@pytest.mark.parametrize("name", sorted(LOSSY))
def test_saving_under_a_technique_writes_the_plain_policy_or_refuses(name, tiny_policy, tmp_path, monkeypatch):
    if LOSSY[name] is None:
        pytest.skip(f"{name} does not apply to the reference policy (save_policy writes ReferenceVLAs)")
    make, prepare = LOSSY[name]
    if prepare is not None:
        prepare(tiny_policy)
    plain = _plain(tiny_policy)
    handle = vlaccel.apply(tiny_policy, make(tiny_policy, monkeypatch))
    if name in CANNOT_GIVE_BACK:
        with pytest.raises(UsageError, match=REFUSED):
            vlaccel.save_policy(tiny_policy, tmp_path / "saved")
        assert not any(tmp_path.iterdir()), "a refused save must write nothing"
    else:
        folder = vlaccel.save_policy(tiny_policy, tmp_path / "saved")
        _assert_same(vlaccel.load_policy(folder).state_dict(), plain)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]  # no temp folder left
    handle.remove()
    _assert_same(tiny_policy.state_dict(), plain)  # saving did not touch the applied policy


@pytest.mark.parametrize("config", [PrecisionConfig(dtype="float16"), PrecisionConfig(dtype="bfloat16",
                                    parts=("action_head",)), PrecisionConfig(dtype="bfloat16", parts=("vision",),
                                                                              keep_float32=("projector",))],
                         ids=["float16", "bf16-action-head", "bf16-vision"])
def test_precision_of_some_parts_saves_the_float32_originals(config, tiny_policy, tmp_path):
    plain = _plain(tiny_policy)
    with vlaccel.applied(tiny_policy, config):
        folder = vlaccel.save_policy(tiny_policy, tmp_path / "saved")
    _assert_same(vlaccel.load_policy(folder).state_dict(), plain)


def test_stacked_precision_quantize_and_token_pruning_save_the_plain_policy(tiny_policy, tmp_path, monkeypatch):
    """Quantization keeps the bf16 Parameter precision cast; precision keeps its float32 data: undone latest first."""
    plain = _plain(tiny_policy)
    quantize = _quantize(tiny_policy, monkeypatch)
    with vlaccel.applied(tiny_policy, PrecisionConfig(dtype="bfloat16"), quantize,
                         TokenPruneConfig(keep_tokens=6, layer=1)):
        folder = vlaccel.save_policy(tiny_policy, tmp_path / "saved", storage_dtype=None)
    _assert_same(vlaccel.load_policy(folder).state_dict(), plain)


def test_the_saved_fingerprint_is_the_plain_policys(tiny_policy, tmp_path):
    from safetensors import safe_open

    expected = vlaccel.fingerprint(tiny_policy)
    with vlaccel.applied(tiny_policy, PrecisionConfig(dtype="bfloat16")):
        folder = vlaccel.save_policy(tiny_policy, tmp_path / "saved")
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert f.metadata()["fingerprint"] == expected


@dataclasses.dataclass(frozen=True)
class _ScaleWeightsConfig(TechniqueConfig):
    """A run-time technique that edits a weight in place and declares nothing about the state dict."""

    name = "test_scale_weights"
    order = 50


@pytest.fixture
def scale_weights():
    class _Applied:
        def __init__(self, weight, saved):
            self.weight, self.saved = weight, saved

        def remove(self):
            with torch.no_grad():
                self.weight.copy_(self.saved)

    @register_handler(_ScaleWeightsConfig)
    class _Handler:
        def validate(self, model, config, adapter, pending=()):
            return None

        def apply(self, model, config, adapter, prepared):
            weight = model.projector[0].weight
            saved = weight.detach().clone()
            with torch.no_grad():
                weight.mul_(2)
            return _Applied(weight, saved)

    yield _ScaleWeightsConfig()
    from vlaccel import config as config_module

    TECHNIQUES.unregister(_ScaleWeightsConfig.name)
    config_module._HANDLERS.pop(_ScaleWeightsConfig, None)


def test_a_technique_that_edits_weights_and_cannot_give_them_back_is_refused(scale_weights, tiny_policy, tmp_path):
    """No flag to remember: apply measured the change, and the technique offers no plain_tensors()."""
    with vlaccel.applied(tiny_policy, scale_weights):
        with pytest.raises(UsageError, match=rf"_ScaleWeightsConfig {REFUSED} \(projector.0.weight\)"):
            vlaccel.save_policy(tiny_policy, tmp_path / "saved")
    assert not (tmp_path / "saved").exists()


def test_a_failed_save_leaves_no_folder_and_an_old_one_intact(tiny_policy, tmp_path, monkeypatch):
    import safetensors.torch

    def dies_halfway(state, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)
        raise RuntimeError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", dies_halfway)
    with pytest.raises(RuntimeError, match="disk full"):
        vlaccel.save_policy(tiny_policy, tmp_path / "new")
    assert not any(tmp_path.iterdir())
    monkeypatch.undo()
    old = vlaccel.save_policy(tiny_policy, tmp_path / "old")
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    monkeypatch.setattr(safetensors.torch, "save_file", dies_halfway)
    with pytest.raises(RuntimeError, match="disk full"):
        vlaccel.save_policy(tiny_policy, old)
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_saving_into_an_existing_folder_keeps_its_companion_files(tiny_policy, tmp_path):
    folder = vlaccel.save_policy(tiny_policy, tmp_path / "saved")
    (folder / "calibration.npz").write_bytes(b"kept")
    vlaccel.save_policy(tiny_policy, folder, card={"note": "again"})
    assert (folder / "calibration.npz").read_bytes() == b"kept" and (folder / "model_card.json").exists()


def test_an_interrupted_atomic_write_leaves_the_previous_file(tmp_path):
    target = atomic.write_text(tmp_path / "results.json", "old\n")
    with pytest.raises(KeyboardInterrupt, match="stopped mid-write"):
        with atomic.replacing(target) as tmp:
            tmp.write_text("half of the ne")
            raise KeyboardInterrupt("stopped mid-write")
    assert target.read_text() == "old\n" and sorted(os.listdir(tmp_path)) == ["results.json"]
    atomic.write_json(target, {"a": 1})
    assert target.read_text() == '{"a": 1}\n' and oct(target.stat().st_mode & 0o777) != oct(0o600)


def test_a_folder_written_into_an_existing_one_replaces_its_sub_folders_whole(tmp_path):
    """A compensated policy rewritten in place: its kv_gate/ is the new gate's, no file of the old one is left."""
    target = tmp_path / "policy"
    (target / "kv_gate").mkdir(parents=True)
    (target / "kv_gate" / "old_only.json").write_text("{}")
    (target / "calibration.npz").write_bytes(b"kept")
    with atomic.folder(target) as tmp:
        (tmp / "kv_gate").mkdir()
        (tmp / "kv_gate" / "gate.json").write_text('{"new": 1}')
    assert sorted(p.name for p in (target / "kv_gate").iterdir()) == ["gate.json"]
    assert (target / "calibration.npz").read_bytes() == b"kept" and sorted(os.listdir(tmp_path)) == ["policy"]


def test_a_symbolic_link_is_written_through_not_replaced(tmp_path):
    """``--json /dev/stdout`` is a link to the process's output: replacing the link would break it."""
    target = tmp_path / "real.json"
    target.write_text("old\n")
    (tmp_path / "link.json").symlink_to(target)
    atomic.write_text(tmp_path / "link.json", "new\n")
    assert (tmp_path / "link.json").is_symlink() and target.read_text() == "new\n"


def test_every_config_field_has_a_type_rule():
    from vlaccel.models.config import FLOAT_RANGES, INT_RANGES

    strings = {f.name for f in dataclasses.fields(ReferenceVLAConfig) if isinstance(f.default, str)}
    fields = {f.name for f in dataclasses.fields(ReferenceVLAConfig)}
    assert fields == set(INT_RANGES) | set(FLOAT_RANGES) | strings


# --- train-reference checkpoints --------------------------------------------------------------------------------
def _run(tmp_path, policy):
    from vlaccel.training.auxiliary import WaypointProbes
    from vlaccel.training.reference import TrainConfig, _Run

    probes = WaypointProbes(policy.config.lm_hidden, policy.config.visual_tokens)
    return _Run(TrainConfig(run_dir=str(tmp_path / "run"), preset="tiny"), policy, probes)


def test_a_checkpoint_round_trips_weights_only(tiny_policy, tmp_path):
    run = _run(tmp_path, tiny_policy)
    run.step, run.history = 7, [{"step": 7, "loss_ema": 0.5}]
    run.rng.random()
    run.save()
    again = _run(tmp_path, tiny_policy)
    again.resume(log=lambda msg: None)
    assert again.step == 7 and again.history == run.history
    assert again.rng.bit_generator.state == run.rng.bit_generator.state


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this ran",))


def test_a_checkpoint_holding_a_pickled_object_is_refused(tiny_policy, tmp_path):
    run = _run(tmp_path, tiny_policy)
    torch.save({"model": _RunsCode()}, run.path)
    with pytest.raises(UsageError, match="not a weights-only checkpoint") as err:
        run.resume(log=print)
    message = str(err.value)
    assert "\n" not in message and str(run.path) in message and "not a weights-only checkpoint" in message
    assert "system" in message


def test_a_checkpoint_killed_while_saving_keeps_the_previous_one(tiny_policy, tmp_path, monkeypatch):
    run = _run(tmp_path, tiny_policy)
    run.step = 3
    run.save()
    before = run.path.read_bytes()

    def killed(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\3\4 torn")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", killed)
    run.step = 4
    with pytest.raises(KeyboardInterrupt, match="killed while saving"):
        run.save()
    assert run.path.read_bytes() == before
    assert sorted(p.name for p in run.path.parent.iterdir()) == ["checkpoint.pt"]


def test_a_truncated_checkpoint_is_refused_in_one_line(tiny_policy, tmp_path):
    run = _run(tmp_path, tiny_policy)
    run.save()
    run.path.write_bytes(run.path.read_bytes()[:200])
    with pytest.raises(UsageError, match="is not a readable checkpoint") as err:
        run.resume(log=print)
    assert "\n" not in str(err.value) and str(run.path) in str(err.value)
