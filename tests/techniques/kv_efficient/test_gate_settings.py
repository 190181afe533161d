"""A gate applied at cache settings other than those its ``gate.json`` records is warned about once, naming both."""

from __future__ import annotations

import warnings

import pytest

import vlaccel
from vlaccel.techniques import KVEfficientConfig

from .helpers import tiny_gate


def _apply(policy, window):
    return vlaccel.apply(policy, KVEfficientConfig(window=window, budget=1, gate=tiny_gate(policy)))


def test_other_cache_settings_are_warned_once(tiny_policy):
    q = tiny_policy.config.tokens_per_frame
    with pytest.warns(UserWarning, match=rf"trained for window={q} \(its gate.json\) but is applied with "
                                         rf"window={2 * q}") as seen:
        _apply(tiny_policy, 2 * q).remove()
    assert len([w for w in seen if "trained for" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _apply(tiny_policy, 2 * q).remove()  # the same gate and settings again: said once already


def test_the_recorded_settings_are_not_warned(tiny_policy):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _apply(tiny_policy, tiny_policy.config.tokens_per_frame).remove()
