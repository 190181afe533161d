"""The contract's properties, one function each: ``property(subject, case)`` returns None when the property holds,
or a sentence saying why it does not apply to this pair, and raises ``AssertionError`` when it fails.

:data:`PROPERTIES` lists them in the order :func:`vlaccel.testing.check_contract` runs them.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlaccel.adapters import get_adapter
from vlaccel.api import applied, applied_configs, apply, handle_for
from vlaccel.bench.flops import count_flops
from vlaccel.config import config_from_dict
from vlaccel.testing.bounds import output_sqnr
from vlaccel.testing.case import CHANGES, IDENTICAL, UNNAMED, Subject, TechniqueCase

__all__ = ["PROPERTIES", "snapshot", "leftovers", "sqnr_bound", "neutral_is_bit_identical", "remove_restores_exactly",
           "applying_twice_raises", "cuts_flops_and_stays_close", "state_resets_per_episode", "config_round_trips",
           "deep_copy_is_independent", "saved_while_applied_reloads_as_plain"]

_HOOK_TABLES = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_state_dict_hooks",
                "_load_state_dict_pre_hooks")


def snapshot(model: Any) -> dict[str, torch.Tensor]:
    """A copy of every tensor of ``model``'s state dict."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def leftovers(model: Any) -> dict[str, object]:
    """What a technique can leave on ``model``'s modules: every hook, every ``_vlaccel_*`` attribute, and every
    instance attribute that replaces a method of the module's class (a wrapped or compiled ``forward``)."""
    found: dict[str, object] = {}
    for name, module in model.named_modules():
        for table in _HOOK_TABLES:
            found.update({f"{name}.{table}.{k}": v for k, v in getattr(module, table).items()})
        for attr, value in module.__dict__.items():
            replaces_method = callable(value) and callable(getattr(type(module), attr, None))
            if attr.startswith("_vlaccel_") or replaces_method:
                found[f"{name}.{attr}"] = value
    return found


def _pair(subject: Subject, case: TechniqueCase) -> str:
    return subject.pair_id(case)


def _prepared(subject: Subject, case: TechniqueCase) -> Any:
    model = subject.build()
    if case.prepare is not None:
        case.prepare(model)
    return model


def _runner(subject: Subject, case: TechniqueCase) -> Callable[[Any], Any]:
    """model -> outputs: one episode (sequence) in history mode, else the independent calls."""
    if case.history:
        return lambda model: subject.run_history(model, 0)
    return subject.run_single


def _assert_same_state(state: dict[str, torch.Tensor], plain: dict[str, torch.Tensor], what: str) -> None:
    missing, extra = sorted(set(plain) - set(state)), sorted(set(state) - set(plain))
    assert not missing and not extra, f"{what} has other entries than the plain model: missing {missing[:3]}, " \
                                      f"extra {extra[:3]}"
    differ = [k for k in plain if state[k].dtype != plain[k].dtype or not torch.equal(state[k], plain[k])]
    assert not differ, f"{what}: {len(differ)} tensors differ from the plain model's, e.g. {differ[:3]}"


def _changed_entries(before: dict[str, object], after: dict[str, object]) -> list[str]:
    return sorted(k for k in set(before) | set(after) if k not in before or k not in after or before[k] != after[k])


def sqnr_bound(subject: Subject, case: TechniqueCase) -> float | None:
    """The bound (dB) the pair's accelerated outputs are held to: the subject's for the case, else the case's own."""
    bound = subject.min_sqnr_db.get(case.id, case.min_sqnr_db)
    if bound is UNNAMED:
        raise AssertionError(f"{_pair(subject, case)} names no SQNR bound: set TechniqueCase(min_sqnr_db=...) or "
                             f"Subject(min_sqnr_db={{{case.id!r}: ...}}) to the value measured less a margin (None: "
                             "closeness is not checked)")
    return bound


def neutral_is_bit_identical(subject: Subject, case: TechniqueCase) -> str | None:
    """The neutral setting leaves every output bit-identical (single calls and history)."""
    if case.neutral is None:
        return f"{case.technique} has no setting that leaves the outputs unchanged"
    model = subject.build()
    if case.attention:  # the neutral setting goes through the technique's real path, on this attention
        get_adapter(model).decoder_owner(model).set_attn_implementation(case.attention)
    base_single, base_history = subject.run_single(model), subject.run_history(model, 0)
    cfg = case.neutral(model)
    assert cfg.is_neutral(model, get_adapter(model)), f"{cfg} is not neutral by its own is_neutral()"
    with applied(model, cfg):
        np.testing.assert_array_equal(subject.run_single(model), base_single,
                                      err_msg="the neutral setting changed the outputs of single calls")
        if case.history:
            np.testing.assert_array_equal(subject.run_history(model, 0), base_history,
                                          err_msg="the neutral setting changed the outputs in history mode")
    return None


