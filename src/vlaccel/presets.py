"""Named acceleration presets: ``vlaccel.presets.get("efficientvla") -> list[TechniqueConfig]``.

A preset is a function of nothing returning fresh configs; techniques add theirs with :func:`register`.
"none" is the baseline (no technique).
"""

from __future__ import annotations

from collections.abc import Callable

from vlaccel.config import TechniqueConfig

_PRESETS: dict[str, tuple[Callable[[], list[TechniqueConfig]], str]] = {}


def register(name: str, description: str):
    def decorate(fn: Callable[[], list[TechniqueConfig]]):
        if name in _PRESETS:
            raise RuntimeError(f"preset {name!r} already registered")
        _PRESETS[name] = (fn, description)
        return fn

    return decorate


def get(name: str) -> list[TechniqueConfig]:
    _load()
    if name not in _PRESETS:
        raise KeyError(f"unknown preset {name!r}; available: {', '.join(names())}")
    return _PRESETS[name][0]()


def names() -> list[str]:
    _load()
    return list(_PRESETS)


def describe() -> dict[str, str]:
    _load()
    return {name: desc for name, (_, desc) in _PRESETS.items()}


@register("none", "baseline: no transformation")
def _none() -> list[TechniqueConfig]:
    return []


@register("ddim5", "action head with 5 instead of 10 DDIM steps (simple baseline for head caching)")
def _ddim5() -> list[TechniqueConfig]:
    from vlaccel.techniques import DenoiseStepsConfig

    return [DenoiseStepsConfig(steps=5)]


def _load() -> None:
    import vlaccel.techniques  # noqa: F401  (techniques register their presets on import)
