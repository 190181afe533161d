"""The built-in subjects: the reference VLA, the tiny transformers families, transformers pi0 and, where LeRobot is
installed, LeRobot's pi0, pi0.5 and SmolVLA."""

from __future__ import annotations

import importlib.util

from vlaccel.testing.case import Subject
from vlaccel.testing.reference import build, run_history, run_single, saving

__all__ = ["reference_subject", "builtin_subjects"]


def reference_subject() -> Subject:
    """The tiny random reference VLA with every built-in technique's case that applies to it; it saves and loads
    with ``vlaccel.save_policy`` / ``load_policy``. The subject to run a new technique on first."""
    from vlaccel.testing.bounds import bounds_for
    from vlaccel.testing.technique_cases import reference_cases

    return Subject("reference", build, run_single, run_history, reference_cases(),
                   min_sqnr_db=bounds_for("reference"), saving=saving())


def builtin_subjects(runnable_here: bool = True) -> list[Subject]:
    """Every built-in subject with its cases; ``runnable_here=False`` also lists those whose package is missing
    here (LeRobot's policies), which then cannot be built."""
    from vlaccel.testing import flow_subjects
    from vlaccel.testing.tiny_transformers import FAMILIES
    from vlaccel.testing.transformers_subjects import transformers_subject

    subjects = [reference_subject(), *[transformers_subject(f) for f in FAMILIES], flow_subjects.pi0_subject()]
    if not runnable_here or importlib.util.find_spec("lerobot") is not None:
        subjects += [flow_subjects.lerobot_pi_subject("pi0"), flow_subjects.lerobot_pi_subject("pi05"),
                     flow_subjects.smolvla_subject()]
    return subjects