def remove_restores_exactly(subject: Subject, case: TechniqueCase) -> str | None:
    """``remove()`` takes away every hook, attribute and replaced method, and leaves outputs and state dict
    bit-identical."""
    model = _prepared(subject, case)
    run = _runner(subject, case)
    before_state = snapshot(model)
    base = run(model)
    before = leftovers(model)  # after a run: transformers adds output-capturing hooks on first use
    handle = apply(model, case.accelerated(model))
    run(model)
    assert leftovers(model) != before, "applying left no trace on the model (hooks, _vlaccel_* attributes)"
    handle.remove()
    after = leftovers(model)
    assert after == before, f"remove() left these behind or did not put them back: {_changed_entries(before, after)}"
    np.testing.assert_array_equal(run(model), base, err_msg="the outputs after remove() differ from before apply")
    _assert_same_state(snapshot(model), before_state, "the state dict after remove()")
    assert applied_configs(model) == [], f"configs still listed as applied after remove(): {applied_configs(model)}"
    return None


def applying_twice_raises(subject: Subject, case: TechniqueCase) -> str | None:
    """Applying the technique to a model that has it already is refused (``RuntimeError``: "already applied")."""
    model = _prepared(subject, case)
    handle = apply(model, case.accelerated(model))
    second, refusal = None, None
    try:
        second = apply(model, case.accelerated(model))
    except RuntimeError as err:
        refusal = str(err)
    finally:
        if second is not None:
            second.remove()
        handle.remove()
    assert second is None, f"applying {case.technique} a second time was accepted"
    assert "already applied" in refusal, f"applying twice raised RuntimeError without saying 'already applied': " \
                                         f"{refusal}"
    return None


def cuts_flops_and_stays_close(subject: Subject, case: TechniqueCase) -> str | None:
    """The accelerated setting is not neutral, cuts the counted FLOPs (or keeps them, or claims nothing: the case's
    ``cuts_flops``), keeps the outputs finite and changes them as its ``outputs`` says: within the named SQNR bound,
    or not at all."""
    model = _prepared(subject, case)
    count = case.cuts_flops is not None
    base_flops = count_flops(lambda: subject.run_history(model, 0))[0] if count else None
    base = subject.run_history(model, 0)
    cfg = case.accelerated(model)
    assert not cfg.is_neutral(model, get_adapter(model)), f"the accelerated setting {cfg} is neutral"
    with applied(model, cfg):
        flops = count_flops(lambda: subject.run_history(model, 0))[0] if count else None
        out = subject.run_history(model, 0)
    if case.cuts_flops is True:
        assert flops < base_flops, f"counted FLOPs {flops} not below the baseline's {base_flops}"
    elif case.cuts_flops is False:
        assert flops == base_flops, f"counted FLOPs {flops} differ from the baseline's {base_flops}"
    assert np.isfinite(out).all(), "the accelerated setting's outputs are not all finite"
    if case.outputs == IDENTICAL:
        np.testing.assert_array_equal(out, base, err_msg="an exact technique changed the outputs")
        return None
    if case.outputs == CHANGES:
        assert not np.array_equal(out, base), "the accelerated (lossy) setting changed nothing"
    bound = sqnr_bound(subject, case)
    sqnr = output_sqnr(subject, base, out)
    assert bound is None or sqnr >= bound, f"output SQNR {sqnr:.1f} dB below the bound of {bound} dB"
    return None


def state_resets_per_episode(subject: Subject, case: TechniqueCase) -> str | None:
    """An episode (sequence) after another gives exactly what it gives on a freshly transformed model."""
    model = _prepared(subject, case)
    fresh = copy.deepcopy(model)
    with applied(model, case.accelerated(model)):
        subject.run_history(model, 1)
        second = subject.run_history(model, 2)
    with applied(fresh, case.accelerated(fresh)):
        only = subject.run_history(fresh, 2)
    np.testing.assert_array_equal(second, only, err_msg="an episode after another differs from the same episode "
                                                        "on a freshly transformed model: per-episode state leaks")
    return None


