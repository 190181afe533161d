"""Technique configs: a frozen-dataclass base with validation, (de)serialisation and a handler registry.

Every technique is a frozen dataclass subclass of :class:`TechniqueConfig` (validated in ``__post_init__``,
errors say how to fix the value) plus exactly one :class:`Handler` registered for that config type with
:func:`register_handler`. :func:`vlaccel.apply` looks handlers up by config type, so there is no
isinstance ladder anywhere and a new technique is one new module.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol

__all__ = [
    "TechniqueConfig",
    "Handler",
    "Removable",
    "register_handler",
    "handler_for",
    "registered_configs",
    "config_from_dict",
]


class TechniqueConfig:
    """Base of all technique configs. Subclasses are ``@dataclasses.dataclass(frozen=True)``.

    Class attributes a subclass may set:
      ``name``: stable identifier used in JSON and on the CLI (defaults to the class name).
      ``order``: application order when several configs are applied together; lower goes first.
        Structural surgery (layer/MLP pruning) runs before hooks that index layers (token pruning),
        caches go last.
    """

    name: ClassVar[str] = ""
    order: ClassVar[int] = 50

    def to_dict(self) -> dict[str, Any]:
        return {"technique": self.technique_name(), **dataclasses.asdict(self)}

    @classmethod
    def technique_name(cls) -> str:
        return cls.name or cls.__name__

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TechniqueConfig:
        data = dict(data)
        tag = data.pop("technique", cls.technique_name())
        if tag != cls.technique_name():
            raise ValueError(f"dict describes technique {tag!r}, not {cls.technique_name()!r}")
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{cls.__name__} has no field(s) {unknown}; valid fields: {sorted(known)}")
        return cls(**data)

    def is_neutral(self, model: Any) -> bool:  # noqa: ARG002 - part of the contract
        """True when applying this config to ``model`` cannot change any output (used by tests and reports)."""
        return False

    def weight_files(self) -> list[str]:
        """Files besides the config whose contents decide what the technique does (e.g. a trained gate).

        Results files record a digest of them, so that a resumed evaluation never mixes episodes of two
        different gates under one preset name.
        """
        return []


class Removable(Protocol):
    """What a handler returns: the applied state, able to undo itself exactly."""

    def remove(self) -> None: ...


class Handler(Protocol):
    """A technique's implementation, registered for one config type.

    ``validate`` must raise before anything is changed (bad config for this model, no adapter, ...);
    ``apply`` then performs the change and returns an object whose ``remove()`` restores the model
    exactly and whose optional ``reset()`` clears per-episode state.
    """

    def validate(self, model: Any, config: Any, adapter: Any) -> None: ...

    def apply(self, model: Any, config: Any, adapter: Any) -> Removable: ...


_HANDLERS: dict[type, Handler] = {}


def register_handler(config_type: type[TechniqueConfig]):
    """Class decorator: ``@register_handler(MyConfig) class MyHandler: ...`` registers an instance."""

    def decorate(handler_cls):
        if config_type in _HANDLERS:
            raise RuntimeError(f"a handler for {config_type.__name__} is already registered")
        _HANDLERS[config_type] = handler_cls()
        return handler_cls

    return decorate


def handler_for(config: TechniqueConfig) -> Handler:
    _import_builtin_techniques()
    try:
        return _HANDLERS[type(config)]
    except KeyError:
        known = ", ".join(sorted(c.__name__ for c in _HANDLERS))
        raise TypeError(
            f"no technique is registered for {type(config).__name__}; registered configs: {known}. "
            "Register one with @vlaccel.config.register_handler(YourConfig)."
        ) from None


def registered_configs() -> dict[str, type[TechniqueConfig]]:
    _import_builtin_techniques()
    return {c.technique_name(): c for c in _HANDLERS}


def config_from_dict(data: dict[str, Any]) -> TechniqueConfig:
    """Rebuild any registered config from its ``to_dict()`` output."""
    configs = registered_configs()
    tag = data.get("technique")
    if tag not in configs:
        raise ValueError(f"unknown technique {tag!r}; known: {sorted(configs)}")
    return configs[tag].from_dict(data)


def _import_builtin_techniques() -> None:
    # Registering is a side effect of importing the technique modules; done lazily, on first use,
    # so `import vlaccel` stays cheap and changes nothing.
    import vlaccel.techniques  # noqa: F401
