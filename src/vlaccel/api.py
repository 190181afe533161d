"""``vlaccel.apply`` / ``vlaccel.applied`` / :class:`Handle`: composable, removable transformations.

``apply(policy, *configs)`` validates every config against the model first (nothing is changed if any
is invalid), then applies them in each technique's ``order``. If an apply step itself fails, the steps
already done are undone, so a model is never left half-transformed. ``Handle.remove()`` undoes in
reverse order and leaves the model bit-identical to before; handles are removed in the reverse order of their
``apply`` calls (a later one first), else ``remove`` refuses. ``apply`` also measures which state-dict entries
each technique changed (:func:`applied_changes`), so that saving writes the plain weights or refuses. Applying or removing ends a running history
episode (the next ``step`` asks for a ``reset``): its cache was built by the techniques of before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import PurePath
from typing import Any

from vlaccel.adapters.base import CAPABILITY_NAMES, get_adapter
from vlaccel.config import TechniqueConfig, handler_for
from vlaccel.errors import UsageError, WrongStateError, WrongTypeError

__all__ = ["apply", "applied", "Handle", "applied_configs", "applied_changes", "handle_for", "resolve_configs"]

_STATE_ATTR = "_vlaccel_applied"
_CHANGES_ATTR = "_vlaccel_state_changes"  # technique type -> what its apply changed in the state dict


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
            raise WrongStateError("this handle was already removed; its techniques are undone (apply them again for a "
                                  "new handle)")
        registry = self.model.__dict__.get(_STATE_ATTR, {})
        stale = [type(c).__name__ for c, s in self._entries if registry.get(type(c), (None, None))[1] is not s]
        if stale:
            raise WrongStateError(f"{', '.join(stale)} of this handle were already removed through another handle "
                                  "(vlaccel.handle_for)")
        mine = {type(c) for c, _ in self._entries}
        order = list(registry)
        later = [t.__name__ for t in order[min(order.index(t) for t in mine):] if t not in mine]
        if later:
            raise WrongStateError(f"{', '.join(later)} was applied after this handle's techniques and is still "
                                  "applied: remove handles in the reverse order of apply (that handle first), or undo "
                                  "everything with vlaccel.handle_for(model).remove()")
        get_adapter(self.model).end_episode(self.model, "the episode ended when vlaccel techniques were removed")
        for cfg, state in reversed(self._entries):
            state.remove()
            _forget(self.model, type(cfg))
        self.removed = True

    def __repr__(self) -> str:
        names = ", ".join(type(c).__name__ for c in self.configs)
        return f"Handle([{names}], removed={self.removed})"


def applied_configs(model: Any) -> list[TechniqueConfig]:
    """Configs currently applied to ``model`` (in application order)."""
    return [cfg for cfg, _ in getattr(model, _STATE_ATTR, {}).values()]


def applied_changes(model: Any) -> list[tuple[TechniqueConfig, Any, dict[str, tuple | None]]]:
    """``(config, applied state, changed)`` per technique applied to ``model``, in application order.

    ``changed`` is what that technique's apply changed in the model's state dict, measured by ``apply`` (not
    declared by the technique): each entry whose tensor was replaced, re-cast, reshaped, edited in place, added
    or removed, mapped to its ``(shape, dtype)`` before (``None``: the entry did not exist before). Saving
    uses it to write the plain weights or refuse (``vlaccel.save_policy``).
    """
    changes = model.__dict__.get(_CHANGES_ATTR, {})
    return [(cfg, state, changes.get(kind, {})) for kind, (cfg, state) in getattr(model, _STATE_ATTR, {}).items()]


def _tensor_table(model: Any) -> dict[str, tuple] | None:
    """Each state-dict entry's identity, storage, in-place version, shape and dtype (``None``: not a torch module)."""
    state_dict = getattr(model, "state_dict", None)
    if not callable(state_dict):
        return None
    table = {}
    for name, t in state_dict(keep_vars=True).items():
        try:
            storage = t.data_ptr()
        except Exception:  # noqa: BLE001 - tensor subclasses (quantized weights) without one storage
            storage = None
        table[name] = (id(t), type(t), storage, getattr(t, "_version", None), tuple(t.shape), t.dtype)
    return table