def config_round_trips(subject: Subject, case: TechniqueCase) -> str | None:
    """The accelerated config is of the case's technique and survives ``to_dict`` / ``config_from_dict``."""
    cfg = case.accelerated(subject.build())
    assert type(cfg).technique_name() == case.technique, \
        f"the case builds a {type(cfg).technique_name()!r} config, not one of {case.technique!r}"
    again = config_from_dict(cfg.to_dict())
    assert again == cfg, f"config_from_dict(to_dict()) gave {again}, not {cfg}"
    return None


def deep_copy_is_independent(subject: Subject, case: TechniqueCase) -> str | None:
    """A deep copy of a transformed model gives the same outputs, owns its state (removing the original's
    techniques leaves the copy transformed) and carries a working handle (``vlaccel.handle_for``)."""
    model = _prepared(subject, case)
    run = _runner(subject, case)
    base = run(model)
    clean = leftovers(model)
    handle = apply(model, case.accelerated(model))
    twin = copy.deepcopy(model)
    accelerated = run(model)
    np.testing.assert_array_equal(run(twin), accelerated, err_msg="the deep copy computes other outputs")
    handle.remove()
    np.testing.assert_array_equal(run(model), base, err_msg="remove() on the original did not restore it")
    np.testing.assert_array_equal(run(twin), accelerated,
                                  err_msg="removing the original's techniques changed the copy's outputs")
    assert applied_configs(twin) == handle.configs, "the copy does not list the original's configs as applied"
    handle_for(twin).remove()
    np.testing.assert_array_equal(run(twin), base, err_msg="the copy's handle did not restore the copy")
    left = sorted(set(leftovers(twin)) ^ set(clean))
    assert not left, f"the copy's handle left these behind or took away these: {left}"
    return None


def saved_while_applied_reloads_as_plain(subject: Subject, case: TechniqueCase) -> str | None:
    """Saving while the technique is applied writes the plain model: reloaded, every tensor equals the never-applied
    model's (``torch.equal``). A technique that declares ``changes_state_dict`` is refused instead, with an error
    naming it, and nothing is written."""
    saving = subject.saving
    if saving is None:
        return subject.not_saved_because
    model = _prepared(subject, case)
    plain = snapshot(model)
    cfg = case.accelerated(model)
    name = type(cfg).__name__
    handle = apply(model, cfg)
    try:
        _runner(subject, case)(model)  # what the technique builds while running must not reach the file either
        with tempfile.TemporaryDirectory(prefix="vlaccel-contract-") as tmp:
            folder = Path(tmp) / "saved"
            if getattr(type(cfg), "changes_state_dict", False):
                try:
                    saving.save(model, folder)
                except saving.refusal as err:
                    assert name in str(err), f"the refusal to save does not name {name}: {err}"
                else:
                    raise AssertionError(f"{name} declares changes_state_dict (saving it is refused by design), "
                                         "yet the save went through")
                written = sorted(p.name for p in Path(tmp).iterdir())
                assert not written, f"the refused save wrote {written}"
            else:
                try:
                    saving.save(model, folder)
                except saving.refusal as err:
                    raise AssertionError(
                        f"saving under {name} was refused ({err}); a technique that changes the state dict gives "
                        "the plain tensors back (plain_tensors()) or declares changes_state_dict = True") from err
                _assert_same_state(snapshot(saving.load(folder)), plain,
                                   f"the model saved under {name} and reloaded")
                written = sorted(p.name for p in Path(tmp).iterdir())
                assert written == ["saved"], f"the save left more than its folder: {written}"
    finally:
        handle.remove()
    _assert_same_state(snapshot(model), plain, "the state dict after saving and remove()")
    return None


#: name -> property, in the order the contract runs them
PROPERTIES: dict[str, Callable[[Subject, TechniqueCase], str | None]] = {
    "neutral_is_bit_identical": neutral_is_bit_identical,
    "remove_restores_exactly": remove_restores_exactly,
    "applying_twice_raises": applying_twice_raises,
    "cuts_flops_and_stays_close": cuts_flops_and_stays_close,
    "state_resets_per_episode": state_resets_per_episode,
    "config_round_trips": config_round_trips,
    "deep_copy_is_independent": deep_copy_is_independent,
    "saved_while_applied_reloads_as_plain": saved_while_applied_reloads_as_plain,
}
