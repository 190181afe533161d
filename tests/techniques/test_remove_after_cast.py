"""``remove()`` gives the exact originals back also after the model was cast or moved while a technique was
applied: ``model.float()`` replaces every buffer by a new tensor, so originals tracked by tensor object alone
would leave the bf16-rounded values (rotary ``inv_freq``, embedding scales) in the model for good."""

from __future__ import annotations

import pytest
import torch

import vlaccel
from vlaccel.techniques import PrecisionConfig


def _snapshot(model):
    """Every parameter and buffer (persistent or not), cloned, by name."""
    return {name: t.detach().clone() for name, t in [*model.named_parameters(), *model.named_buffers()]}


def _assert_same(model, before):
    now = _snapshot(model)
    assert now.keys() == before.keys()
    for name, tensor in before.items():
        assert now[name].dtype == tensor.dtype, name
        assert torch.equal(now[name], tensor), f"{name} changed"


def _pi0():
    pytest.importorskip("transformers")
    from vlaccel.models.pi0_configs import build_pi0

    return build_pi0("tiny")


@pytest.fixture(params=["reference", "pi0"])
def model(request, tiny_policy):
    return tiny_policy if request.param == "reference" else _pi0()


def test_remove_after_float_restores_the_originals(model):
    before = _snapshot(model)
    assert any("inv_freq" in name for name in before)
    handle = vlaccel.apply(model, PrecisionConfig("bfloat16"))
    model.float()
    handle.remove()
    _assert_same(model, before)


def test_remove_after_half_gives_the_originals_in_half(tiny_policy):
    """A cast made after ``apply`` applies to the originals: ``remove()`` leaves what ``half()`` alone would."""
    want = {name: t.half() for name, t in _snapshot(tiny_policy).items() if t.is_floating_point()}
    handle = vlaccel.apply(tiny_policy, PrecisionConfig("bfloat16"))
    tiny_policy.half()
    handle.remove()
    now = _snapshot(tiny_policy)
    for name, tensor in want.items():
        assert now[name].dtype == torch.float16, name
        assert torch.equal(now[name], tensor), f"{name} is not the float16 original"


def test_saving_after_float_writes_the_originals(tiny_policy, tmp_path):
    before = _snapshot(tiny_policy)
    vlaccel.apply(tiny_policy, PrecisionConfig("bfloat16"))
    tiny_policy.float()
    loaded = vlaccel.load_policy(vlaccel.save_policy(tiny_policy, tmp_path / "saved"))
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, before[name]), f"{name} was saved bf16-rounded"