def _changed(before: dict[str, tuple] | None, after: dict[str, tuple] | None) -> dict[str, tuple | None]:
    """The entries that differ between two :func:`_tensor_table` s, each with its ``(shape, dtype)`` before."""
    if before is None or after is None:
        return {}
    names = sorted(set(before) | set(after))
    return {n: (before[n][4], before[n][5]) if n in before else None for n in names if before.get(n) != after.get(n)}


def _forget(model: Any, kind: type) -> None:
    """Drop what vlaccel keeps on ``model`` for the technique ``kind`` (after its ``remove``)."""
    for attr in (_STATE_ATTR, _CHANGES_ATTR):
        table = model.__dict__.get(attr)
        if table is not None:
            table.pop(kind, None)
            if not table:  # nothing of vlaccel's is left on the model
                del model.__dict__[attr]


def handle_for(model: Any) -> Handle:
    """A :class:`Handle` over every technique applied to ``model``, e.g. a ``copy.deepcopy`` of a transformed
    policy, which carries its own copy of the applied state (hooks, caches and wrappers follow the copy)."""
    registry = model.__dict__.get(_STATE_ATTR)
    if not registry:
        raise WrongStateError(f"no vlaccel technique is applied to this {type(model).__name__}")
    return Handle(model, list(registry.values()))


def apply(model: Any, *configs: TechniqueConfig) -> Handle:
    """Apply technique configs to ``model`` in place and return a :class:`Handle` to undo them.

    In order: each config is resolved against the model (sizes given as fractions or frames become absolute);
    what each technique declares on its class is checked once (the adapter offers what it ``requires``, no
    ``conflicts`` with what is applied or applied with it, ``apply_before`` respected); every handler
    validates (nothing changes if any fails); then the handlers apply in ``order``, rolled back if one fails.
    The handle and :func:`applied_configs` hold the resolved configs.
    """
    if isinstance(model, (str, PurePath)):
        raise WrongTypeError(f"vlaccel.apply takes the loaded model, got the {type(model).__name__} {str(model)!r}; "
                             f"load it first: policy = vlaccel.load_policy({str(model)!r})")
    if not configs:
        raise UsageError("apply() needs at least one config, e.g. vlaccel.apply(policy, HeadCacheConfig(interval=5)) "
                         "or vlaccel.apply(policy, *vlaccel.presets.get('efficientvla'))")
    for cfg in configs:
        if not isinstance(cfg, TechniqueConfig):
            raise WrongTypeError(f"expected technique configs, got {type(cfg).__name__}: {_short_repr(cfg)}; "
                                 f"{_config_hint(cfg)}")
    adapter = get_adapter(model)  # an unsupported model is refused here, before anything is looked up on it
    registry: dict[type, tuple[TechniqueConfig, Any]] = model.__dict__.get(_STATE_ATTR, {})
    seen: set[type] = set()
    for cfg in configs:
        if type(cfg) in seen:
            raise WrongStateError(f"{type(cfg).__name__} is given twice in this apply call; pass one (each technique "
                                  "can be applied once)")
        if type(cfg) in registry:
            raise WrongStateError(
                f"{type(cfg).__name__} is already applied to this model; call handle.remove() first "
                "(each technique can be applied once)"
            )
        seen.add(type(cfg))
    already = [cfg for cfg, _ in registry.values()]
    ordered = _resolve(model, adapter, configs)
    check_compatibility(ordered, already)
    handlers = [(cfg, handler_for(cfg)) for cfg in ordered]
    prepared = [handler.validate(model, cfg, adapter, tuple(ordered[:i])) for i, (cfg, handler) in enumerate(handlers)]
    registry = model.__dict__.setdefault(_STATE_ATTR, {})
    entries: list[tuple[TechniqueConfig, Any]] = []
    try:
        for (cfg, handler), ready in zip(handlers, prepared):
            before = _tensor_table(model)
            state = handler.apply(model, cfg, adapter, ready)
            entries.append((cfg, state))
            registry[type(cfg)] = (cfg, state)
            model.__dict__.setdefault(_CHANGES_ATTR, {})[type(cfg)] = _changed(before, _tensor_table(model))
    except BaseException:
        for cfg, state in reversed(entries):
            state.remove()
            _forget(model, type(cfg))
        if not registry:
            model.__dict__.pop(_STATE_ATTR, None)
        raise
    adapter.end_episode(model, "the episode ended when vlaccel techniques were applied")
    return Handle(model, entries)


