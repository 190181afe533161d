"""Techniques: each module defines one frozen config and registers its handler on import.

Importing this package registers all built-in techniques (done lazily by vlaccel.config on first use).
"""

from vlaccel.techniques.denoise_steps import DenoiseStepsConfig

__all__ = ["DenoiseStepsConfig"]
