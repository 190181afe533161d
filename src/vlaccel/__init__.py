"""vlaccel: make Vision-Language-Action policies fast with composable, removable transformations.

    policy = vlaccel.load_policy("reference")
    handle = vlaccel.apply(policy, *vlaccel.presets.get("efficientvla"))
    actions = policy.predict_action(image, instruction)
    handle.remove()

Importing vlaccel changes nothing (no patching, no logging setup) and loads nothing else: each name below, and
each submodule used as an attribute (``vlaccel.presets``), is imported on first use; techniques register lazily.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

__version__ = "0.2.0"

_EXPORTS = {  # name -> the module that defines it
    "apply": "vlaccel.api",
    "applied": "vlaccel.api",
    "applied_configs": "vlaccel.api",
    "handle_for": "vlaccel.api",
    "Handle": "vlaccel.api",
    "TechniqueConfig": "vlaccel.config",
    "config_from_dict": "vlaccel.config",
    "register_handler": "vlaccel.config",
    "VlaccelError": "vlaccel.errors",
    "load_policy": "vlaccel.models.io",
    "save_policy": "vlaccel.models.io",
    "fingerprint": "vlaccel.weights",
    "ReferenceVLA": "vlaccel.models.vla",
    "ReferenceVLAConfig": "vlaccel.models.config",
    "DenoiseStepsConfig": "vlaccel.techniques.denoise_steps",
    "LayerPruneConfig": "vlaccel.techniques.layer_prune",
    "TokenPruneConfig": "vlaccel.techniques.token_prune",
    "HeadCacheConfig": "vlaccel.techniques.head_cache",
    "KVEfficientConfig": "vlaccel.techniques.kv_efficient.config",
    "PrecisionConfig": "vlaccel.techniques.precision",
    "CompileConfig": "vlaccel.techniques.compile",
    "QuantizeConfig": "vlaccel.techniques.quantize",
}

__all__ = [*_EXPORTS, "presets"]


def __getattr__(name: str) -> Any:
    """An exported name, or a submodule (``vlaccel.presets``), imported on first use."""
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
