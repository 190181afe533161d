"""Technique configs: a frozen-dataclass base with validation, (de)serialisation and the technique registry.

Every technique is a frozen dataclass subclass of :class:`TechniqueConfig` (validated in ``__post_init__``,
errors say how to fix the value) whose ``handler`` class attribute names its :class:`Handler` as a
``"module:Class"`` path. :func:`vlaccel.apply` looks the handler up from the config's type, so there is no
isinstance ladder anywhere and a new technique is one new module, plus one line in :data:`TECHNIQUES` (or an
entry point of the group ``vlaccel.techniques`` for a third-party package; :mod:`vlaccel.registry`).

What ``apply`` checks once for every technique is declared on the config class: ``order``, ``requires``
(capabilities the model's adapter must offer), ``conflicts`` and ``apply_before`` (other techniques, by
name, with the reason).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol

from vlaccel.errors import UnknownNameError, UsageError, VlaccelError, WrongTypeError
from vlaccel.registry import Registry, load

__all__ = [
    "TechniqueConfig",
    "Handler",
    "Removable",
    "TECHNIQUES",
    "register_handler",
    "handler_for",
    "registered_configs",
    "config_from_dict",
]

#: technique name -> its config class, for :func:`config_from_dict` and the CLI
TECHNIQUES = Registry("technique", "vlaccel.techniques", {
    "layer_prune": "vlaccel.techniques.layer_prune:LayerPruneConfig",
    "token_prune": "vlaccel.techniques.token_prune:TokenPruneConfig",
    "head_cache": "vlaccel.techniques.head_cache:HeadCacheConfig",
    "denoise_steps": "vlaccel.techniques.denoise_steps:DenoiseStepsConfig",
    "kv_efficient": "vlaccel.techniques.kv_efficient.config:KVEfficientConfig",
    "precision": "vlaccel.techniques.precision:PrecisionConfig",
    "compile": "vlaccel.techniques.compile:CompileConfig",
    "cross_kv_reuse": "vlaccel.techniques.cross_kv_reuse:CrossKVReuseConfig",
    "quantize": "vlaccel.techniques.quantize:QuantizeConfig",
})


class TechniqueConfig:
    """Base of all technique configs. Subclasses are ``@dataclasses.dataclass(frozen=True)``.

    Class attributes a subclass sets:
      ``name``: stable identifier used in JSON, on the CLI and in other techniques' declarations (defaults to
        the class name).
      ``handler``: ``"module:HandlerClass"`` (or the class itself) implementing the technique.
      ``order``: application order when several configs are applied together; lower goes first.
        Structural surgery (layer/MLP pruning) runs before hooks that index layers (token pruning),
        caches go last.
      ``requires``: capabilities the model's adapter must offer (``ModelAdapter.capabilities``), e.g.
        ``("action_head",)``; a model without one gets a clear error, and a preset leaves the technique out.
      ``conflicts``: ``{technique name: reason}``: never on one model together (checked both ways).
      ``apply_before``: ``{technique name: reason}``: this technique must be applied before those (or in the same
        ``apply`` call); applying it to a model that already has one of them is refused.
      ``history_only``: acts only in history mode (``reset``/``step``), not on single ``predict_action`` calls.
    """

    name: ClassVar[str] = ""
    handler: ClassVar[Any] = None
    order: ClassVar[int] = 50
    requires: ClassVar[tuple[str, ...]] = ()
    conflicts: ClassVar[dict[str, str]] = {}
    apply_before: ClassVar[dict[str, str]] = {}
    history_only: ClassVar[bool] = False
    # True when applying changes the model's state dict (removes or reshapes parameters): saving the policy is
    # then refused until the technique is removed
    changes_state_dict: ClassVar[bool] = False

    def to_dict(self) -> dict[str, Any]:
        return {"technique": self.technique_name(), **dataclasses.asdict(self)}

    @classmethod
    def technique_name(cls) -> str:
        return cls.name or cls.__name__

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TechniqueConfig:
        """The config ``to_dict()`` gave; refuses (``UsageError``) another technique's dict, an unknown field or a
        value the config's own checks refuse."""
        if not isinstance(data, dict):
            raise WrongTypeError(f"{cls.__name__}.from_dict takes a dict of its fields (as to_dict() gives), got "
                                 f"{type(data).__name__}")
        data = dict(data)
        tag = data.pop("technique", cls.technique_name())
        if tag != cls.technique_name():
            raise UsageError(f"dict describes technique {tag!r}, not {cls.technique_name()!r}; rebuild it with "
                             "vlaccel.config_from_dict, which picks the config class from 'technique'")
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"{cls.__name__} has no field(s) {unknown}; valid fields: {sorted(known)}")
        try:
            return cls(**data)
        except (ValueError, TypeError) as err:  # the config's checks: the same message, as a UsageError
            if isinstance(err, VlaccelError):
                raise
            raise UsageError(f"{err}") from None

    def resolve(self, model: Any, adapter: Any, pending: tuple[TechniqueConfig, ...] = ()) -> TechniqueConfig:
        """This config with sizes stated relative to the model (fractions, frames) turned into absolute ones.

        ``pending``: the configs (already resolved) that this ``apply`` call applies before this one; the model
        does not reflect them yet. The default has nothing relative and returns ``self``.
        """
        return self

    def required_capabilities(self) -> tuple[str, ...]:
        """What this config needs from the model's adapter: the class's ``requires``, plus what its settings add."""
        return type(self).requires

    def layers_after(self, layers: int) -> int:
        """Decoder layers the model has once this config is applied to a model with ``layers`` of them."""
        return layers

    def is_neutral(self, model: Any, adapter: Any) -> bool:  # noqa: ARG002 - part of the contract
        """True when applying this (resolved) config to ``model`` cannot change any output (used by tests and
        reports)."""
        return False

    def weight_files(self, model: Any = None) -> list[str]:
        """Files besides the config whose contents decide what the technique does on ``model`` (e.g. a trained
        gate; ``model=None``: what it would load without knowing the model).

        Results files record a digest of them, so that a resumed evaluation never mixes episodes of two
        different gates under one preset name.
        """
        return []


