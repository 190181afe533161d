"""Named acceleration presets, stated relative to the model and resolved against it.

    vlaccel.presets.get("efficientvla")          # configs in fractions / frames: apply() resolves them
    vlaccel.presets.get("efficientvla", model)   # resolved for this model; parts it cannot take left out
    vlaccel.presets.resolve("efficientvla", model).description()   # what that is, in one line

A preset states what the method keeps as shares of the model (the paper's 22 of 32 layers, 56 of 256 visual
tokens; KV windows in observations), so it means the same on an 8-layer reference policy and on an 18-layer
PaliGemma with 256 image tokens. Resolving it against a model (:func:`resolve`) turns the shares into sizes
and leaves out a technique the model cannot take (the head cache on a VLM without a diffusion head), saying
so in the resolution and once as a warning; ``vlaccel presets`` prints the table for a policy.

Presets are data: :data:`PRESETS` maps names to ``"module:function"`` paths (plus entry points of the group
``vlaccel.presets`` and :func:`register` at run time, :mod:`vlaccel.registry`); a preset function takes no
arguments, returns fresh configs, and carries its one-line description (:func:`describe_as`). The general
presets are defined here; a method's family of presets has its own module (:mod:`.efficientvla`,
:mod:`.kv_efficient`), loaded when one of its presets is first asked for.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

from vlaccel.config import TechniqueConfig
from vlaccel.registry import Registry

__all__ = ["PRESETS", "Resolution", "get", "resolve", "names", "describe", "register", "describe_as", "short"]

_EVLA = "vlaccel.presets.efficientvla"
_KV = "vlaccel.presets.kv_efficient"
PRESETS = Registry("preset", "vlaccel.presets", {
    "none": "vlaccel.presets:baseline",
    "ddim5": "vlaccel.presets:ddim5",
    "bf16": "vlaccel.presets:bf16",
    "compile": "vlaccel.presets:compiled",
    "cross-kv": "vlaccel.presets:cross_kv",
    "fast": "vlaccel.presets:fast",
    "efficientvla": f"{_EVLA}:efficientvla",
    "efficientvla-keep-layers": f"{_EVLA}:efficientvla_keep_layers",
    "efficientvla-tokens": f"{_EVLA}:efficientvla_tokens",
    "efficientvla-layers": f"{_EVLA}:efficientvla_layers",
    "head-cache": f"{_EVLA}:head_cache",
    "fastv": f"{_EVLA}:fastv",
    "random-tokens": f"{_EVLA}:random_tokens",
    "kv-efficient": f"{_KV}:kv_efficient",
    "kv-streaming": f"{_KV}:kv_streaming",
    "kv-mean": f"{_KV}:kv_mean",
    "kv-random": f"{_KV}:kv_random",
    "kv-h2o": f"{_KV}:kv_h2o",
    "kv-window": f"{_KV}:kv_window",
})

_WARNED: set[tuple[str, str, str]] = set()  # (preset, model class, technique) already warned about


def describe_as(description: str) -> Callable[[Callable[[], list[TechniqueConfig]]], Callable[[], list[TechniqueConfig]]]:
    """Decorator giving a preset function its one-line description."""

    def decorate(fn):
        fn.description = description
        return fn

    return decorate


def register(name: str, description: str):
    """Decorator adding a preset at run time: ``@register("mine", "what it does") def mine(): return [...]``."""

    def decorate(fn: Callable[[], list[TechniqueConfig]]):
        PRESETS.register(name, describe_as(description)(fn))
        return fn

    return decorate


@dataclasses.dataclass(frozen=True)
class Resolution:
    """A preset resolved against one model: the configs to apply, and what was left out and why."""

    name: str
    model: str
    configs: list[TechniqueConfig]
    left_out: list[tuple[TechniqueConfig, str]]

    def description(self) -> str:
        applied = ", ".join(short(c) for c in self.configs) or "nothing (the baseline)"
        out = "".join(f"; left out {type(c).__name__}: {why}" for c, why in self.left_out)
        return f"{self.name} on {self.model}: {applied}{out}"


def get(name: str, model: Any = None) -> list[TechniqueConfig]:
    """The preset's configs: as stated (shares, resolved by ``apply``) or, given ``model``, resolved for it."""
    if model is not None:
        return resolve(name, model).configs
    return list(PRESETS.get(name)())


