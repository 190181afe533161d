"""What the contract runs on: a :class:`TechniqueCase` (one technique's settings) on a :class:`Subject` (a model
family: how to build it, run it and, where it can be, save it).

A case names two settings of its technique, each a function of the model under test: ``neutral`` must leave every
output bit-identical (``None``: the technique has no such setting), ``accelerated`` is the setting whose effect
the contract checks. What that effect must be is the case's ``outputs``:

- :data:`CHANGES` (lossy techniques): the outputs change, stay finite and stay within the SQNR bound named for
  the pair;
- :data:`CLOSE` (engine switches such as ``torch.compile``): equal up to float rounding, within the named bound;
- :data:`IDENTICAL` (exact savings such as cross-KV reuse): bit-identical outputs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["TechniqueCase", "Subject", "Saving", "CHANGES", "CLOSE", "IDENTICAL", "OUTPUT_KINDS", "UNNAMED",
           "needs_modules"]

CHANGES, CLOSE, IDENTICAL = "changes", "close", "identical"
OUTPUT_KINDS = (CHANGES, CLOSE, IDENTICAL)


class _Unnamed:
    """The default of :attr:`TechniqueCase.min_sqnr_db`: no bound named (an error where one is needed)."""

    def __repr__(self) -> str:
        return "UNNAMED"


#: a case that names no SQNR bound of its own (the subject's table must name one)
UNNAMED: Any = _Unnamed()


@dataclasses.dataclass(frozen=True)
class TechniqueCase:
    """One technique's settings for the contract.

    ``id``: the case's name in test ids (``"{subject.id}-{case.id}"``). ``technique``: the technique's registry
    name (``vlaccel.config.TECHNIQUES``); the contract checks that ``accelerated`` builds a config of it.
    ``accelerated`` / ``neutral``: model -> config (see the module docstring); ``outputs``: what ``accelerated``
    does to the outputs (:data:`CHANGES`, :data:`CLOSE` or :data:`IDENTICAL`).
    ``cuts_flops``: True: the counted FLOPs drop; False: they stay equal (the technique lowers the cost per FLOP);
    None: no claim, FLOPs are not counted (a compiled graph runs kernels the counter does not see).
    ``history``: also run history mode (reset / step with the KV cache; a sequence for transformers models).
    ``prepare``: runs on the model before anything is measured (e.g. calibration for layer pruning).
    ``attention``: the LM attention implementation the neutral setting is compared on (H2O reads attention
    probabilities: ``"eager"``). ``min_sqnr_db``: the case's own bound (dB), used where the subject names none;
    ``None``: closeness is not checked. ``unavailable``: () -> why the case cannot run here (a missing optional
    package), or None. ``before_each``: runs before each property (compile: ``torch._dynamo.reset``).
    """

    id: str
    technique: str
    accelerated: Callable[[Any], Any]
    neutral: Callable[[Any], Any] | None = None
    outputs: str = CHANGES
    cuts_flops: bool | None = True
    history: bool = True
    prepare: Callable[[Any], None] | None = None
    attention: str | None = None
    min_sqnr_db: Any = UNNAMED
    unavailable: Callable[[], str | None] | None = None
    before_each: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        if self.outputs not in OUTPUT_KINDS:
            raise ValueError(f"TechniqueCase {self.id!r}: outputs must be one of {OUTPUT_KINDS}, got {self.outputs!r}")
        if self.cuts_flops not in (True, False, None):
            raise ValueError(f"TechniqueCase {self.id!r}: cuts_flops must be True, False or None")

    def why_unavailable(self) -> str | None:
        """Why this case cannot run here (a missing optional package), or None."""
        return self.unavailable() if self.unavailable is not None else None


def needs_modules(*modules: str, install: str) -> Callable[[], str | None]:
    """An ``unavailable`` check: the reason when one of ``modules`` cannot be imported (``install``: how to get it)."""

    def missing() -> str | None:
        absent = [m for m in modules if importlib.util.find_spec(m) is None]
        return f"{', '.join(absent)} not installed ({install})" if absent else None

    return missing


@dataclasses.dataclass(frozen=True)
class Saving:
    """How a subject is written and read back: ``save(model, folder)`` (may raise where a technique forbids it;
    writes nothing then) and ``load(folder) -> model``; ``refusal``: the exception type a refused save raises."""

    save: Callable[[Any, Path], Any]
    load: Callable[[Path], Any]
    refusal: type[BaseException] = Exception


@dataclasses.dataclass(frozen=True)
class Subject:
    """A model family the contract runs on: how to build and run it, and the technique cases that apply.

    ``build()`` -> a fresh model; ``run_single(model)`` -> outputs of independent calls (numpy);
    ``run_history(model, seed)`` -> outputs of one episode (reference VLA: reset + step over frames) or one
    sequence (transformers: ``generate()``'s per-step logits; pi0: one action chunk with fixed noise).
    ``greedy_sequence``: ``run_history`` returns greedy ``generate()`` logits (compared up to the first step whose
    token differs). ``min_sqnr_db``: case id -> bound (dB) of its outputs against the plain model's, or None where
    closeness is not a property to check. ``saving``: how to save and reload the model, or None with the reason
    in ``not_saved_because``.
    """

    id: str
    build: Callable[[], Any]
    run_single: Callable[[Any], Any]
    run_history: Callable[[Any, int], Any]
    cases: tuple[TechniqueCase, ...]
    greedy_sequence: bool = False
    min_sqnr_db: Mapping[str, float | None] = dataclasses.field(default_factory=dict)
    saving: Saving | None = None
    not_saved_because: str = "the subject names no way to save it (Subject.saving)"

    def pair_id(self, case: TechniqueCase) -> str:
        return f"{self.id}-{case.id}"
