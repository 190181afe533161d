"""The contract every vlaccel technique passes on every model family it applies to, as a library.

A technique or adapter of another package (registered through the ``vlaccel.techniques`` / ``vlaccel.adapters``
entry points) runs the same checks as vlaccel's own from its test suite::

    from vlaccel.testing import TechniqueCase, check_contract, reference_subject

    def test_my_technique_keeps_the_contract():
        case = TechniqueCase("my_tech", "my_tech", accelerated=lambda m: MyConfig(strength=0.5),
                             neutral=lambda m: MyConfig(strength=0.0), min_sqnr_db=20)
        check_contract(reference_subject(), case)  # raises AssertionError naming each failed property

Properties (:mod:`vlaccel.testing.properties`): the neutral setting is bit-identical; ``remove()`` restores
outputs, state dict, hooks and methods exactly; applying twice is refused; the accelerated setting cuts the
counted FLOPs and keeps the outputs within an SQNR bound; per-episode state resets; the config round-trips through
``to_dict``; a deep copy is independent; saving while applied writes the plain model (or is refused by design).
Subjects (:class:`Subject`): the tiny reference VLA (:func:`reference_subject`), tiny random transformers VLMs
and LMs, transformers pi0 and LeRobot's policies (:func:`builtin_subjects`); an adapter brings its own
``Subject`` and runs the built-in cases on it.

``import vlaccel`` does not import this package, and it needs no test framework (plain ``assert``).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

_EXPORTS = {  # name -> the module that defines it
    "TechniqueCase": "vlaccel.testing.case",
    "Subject": "vlaccel.testing.case",
    "Saving": "vlaccel.testing.case",
    "CHANGES": "vlaccel.testing.case",
    "CLOSE": "vlaccel.testing.case",
    "IDENTICAL": "vlaccel.testing.case",
    "needs_modules": "vlaccel.testing.case",
    "check_contract": "vlaccel.testing.contract",
    "run_property": "vlaccel.testing.contract",
    "ContractReport": "vlaccel.testing.contract",
    "techniques_without_case": "vlaccel.testing.contract",
    "PROPERTIES": "vlaccel.testing.properties",
    "MIN_SQNR_DB": "vlaccel.testing.bounds",
    "output_sqnr": "vlaccel.testing.bounds",
    "reference_subject": "vlaccel.testing.subjects",
    "builtin_subjects": "vlaccel.testing.subjects",
    "reference_cases": "vlaccel.testing.technique_cases",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    """An exported name, or a submodule (``vlaccel.testing.properties``), imported on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