def resolve(name: str, model: Any, warn: bool = True) -> Resolution:
    """Resolve preset ``name`` against ``model``: sizes from its adapter, parts it cannot take left out (warned
    once per preset, model class and technique; ``warn=False`` for callers that show ``left_out`` themselves)."""
    from vlaccel.adapters.base import get_adapter
    from vlaccel.api import missing_capabilities

    adapter = get_adapter(model)
    configs: list[TechniqueConfig] = []
    left_out: list[tuple[TechniqueConfig, str]] = []
    for cfg in sorted(get(name), key=lambda c: type(c).order):
        missing = missing_capabilities(cfg, model, adapter)
        if missing:
            left_out.append((cfg, f"{type(model).__name__} lacks {' and '.join(missing)}"))
            continue
        configs.append(cfg.resolve(model, adapter, tuple(configs)))
    resolution = Resolution(name, type(model).__name__, configs, left_out)
    for cfg, why in left_out if warn else ():
        key = (name, type(model).__name__, type(cfg).__name__)
        if key not in _WARNED:
            _WARNED.add(key)
            warnings.warn(f"preset {name!r} leaves out {type(cfg).__name__}: {why}", UserWarning, stacklevel=2)
    return resolution


def names() -> list[str]:
    return PRESETS.names()


def describe() -> dict[str, str]:
    out = {}
    for name, fn in PRESETS.items():
        if not isinstance(getattr(fn, "description", None), str):
            raise TypeError(f"preset {name!r} ({fn!r}) has no description; decorate it with "
                            "@vlaccel.presets.describe_as('...') or add it with vlaccel.presets.register(name, description)")
        out[name] = fn.description
    return out


def short(cfg: TechniqueConfig) -> str:
    """``Name(field=value, ...)`` with only the fields that differ from the defaults."""
    fields = [f for f in dataclasses.fields(cfg) if f.default is dataclasses.MISSING
              or getattr(cfg, f.name) != f.default]
    return f"{type(cfg).__name__}({', '.join(f'{f.name}={getattr(cfg, f.name)!r}' for f in fields)})"


@describe_as("baseline: no transformation")
def baseline() -> list[TechniqueConfig]:
    return []


@describe_as("action head with 5 instead of 10 DDIM steps (simple baseline for head caching)")
def ddim5() -> list[TechniqueConfig]:
    from vlaccel.techniques.denoise_steps import DenoiseStepsConfig

    return [DenoiseStepsConfig(steps=5)]


@describe_as("weights in bfloat16 (every part), float32 inputs cast at each part's boundary")
def bf16() -> list[TechniqueConfig]:
    from vlaccel.techniques.precision import PrecisionConfig

    return [PrecisionConfig(dtype="bfloat16")]


@describe_as("torch.compile (inductor) of every part; the first calls compile (tens of seconds on a CPU)")
def compiled() -> list[TechniqueConfig]:
    from vlaccel.techniques.compile import CompileConfig

    return [CompileConfig()]


@describe_as("the action expert's projections of the cached prefix computed once per chunk, not at every flow step "
             "(exact; SmolVLA's cross-attention layers)")
def cross_kv() -> list[TechniqueConfig]:
    from vlaccel.techniques.cross_kv_reuse import CrossKVReuseConfig

    return [CrossKVReuseConfig()]


#: the action head's DDIM steps in ``fast``, chosen on selection seeds 2000-2019 (docs/benchmarks.md): 3 kept
#: push and window-open at or above the baseline, 2 lost nearly every episode of both
FAST_DENOISE_STEPS = 3


@describe_as("bf16 where the device computes it natively (float32 elsewhere) + 3 DDIM steps + torch.compile; "
             "the first calls compile (tens of seconds on a CPU)")
def fast() -> list[TechniqueConfig]:
    from vlaccel.techniques.compile import CompileConfig
    from vlaccel.techniques.denoise_steps import DenoiseStepsConfig
    from vlaccel.techniques.precision import PrecisionConfig

    return [PrecisionConfig(dtype="auto"), DenoiseStepsConfig(steps=FAST_DENOISE_STEPS), CompileConfig()]
