"""Techniques: each module defines one frozen config and registers its handler on import.

Importing this package registers all built-in techniques (done lazily by vlaccel.config on first use).
"""

from vlaccel.techniques.denoise_steps import DenoiseStepsConfig
from vlaccel.techniques.kv_efficient import KVEfficientConfig

__all__ = ["DenoiseStepsConfig", "KVEfficientConfig"]
