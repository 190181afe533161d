"""Techniques: each module defines one frozen config and the handler its ``handler`` attribute names.

Nothing registers on import: ``vlaccel.config.TECHNIQUES`` and ``vlaccel.presets.PRESETS`` list them as data.
This package only re-exports the configs.
"""

from vlaccel.techniques.denoise_steps import DenoiseStepsConfig
from vlaccel.techniques.layer_prune import LayerPruneConfig
from vlaccel.techniques.token_prune import TokenPruneConfig
from vlaccel.techniques.head_cache import HeadCacheConfig
from vlaccel.techniques.kv_efficient import KVEfficientConfig
from vlaccel.techniques.precision import PrecisionConfig
from vlaccel.techniques.compile import CompileConfig
from vlaccel.techniques.quantize import QuantizeConfig

__all__ = ["DenoiseStepsConfig", "LayerPruneConfig", "TokenPruneConfig", "HeadCacheConfig", "KVEfficientConfig",
           "PrecisionConfig", "CompileConfig",
           "QuantizeConfig"]
