"""The shared contract every technique passes on every model family it applies to, run on vlaccel's own cases.

The properties, cases, subjects and SQNR bounds live in :mod:`vlaccel.testing` (so that a technique or adapter of
another package runs the same checks); this file runs each property on each pair, under the ids
``{subject}-{case}``. A property that does not apply to a pair (no neutral setting, a model vlaccel does not
save, an optional package missing here) is skipped with the reason.
"""

from __future__ import annotations

import importlib.util

import pytest

from vlaccel.config import TECHNIQUES
from vlaccel.testing import IDENTICAL, MIN_SQNR_DB, builtin_subjects, run_property, techniques_without_case

PAIRS = [(s, c) for s in builtin_subjects() for c in s.cases]


def _param(subject, case):
    """A pair; the compiled ones are slow (inductor compiles each property's model afresh: 20 s a property)."""
    slow = [pytest.mark.slow] if "compile" in subject.pair_id(case) else []
    return pytest.param((subject, case), marks=slow, id=subject.pair_id(case))


@pytest.fixture(params=[_param(s, c) for s, c in PAIRS])
def pair(request):
    return request.param


def _check(name: str, pair) -> None:
    reason = run_property(name, *pair)
    if reason is not None:
        pytest.skip(reason)


def test_neutral_is_bit_identical(pair):
    _check("neutral_is_bit_identical", pair)


def test_remove_restores_exactly(pair):
    _check("remove_restores_exactly", pair)


def test_applying_twice_raises(pair):
    _check("applying_twice_raises", pair)


def test_lossy_setting_cuts_flops_and_stays_close(pair):
    _check("cuts_flops_and_stays_close", pair)


@pytest.mark.slow
def test_state_resets_per_episode(pair):
    _check("state_resets_per_episode", pair)


def test_config_round_trips(pair):
    _check("config_round_trips", pair)


@pytest.mark.slow
def test_deep_copy_is_independent(pair):
    _check("deep_copy_is_independent", pair)


def test_saved_while_applied_reloads_as_the_plain_policy(pair):
    _check("saved_while_applied_reloads_as_plain", pair)


def test_every_case_has_a_named_bound():
    lerobot = importlib.util.find_spec("lerobot") is not None  # LeRobot's subjects exist only where it is installed
    bounded = {s.pair_id(c) for s, c in PAIRS if c.outputs != IDENTICAL}  # an exact case's outputs must be equal
    assert {k for k in MIN_SQNR_DB if lerobot or not k.startswith("lerobot-")} == bounded
    assert all(b is None or b > 0 for b in MIN_SQNR_DB.values())  # an all-zero output (0 dB) fails each bound


def test_every_registered_technique_has_a_case():
    """Each technique vlaccel registers has a contract case on some subject (LeRobot's too, where LeRobot is not
    installed here). A technique another package registers runs the contract in that package's own tests."""
    own = [name for name in TECHNIQUES.names() if TECHNIQUES.get(name).__module__.startswith("vlaccel.")]
    assert techniques_without_case(builtin_subjects(runnable_here=False), own) == []
