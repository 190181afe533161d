"""Running the contract: one property (:func:`run_property`), all of them (:func:`check_contract`), and which
registered techniques no case covers (:func:`techniques_without_case`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from vlaccel.testing.case import Subject, TechniqueCase
from vlaccel.testing.properties import PROPERTIES

__all__ = ["ContractReport", "check_contract", "run_property", "techniques_without_case"]


@dataclasses.dataclass
class ContractReport:
    """What :func:`check_contract` found for one pair: the properties that held, and those that do not apply
    (name -> why)."""

    pair: str
    held: list[str] = dataclasses.field(default_factory=list)
    not_applicable: dict[str, str] = dataclasses.field(default_factory=dict)


def run_property(name: str, subject: Subject, case: TechniqueCase) -> str | None:
    """Check the property ``name`` (a key of :data:`vlaccel.testing.properties.PROPERTIES`) on the pair: None when it
    holds, or why it does not apply (the case cannot run here, or the property does not fit the pair). Raises
    ``AssertionError`` naming the pair and the property when it fails."""
    if name not in PROPERTIES:
        raise KeyError(f"no contract property {name!r}; the properties are {list(PROPERTIES)}")
    unavailable = case.why_unavailable()
    if unavailable is not None:
        return unavailable
    if case.before_each is not None:
        case.before_each()
    try:
        return PROPERTIES[name](subject, case)
    except AssertionError as err:
        raise AssertionError(f"{subject.pair_id(case)}: contract property {name!r} failed: {err}") from err


def check_contract(subject: Subject, case: TechniqueCase, properties: Iterable[str] | None = None) -> ContractReport:
    """Check every contract property (or those named in ``properties``) of ``case`` on ``subject``.

    Every property runs, failing or not; then one ``AssertionError`` lists each failure. Returns what held and
    what did not apply, with the reason (check ``report.not_applicable`` in a test that expects a property to run).
    """
    report = ContractReport(subject.pair_id(case))
    failures = []
    for name in properties if properties is not None else PROPERTIES:
        try:
            reason = run_property(name, subject, case)
        except AssertionError as err:
            failures.append(str(err))
            continue
        if reason is None:
            report.held.append(name)
        else:
            report.not_applicable[name] = reason
    if failures:
        raise AssertionError(f"{len(failures)} contract properties failed:\n" + "\n".join(failures))
    return report


def techniques_without_case(subjects: Iterable[Subject], names: Iterable[str] | None = None) -> list[str]:
    """The technique names (default: every technique registered in ``vlaccel.config.TECHNIQUES``: built in, from
    entry points, at run time) that no case of ``subjects`` exercises."""
    if names is None:
        from vlaccel.config import TECHNIQUES

        names = TECHNIQUES.names()
    covered = {case.technique for subject in subjects for case in subject.cases}
    return [name for name in names if name not in covered]