class Removable(Protocol):
    """What a handler returns: the applied state, able to undo itself exactly."""

    def remove(self) -> None: ...


class Handler(Protocol):
    """A technique's implementation, named by its config class's ``handler`` attribute.

    ``validate`` must raise before anything is changed (bad config for this model, ...) and has no side
    effects; what it prepared (e.g. a loaded gate) it returns, and ``apply`` receives it as ``prepared``.
    ``pending`` are the configs this ``apply`` call applies before this one (the model does not reflect them
    yet when ``validate`` runs; it does when ``apply`` runs). ``apply`` performs the change and returns an
    object whose ``remove()`` restores the model exactly and whose optional ``reset()`` clears per-episode state.
    """

    def validate(self, model: Any, config: Any, adapter: Any, pending: tuple[TechniqueConfig, ...]) -> Any: ...

    def apply(self, model: Any, config: Any, adapter: Any, prepared: Any) -> Removable: ...


_HANDLERS: dict[type, Handler] = {}  # one instance per config type, made on first use


def register_handler(config_type: type[TechniqueConfig]):
    """Class decorator for a technique defined at run time: ``@register_handler(MyConfig) class MyHandler``
    registers ``MyConfig`` under its ``name`` and ``MyHandler`` as its implementation. (A packaged technique
    sets ``handler = "module:Class"`` on its config and declares an entry point instead; :mod:`vlaccel.registry`.)
    """

    def decorate(handler_cls):
        if config_type in _HANDLERS:
            raise RuntimeError(f"a handler for {config_type.__name__} is already registered")
        TECHNIQUES.register(config_type.technique_name(), config_type)
        _HANDLERS[config_type] = handler_cls()
        return handler_cls

    return decorate


def handler_for(config: TechniqueConfig) -> Handler:
    config_type = type(config)
    if config_type not in _HANDLERS:
        spec = config_type.handler
        if spec is None:
            raise WrongTypeError(
                f"{config_type.__name__} names no handler; set its class attribute handler = 'module:HandlerClass' "
                "or register one with @vlaccel.config.register_handler(YourConfig)")
        _HANDLERS[config_type] = (load(spec) if isinstance(spec, str) else spec)()
    return _HANDLERS[config_type]


def registered_configs() -> dict[str, type[TechniqueConfig]]:
    return dict(TECHNIQUES.items())


def config_from_dict(data: dict[str, Any]) -> TechniqueConfig:
    """Rebuild any registered config from its ``to_dict()`` output; bad input raises ``UsageError`` (a
    ``ValueError``) naming the technique or field."""
    if not isinstance(data, dict):
        raise WrongTypeError(f"config_from_dict takes a dict like a config's to_dict() gives (with its 'technique'), "
                             f"got {type(data).__name__}")
    tag = data.get("technique")
    if not isinstance(tag, str) or tag not in TECHNIQUES:
        raise UnknownNameError(f"unknown technique {tag!r}; known: {TECHNIQUES.names()} (a config's dict names its "
                               "technique under 'technique', as to_dict() writes it)")
    return TECHNIQUES.get(tag).from_dict(data)
