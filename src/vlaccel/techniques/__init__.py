"""Techniques: each module defines one frozen config and the handler its ``handler`` attribute names.

Nothing registers on import: ``vlaccel.config.TECHNIQUES`` and ``vlaccel.presets.PRESETS`` list them as data.
Importing this package loads no technique: ``from vlaccel.techniques import LayerPruneConfig`` imports that
config's module on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

_EXPORTS = {  # config -> the module that defines it
    "DenoiseStepsConfig": "vlaccel.techniques.denoise_steps",
    "LayerPruneConfig": "vlaccel.techniques.layer_prune",
    "TokenPruneConfig": "vlaccel.techniques.token_prune",
    "HeadCacheConfig": "vlaccel.techniques.head_cache",
    "KVEfficientConfig": "vlaccel.techniques.kv_efficient.config",
    "PrecisionConfig": "vlaccel.techniques.precision",
    "CompileConfig": "vlaccel.techniques.compile",
    "QuantizeConfig": "vlaccel.techniques.quantize",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    """A config, or a technique module (``vlaccel.techniques.layer_prune``), imported on first use."""
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
