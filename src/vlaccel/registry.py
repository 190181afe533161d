"""Registries as data: what vlaccel can find is a table of dotted paths, never an import side effect.

Three registries use this (techniques in :mod:`vlaccel.config`, adapters in :mod:`vlaccel.adapters.base`,
presets in :mod:`vlaccel.presets`). Each looks a name up, in this order, in

1. what was registered at run time (``register_handler``, ``register_adapter``, ``presets.register``),
2. the installed packages' entry points of its group (``vlaccel.techniques``, ``vlaccel.adapters``,
   ``vlaccel.presets``), so a third-party package adds a technique, an adapter or a preset by declaring, in
   its own ``pyproject.toml``::

       [project.entry-points."vlaccel.adapters"]
       my_vla = "my_package.vlaccel_adapter:MyVLAAdapter"

3. vlaccel's own table of ``"module:attribute"`` paths.

Nothing is imported until an entry is asked for, so ``import vlaccel`` stays cheap and this module imports
nothing of vlaccel's but :mod:`vlaccel.errors` (itself a leaf of the import graph).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from importlib import metadata
from typing import Any

from vlaccel.errors import UnknownNameError

__all__ = ["Registry", "load"]


def load(path: str) -> Any:
    """The object a ``"package.module:attribute"`` path names (the attribute may be dotted)."""
    module, sep, attribute = path.partition(":")
    if not sep or not module or not attribute:
        raise ValueError(f"{path!r} is not a 'package.module:attribute' path")
    obj: Any = importlib.import_module(module)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


class Registry:
    """Names -> objects, resolved lazily from run-time registrations, entry points and a built-in table."""

    def __init__(self, kind: str, group: str, builtin: dict[str, str]):
        self.kind, self.group = kind, group
        self._builtin = dict(builtin)
        self._runtime: dict[str, Any] = {}
        self._loaded: dict[str, Any] = {}
        self._discovered: dict[str, str] | None = None  # entry points, read once (refresh() reads them again)

    def register(self, name: str, obj: Any) -> None:
        """Add ``obj`` under ``name`` at run time; a name already registered at run time is an error."""
        if name in self._runtime:
            raise RuntimeError(f"a {self.kind} named {name!r} is already registered")
        self._runtime[name] = obj

    def unregister(self, name: str) -> None:
        """Take a run-time registration back (tests; a plugin being unloaded)."""
        self._runtime.pop(name)

    def refresh(self) -> None:
        """Read the entry points again (after installing a plugin package into the running process)."""
        self._discovered = None
        self._loaded.clear()

    def _entry_points(self) -> dict[str, str]:
        # scanning the installed distributions takes milliseconds, and adapters are looked up per episode
        if self._discovered is None:
            self._discovered = {ep.name: ep.value for ep in metadata.entry_points(group=self.group)}
        return self._discovered

    def names(self) -> list[str]:
        """Every name, in lookup order (run time, entry points, built in), each once."""
        return list(dict.fromkeys([*self._runtime, *self._entry_points(), *self._builtin]))

    def get(self, name: str) -> Any:
        """The object registered as ``name``; an unknown name raises ``UnknownNameError`` (a ``KeyError``) listing
        the known ones."""
        if not isinstance(name, str):
            raise UnknownNameError(f"unknown {self.kind} {name!r}: a {self.kind} is named by a str; known: "
                                   f"{', '.join(self.names())}")
        if name in self._runtime:
            return self._runtime[name]
        if name not in self._loaded:
            path = self._entry_points().get(name) or self._builtin.get(name)
            if path is None:
                raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
            self._loaded[name] = load(path)
        return self._loaded[name]

    def __contains__(self, name: str) -> bool:
        return name in self.names()

    def items(self) -> Iterator[tuple[str, Any]]:
        for name in self.names():
            yield name, self.get(name)
