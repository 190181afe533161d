"""EfficientVLA presets (arXiv 2506.10100), scaled from the paper's CogACT setting to a given policy size.

The paper keeps L = 22 of 32 Llama layers, 56 of 256 visual tokens, caches the DiT every N = 5 of 10 DDIM steps
and prunes 25% of the kept layers' MLP channels (its best setting: 1.93x, 28.9% FLOPs). We keep the same
*fractions*: ``round(L * 22/32)`` layers and ``round(N * 56/256)`` tokens. :func:`efficientvla_configs` computes
them for any policy (or ``ReferenceVLAConfig``); the registered presets use the default reference policy
(``ReferenceVLAConfig.default()``: 8 layers -> 6, 64 visual tokens -> 14, interval 5, MLP 25%).
Layer pruning calibrates on real observations (see :mod:`vlaccel.techniques.layer_prune`).

``efficientvla-keep-layers`` is our setting, not the paper's: token selection (44% of the tokens) and the DiT cache,
no layer pruning. On the session-8 release of the bundled policy every layer-pruning setting we tried (6 or 7 of 8
layers, with or without MLP pruning) cost window-open most of its successes, and this one lost nothing measurable;
on the current release it loses 5.0 points against the paper setting's 16.25 (README, "Where things stand").
"""

from __future__ import annotations

from typing import Any

from vlaccel import presets
from vlaccel.config import TechniqueConfig

__all__ = ["efficientvla_configs", "LAYER_FRACTION", "TOKEN_FRACTION", "CACHE_INTERVAL", "MLP_RATIO",
           "KEEP_LAYERS_TOKEN_FRACTION"]

LAYER_FRACTION = 22 / 32
TOKEN_FRACTION = 56 / 256
CACHE_INTERVAL = 5
MLP_RATIO = 0.25
# ``efficientvla-keep-layers``: chosen on selection seeds 2000-2019 for the session-8 bundled policy (README); 28 of 64 tokens.
KEEP_LAYERS_TOKEN_FRACTION = 28 / 64


def _sizes(target: Any) -> tuple[int, int]:
    """(decoder layers, visual tokens per observation) of a policy or a ReferenceVLAConfig."""
    if hasattr(target, "lm_layers") and hasattr(target, "visual_tokens"):
        return target.lm_layers, target.visual_tokens
    from vlaccel.adapters import get_adapter

    adapter = get_adapter(target)
    return len(adapter.decoder_layers(target)), adapter.visual_tokens(target)


def _half_up(x: float) -> int:
    return int(x + 0.5)


def efficientvla_configs(target: Any = None, *, layers: bool = True, tokens: bool = True, cache: bool = True,
                         token_method: str = "efficientvla", layer_fraction: float = LAYER_FRACTION,
                         token_fraction: float = TOKEN_FRACTION, mlp_ratio: float = MLP_RATIO) -> list[TechniqueConfig]:
    """EfficientVLA's configs for ``target`` (a policy or ReferenceVLAConfig; default: the default reference size),
    by default at the paper's fractions. ``layers`` = layer pruning (keep ``layer_fraction`` of the decoder layers)
    + MLP pruning (``mlp_ratio`` of the kept layers' channels), ``tokens`` = visual-token pruning (keep
    ``token_fraction``), ``cache`` = DiT cache."""
    from vlaccel.models import ReferenceVLAConfig
    from vlaccel.techniques.head_cache import HeadCacheConfig
    from vlaccel.techniques.layer_prune import LayerPruneConfig
    from vlaccel.techniques.token_prune import TokenPruneConfig

    for name, value in (("layer_fraction", layer_fraction), ("token_fraction", token_fraction)):
        if not 0 < value <= 1:
            raise ValueError(f"efficientvla_configs: {name} must be in (0, 1] (the share of layers/tokens kept), "
                             f"got {value!r}")
    if not 0 <= mlp_ratio < 1:
        raise ValueError(f"efficientvla_configs: mlp_ratio must be in [0, 1) (the share of MLP channels pruned), "
                         f"got {mlp_ratio!r}")
    n_layers, n_visual = _sizes(target if target is not None else ReferenceVLAConfig.default())
    configs: list[TechniqueConfig] = []
    if layers:
        n_layers = max(1, _half_up(n_layers * layer_fraction))
        configs.append(LayerPruneConfig(keep_layers=n_layers, mlp_prune_ratio=mlp_ratio))
    if tokens:  # score at layer 2 (paper), or the last layer that still has a later one on very shallow LMs
        keep = max(TokenPruneConfig(keep_tokens=n_visual).min_keep(), _half_up(n_visual * token_fraction))
        configs.append(TokenPruneConfig(keep_tokens=keep, layer=max(0, min(2, n_layers - 2)), method=token_method))
    if cache:
        configs.append(HeadCacheConfig(interval=CACHE_INTERVAL))
    return configs


@presets.register("efficientvla", "EfficientVLA: 69% of LM layers (+25% MLP channels), 22% of visual tokens, DiT cache every 5 steps")
def _efficientvla() -> list[TechniqueConfig]:
    return efficientvla_configs()


@presets.register("efficientvla-keep-layers", "EfficientVLA without layer pruning: 44% of visual tokens, DiT cache "
                  "every 5 steps (no success loss on the bundled policy, where any layer pruning costs window-open)")
def _keep_layers() -> list[TechniqueConfig]:
    return efficientvla_configs(layers=False, token_fraction=KEEP_LAYERS_TOKEN_FRACTION)


@presets.register("efficientvla-tokens", "EfficientVLA token selection only: keep 22% of visual tokens after layer 2")
def _tokens() -> list[TechniqueConfig]:
    return efficientvla_configs(layers=False, cache=False)


@presets.register("efficientvla-layers", "EfficientVLA layer pruning only: keep 69% of LM layers, prune 25% MLP channels")
def _layers() -> list[TechniqueConfig]:
    return efficientvla_configs(tokens=False, cache=False)


@presets.register("head-cache", "EfficientVLA DiT feature cache: attention/MLP recomputed every 5th denoising step")
def _head_cache() -> list[TechniqueConfig]:
    return efficientvla_configs(layers=False, tokens=False)


@presets.register("fastv", "FastV baseline: keep the 22% of visual tokens the cognition token attends to most")
def _fastv() -> list[TechniqueConfig]:
    return efficientvla_configs(layers=False, cache=False, token_method="fastv")


@presets.register("random-tokens", "baseline: keep a random 22% of visual tokens after layer 2")
def _random() -> list[TechniqueConfig]:
    return efficientvla_configs(layers=False, cache=False, token_method="random")