def _short_repr(value: Any, limit: int = 80) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _config_hint(value: Any) -> str:
    """How to turn ``value`` (not a technique config) into the configs ``apply`` takes."""
    if isinstance(value, str):
        return f"a preset name goes through vlaccel.presets: vlaccel.apply(policy, *vlaccel.presets.get({value!r}))"
    if isinstance(value, (list, tuple)):
        return "unpack the list: vlaccel.apply(policy, *configs)"
    if isinstance(value, dict):
        return "rebuild a config's dict with vlaccel.config_from_dict(d)"
    if isinstance(value, type) and issubclass(value, TechniqueConfig):
        return f"pass an instance: {value.__name__}(...)"
    return "pass instances of the technique configs (vlaccel.techniques), e.g. HeadCacheConfig(interval=5)"


def resolve_configs(model: Any, *configs: TechniqueConfig) -> list[TechniqueConfig]:
    """``configs`` resolved against ``model`` as :func:`apply` would resolve them (in application order), without
    applying anything."""
    return _resolve(model, get_adapter(model), configs)


def _resolve(model: Any, adapter: Any, configs: Sequence[TechniqueConfig]) -> list[TechniqueConfig]:
    ordered: list[TechniqueConfig] = []
    for cfg in sorted(configs, key=lambda c: type(c).order):
        check_requirements(cfg, model, adapter)
        ordered.append(cfg.resolve(model, adapter, tuple(ordered)))
    return ordered


def missing_capabilities(cfg: TechniqueConfig, model: Any, adapter: Any) -> list[str]:
    """What ``cfg`` requires that ``model``'s adapter does not offer, each as errors say it."""
    offered = adapter.capabilities(model)
    return [CAPABILITY_NAMES.get(c, c) for c in cfg.required_capabilities() if c not in offered]


def check_requirements(cfg: TechniqueConfig, model: Any, adapter: Any) -> None:
    """Raise ``ValueError`` if ``model``'s adapter lacks a capability ``cfg``'s technique requires."""
    missing = missing_capabilities(cfg, model, adapter)
    if missing:
        raise ValueError(
            f"{type(cfg).__name__} needs {' and '.join(missing)}, which "
            f"{type(model).__name__} does not have (its adapter {type(adapter).__name__} offers: "
            f"{', '.join(sorted(adapter.capabilities(model))) or 'nothing'}). Leave it out; "
            "vlaccel.presets.get(name, model) leaves out what a model cannot take.")


def check_compatibility(new: list[TechniqueConfig], already: list[TechniqueConfig]) -> None:
    """Raise if two techniques declare a conflict, or one declared ``apply_before`` a technique already applied."""
    names = {c.technique_name(): c for c in [*already, *new]}
    for cfg in new:
        for other, why in type(cfg).conflicts.items():
            if other in names and names[other] is not cfg:
                raise ValueError(f"{type(cfg).__name__} cannot be combined with {type(names[other]).__name__}: "
                                 f"{why}. Remove one of them.")
        for applied in already:
            why = type(applied).conflicts.get(cfg.technique_name())
            if why is not None:
                raise ValueError(f"{type(cfg).__name__} cannot be added to a model with {type(applied).__name__} "
                                 f"applied: {why}. Remove one of them.")
            why = type(cfg).apply_before.get(applied.technique_name())
            if why is not None:
                raise RuntimeError(f"apply {type(cfg).__name__} before {type(applied).__name__} (or in the same "
                                   f"vlaccel.apply call): {why}")


@contextlib.contextmanager
def applied(model: Any, *configs: TechniqueConfig) -> Iterator[Handle]:
    """Context-manager form: the model is restored on exit, even on error."""
    handle = apply(model, *configs)
    try:
        yield handle
    finally:
        if not handle.removed:
            handle.remove()
