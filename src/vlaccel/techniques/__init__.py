"""Techniques: each module defines one frozen config and registers its handler on import.

Importing this package registers all built-in techniques (done lazily by vlaccel.config on first use).
"""

from vlaccel.techniques.denoise_steps import DenoiseStepsConfig
from vlaccel.techniques.layer_prune import LayerPruneConfig
from vlaccel.techniques.token_prune import TokenPruneConfig
from vlaccel.techniques.head_cache import HeadCacheConfig
from vlaccel.techniques.kv_efficient import KVEfficientConfig
from vlaccel.techniques import efficientvla_presets  # noqa: F401  (registers the EfficientVLA presets)

__all__ = ["DenoiseStepsConfig", "LayerPruneConfig", "TokenPruneConfig", "HeadCacheConfig", "KVEfficientConfig"]
