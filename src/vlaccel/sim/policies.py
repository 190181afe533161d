"""Policy specs for the evaluation: a name or path, "module:factory", or a callable; loaded once per process."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from vlaccel.sim.protocol import BASELINE

PolicySpec = str | Callable[[], Any]


def policy_label(spec: PolicySpec) -> str:
    """A stable, human-readable name for a policy spec (stored in every record)."""
    if isinstance(spec, str):
        return spec
    mod = getattr(spec, "__module__", None) or "?"
    name = getattr(spec, "__qualname__", None) or type(spec).__qualname__
    return f"{mod}:{name}"


def load_policy(spec: PolicySpec) -> Any:
    """ "reference" or a checkpoint path -> `vlaccel.load_policy`; "pkg.module:factory" -> that factory
    called with no arguments; a (picklable, top-level) callable -> called with no arguments."""
    if callable(spec):
        return spec()
    if ":" in spec and not os.path.exists(spec):
        module, _, attr = spec.partition(":")
        if os.getcwd() not in sys.path:  # like `python -m`: modules in the working directory resolve
            sys.path.append(os.getcwd())
        factory = importlib.import_module(module)
        for part in attr.split("."):
            factory = getattr(factory, part)
        return factory()
    import vlaccel

    return vlaccel.load_policy(spec)


_POLICIES: dict[tuple[str, str], tuple[Any, Any]] = {}


def get_policy(spec: PolicySpec, preset: str, image_size: int = 128) -> tuple[Any, Any]:
    """(policy, handle) for this process, loaded and accelerated once per (policy, preset), warmed up."""
    key = (policy_label(spec), preset)
    if key not in _POLICIES:
        policy = load_policy(spec)
        handle = None
        if preset != BASELINE:
            import vlaccel

            handle = vlaccel.apply(policy, *vlaccel.presets.get(preset))
        warm = np.zeros((image_size, image_size, 3), dtype=np.uint8)
        policy.predict_action(warm, "warm up", proprio=np.zeros(4, dtype=np.float32))
        _POLICIES[key] = (policy, handle)
    return _POLICIES[key]
