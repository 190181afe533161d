"""``vlaccel.apply`` / ``vlaccel.applied`` / :class:`Handle`: composable, removable transformations.

``apply(policy, *configs)`` validates every config against the model first (nothing is changed if any
is invalid), then applies them in each technique's ``order``. If an apply step itself fails, the steps
already done are undone, so a model is never left half-transformed. ``Handle.remove()`` undoes in
reverse order and leaves the model bit-identical to before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from vlaccel.adapters import get_adapter
from vlaccel.config import TechniqueConfig, handler_for

__all__ = ["apply", "applied", "Handle", "applied_configs"]

_STATE_ATTR = "_vlaccel_applied"


class Handle:
    """The applied state of one ``apply`` call."""

    def __init__(self, model: Any, entries: list[tuple[TechniqueConfig, Any]]):
        self.model = model
        self._entries = entries
        self.removed = False

    @property
    def configs(self) -> list[TechniqueConfig]:
        return [cfg for cfg, _ in self._entries]

    def reset(self) -> None:
        """Clear per-episode state of every applied technique (called by the policy's ``reset``)."""
        for _, state in self._entries:
            reset = getattr(state, "reset", None)
            if reset is not None:
                reset()

    def remove(self) -> None:
        if self.removed:
            raise RuntimeError("this handle was already removed")
        registry = getattr(self.model, _STATE_ATTR)
        for cfg, state in reversed(self._entries):
            state.remove()
            registry.pop(type(cfg), None)
        self.removed = True

    def __repr__(self) -> str:
        names = ", ".join(type(c).__name__ for c in self.configs)
        return f"Handle([{names}], removed={self.removed})"


def applied_configs(model: Any) -> list[TechniqueConfig]:
    """Configs currently applied to ``model`` (in application order)."""
    return [cfg for cfg, _ in getattr(model, _STATE_ATTR, {}).values()]


def apply(model: Any, *configs: TechniqueConfig) -> Handle:
    """Apply technique configs to ``model`` in place and return a :class:`Handle` to undo them."""
    if not configs:
        raise ValueError("apply() needs at least one config, e.g. vlaccel.apply(policy, HeadCacheConfig(interval=5))")
    for cfg in configs:
        if not isinstance(cfg, TechniqueConfig):
            raise TypeError(f"expected technique configs, got {type(cfg).__name__}: {cfg!r}")
    registry: dict[type, tuple[TechniqueConfig, Any]] = model.__dict__.setdefault(_STATE_ATTR, {})
    seen: set[type] = set()
    for cfg in configs:
        if type(cfg) in registry or type(cfg) in seen:
            raise RuntimeError(
                f"{type(cfg).__name__} is already applied to this model; call handle.remove() first "
                "(each technique can be applied once)"
            )
        seen.add(type(cfg))
    adapter = get_adapter(model)
    ordered = sorted(configs, key=lambda c: type(c).order)
    handlers = [(cfg, handler_for(cfg)) for cfg in ordered]
    # Validation that only depends on the unmodified model happens up front for every config.
    for cfg, handler in handlers:
        handler.validate(model, cfg, adapter)
    entries: list[tuple[TechniqueConfig, Any]] = []
    try:
        for cfg, handler in handlers:
            state = handler.apply(model, cfg, adapter)
            entries.append((cfg, state))
            registry[type(cfg)] = (cfg, state)
    except BaseException:
        for cfg, state in reversed(entries):
            state.remove()
            registry.pop(type(cfg), None)
        raise
    handle = Handle(model, entries)
    return handle


@contextlib.contextmanager
def applied(model: Any, *configs: TechniqueConfig) -> Iterator[Handle]:
    """Context-manager form: the model is restored on exit, even on error."""
    handle = apply(model, *configs)
    try:
        yield handle
    finally:
        if not handle.removed:
            handle.remove()
