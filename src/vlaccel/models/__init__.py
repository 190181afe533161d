"""The reference CogACT-shaped VLA (vision: SigLIP, LM: Llama, action head: DiT + DDIM + CFG).

Importing this package loads nothing: each name below is imported from its module on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

_EXPORTS = {  # name -> the module that defines it
    "ReferenceVLAConfig": "vlaccel.models.config",
    "ReferenceVLA": "vlaccel.models.vla",
    "TokenLayout": "vlaccel.token_layout",
    "load_policy": "vlaccel.models.io",
    "load_reference": "vlaccel.models.io",
    "save_policy": "vlaccel.models.io",
    "fingerprint": "vlaccel.weights",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    """An exported name, or a submodule (``vlaccel.models.io``), imported on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
