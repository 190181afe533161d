"""vlaccel: make Vision-Language-Action policies fast with composable, removable transformations.

    policy = vlaccel.load_policy("reference")
    handle = vlaccel.apply(policy, *vlaccel.presets.get("efficientvla"))
    actions = policy.predict_action(image, instruction)
    handle.remove()

Importing vlaccel changes nothing (no patching, no logging setup); techniques register lazily.
"""

from vlaccel import presets
from vlaccel.api import Handle, applied, applied_configs, apply, handle_for
from vlaccel.config import TechniqueConfig, config_from_dict, register_handler
from vlaccel.models import ReferenceVLA, ReferenceVLAConfig, fingerprint, load_policy, save_policy

__version__ = "0.2.0"

_LAZY_CONFIGS = {
    "DenoiseStepsConfig": "vlaccel.techniques.denoise_steps",
    "LayerPruneConfig": "vlaccel.techniques.layer_prune",
    "TokenPruneConfig": "vlaccel.techniques.token_prune",
    "HeadCacheConfig": "vlaccel.techniques.head_cache",
    "KVEfficientConfig": "vlaccel.techniques.kv_efficient",
    "PrecisionConfig": "vlaccel.techniques.precision",
    "CompileConfig": "vlaccel.techniques.compile",
    "QuantizeConfig": "vlaccel.techniques.quantize",
}


def __getattr__(name: str):
    # `from vlaccel import LayerPruneConfig` without importing every technique at `import vlaccel` time.
    if name in _LAZY_CONFIGS:
        import importlib

        return getattr(importlib.import_module(_LAZY_CONFIGS[name]), name)
    raise AttributeError(f"module 'vlaccel' has no attribute {name!r}")


__all__ = [
    "apply", "applied", "applied_configs", "handle_for", "Handle", "TechniqueConfig", "config_from_dict",
    "register_handler",
    "load_policy", "save_policy", "fingerprint", "ReferenceVLA", "ReferenceVLAConfig", "presets",
    *_LAZY_CONFIGS,
]
