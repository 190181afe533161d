"""QuantizeConfig (torchao int8, the optional ``quant`` extra): exact remove, a named SQNR bound, a clear error
without torchao. The torchao tests run where the extra is installed (``pip install -e '.[quant]'``)."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

import vlaccel
from vlaccel.techniques import QuantizeConfig

INSTR = "open the drawer"
# tiny random policy, one call: measured 33.8 dB (weight-only) and 29.0 dB (dynamic) with torchao 0.18
MIN_SQNR_DB = {"int8_weight_only": 30, "int8_dynamic": 25}
HAS_TORCHAO = importlib.util.find_spec("torchao") is not None


def _sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    return float(10 * np.log10((ref ** 2).sum() / ((out - ref) ** 2).sum()))


def test_without_torchao_the_error_says_how_to_install_it(tiny_policy, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)  # as if torchao were not installed
    with pytest.raises(ImportError, match=r"vlaccel\[quant\]"):
        vlaccel.apply(tiny_policy, QuantizeConfig())
    assert all(type(p) is torch.nn.Parameter for p in tiny_policy.parameters())


def test_bad_configs_say_what_is_wrong():
    with pytest.raises(ValueError, match="scheme"):
        QuantizeConfig(scheme="int4")
    with pytest.raises(ValueError, match="min_features"):
        QuantizeConfig(min_features=0)


@pytest.mark.skipif(not HAS_TORCHAO, reason="torchao not installed (the optional 'quant' extra)")
@pytest.mark.parametrize("scheme", sorted(MIN_SQNR_DB))
def test_int8_within_bound_and_remove_restores(tiny_policy, frames, scheme):
    base = tiny_policy.predict_action(frames[0], INSTR)
    weight = tiny_policy.language_model.layers[0].mlp.up_proj.weight
    with vlaccel.applied(tiny_policy, QuantizeConfig(scheme=scheme)):
        assert type(tiny_policy.language_model.layers[0].mlp.up_proj.weight) is not type(weight) or \
            tiny_policy.language_model.layers[0].mlp.up_proj.weight is not weight
        out = tiny_policy.predict_action(frames[0], INSTR)
    assert tiny_policy.language_model.layers[0].mlp.up_proj.weight is weight
    assert np.isfinite(out).all() and _sqnr(base, out) >= MIN_SQNR_DB[scheme]
    np.testing.assert_array_equal(tiny_policy.predict_action(frames[0], INSTR), base)
