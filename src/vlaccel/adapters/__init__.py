"""Model adapters (where the decoder layers, token spans and action-head blocks of a model are).

Importing this package loads nothing: each name below is imported from :mod:`vlaccel.adapters.base` on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

_EXPORTS = {  # name -> the module that defines it
    "ModelAdapter": "vlaccel.adapters.base",
    "UnsupportedModelError": "vlaccel.adapters.base",
    "get_adapter": "vlaccel.adapters.base",
    "register_adapter": "vlaccel.adapters.base",
    "supported_models": "vlaccel.adapters.base",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    """An exported name, or a submodule (``vlaccel.adapters.reference``), imported on first use."""
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
