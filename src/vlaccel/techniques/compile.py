"""``CompileConfig``: ``torch.compile`` the forward of chosen parts of the policy (an engine switch, lossless up to
float rounding).

Not a method of either paper. The parts are the adapter's (``module_parts``, shared with ``PrecisionConfig``): for
the reference VLA ``vision``, ``language_model`` and ``action_head`` (its DiT, called once per denoising step);
for transformers models the whole ``model``. Each listed module's *instance* ``forward`` is replaced by a
:class:`CompiledForward`, which compiles the forward the module had (its class's, or one a technique set on the
instance) on first call. Module hooks (the precision casts, token selection, the head cache's step counter) stay
outside or are traced by dynamo, whose graphs then guard on them (a graph compiled before a hook was added is
recompiled, not reused); ``remove()`` puts the previous forward back. Nothing in the state dict changes.

Composition. Techniques whose Python state changes from call to call inside a compiled region make dynamo guard
on that state and recompile (the head cache's step index inside the DiT; a history episode's growing KV cache,
whose length dimension then becomes dynamic). On the bundled policy no technique breaks a graph: every part is
one graph, plain and under the head cache, token selection and KV-Efficient (docs/benchmarks.md).
:func:`graph_breaks` reports graphs and breaks per module from ``torch._dynamo.explain``;
``scripts/bench_engine.py`` prints them. Where dynamo cannot trace, torch.compile runs that stretch eagerly (its
own documented fallback; the output is unchanged); ``fullgraph=True`` turns every graph break into an error
instead. ``backend="eager"`` captures graphs and runs them with the original kernels: bit-identical outputs, the
neutral setting for tests.

Cost: the first call of each part compiles (tens of seconds on a 2-core CPU with inductor), and a new input shape
recompiles once (``dynamic=None``: torch marks the changed dimension dynamic).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vlaccel.config import TechniqueConfig
from vlaccel.techniques.parts import as_names

__all__ = ["CompileConfig", "CompiledForward", "graph_breaks", "MODES", "BACKENDS"]

#: torch.compile's modes (``None`` = its default)
MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: the backends we support; "eager" and "aot_eager" are torch's debugging backends (no code generation)
BACKENDS = ("inductor", "eager", "aot_eager")


@dataclasses.dataclass(frozen=True)
class CompileConfig(TechniqueConfig):
    """``torch.compile`` each module of ``parts`` (None = every part the adapter names) with ``mode``,
    ``backend``, ``dynamic`` and ``fullgraph`` as torch.compile takes them."""

    parts: tuple[str, ...] | None = None
    mode: str | None = None
    backend: str = "inductor"
    dynamic: bool | None = None
    fullgraph: bool = False

    name = "compile"
    handler = "vlaccel.techniques.compile:CompileHandler"
    order = 95  # last: the graphs see the model every other technique has shaped (and cast)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"CompileConfig.mode must be one of {MODES}, got {self.mode!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"CompileConfig.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.mode not in (None, "default") and self.backend != "inductor":
            raise ValueError(f"CompileConfig.mode={self.mode!r} is an inductor mode; use backend='inductor' or "
                             "leave mode=None")
        if self.dynamic not in (None, True, False) or self.fullgraph not in (True, False):
            raise ValueError(f"CompileConfig.dynamic must be None/True/False and fullgraph True/False, got "
                             f"{self.dynamic!r}, {self.fullgraph!r}")
        as_names(self, "parts")

    def is_neutral(self, model: Any, adapter: Any) -> bool:  # noqa: ARG002
        """The eager backend runs the captured graphs with the original kernels: outputs are bit-identical."""
        return self.backend == "eager"

    def options(self) -> dict[str, Any]:
        return {"mode": self.mode, "backend": self.backend, "dynamic": self.dynamic, "fullgraph": self.fullgraph}


class CompiledForward:
    """A module's instance ``forward`` (or another method an adapter names, ``ModelAdapter.compile_sites``):
    ``inner`` (the callable it replaced) compiled on first call.

    ``inner`` is ``None`` for the class's own method (bound to ``module`` when compiled) or a callable a technique set
    on the instance. A deep copy of the model gets its own, uncompiled one bound to the copied object.
    """

    def __init__(self, module: Any, inner: Callable[..., Any] | None, options: dict[str, Any],
                 method: str = "forward"):
        self.module, self.inner, self.options, self.method = module, inner, dict(options), method
        self.compiled: Callable[..., Any] | None = None

    def _target(self) -> Callable[..., Any]:
        if self.inner is not None:
            return self.inner
        return getattr(type(self.module), self.method).__get__(self.module)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is None:
            self.compiled = torch.compile(self._target(), **self.options)
        # Graphs guard on the module hooks they traced (dynamo skips those guards by default), so a graph compiled
        # before a technique added or removed a hook on this module (token selection, a head cache) is recompiled
        # instead of running without it: dynamo caches graphs per code object, across applies.
        with torch._dynamo.config.patch(skip_nnmodule_hook_guards=False):
            return self.compiled(*args, **kwargs)

    def __deepcopy__(self, memo: dict) -> CompiledForward:
        return CompiledForward(copy.deepcopy(self.module, memo), copy.deepcopy(self.inner, memo), self.options,
                               self.method)


class _Applied:
    def __init__(self) -> None:
        self.replaced: list[tuple[Any, str, Any]] = []  # (object, method name, its previous instance attribute)

    def remove(self) -> None:
        for owner, method, previous in reversed(self.replaced):
            if previous is None:
                del owner.__dict__[method]
            else:
                owner.__dict__[method] = previous
        self.replaced.clear()


def _cpp_compiler() -> str | None:
    import os
    import shutil

    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    return next((path for c in candidates if (path := shutil.which(c))), None)


def _chosen_sites(model: Any, config: CompileConfig, adapter: Any) -> list[tuple[Any, str]]:
    """(object, method) pairs to compile: the adapter's compile sites of the chosen parts, each once."""
    sites = adapter.compile_sites(model)
    names = list(sites) if config.parts is None else list(config.parts)
    unknown = [p for p in names if p not in sites]
    if unknown:
        raise ValueError(f"CompileConfig.parts {unknown} are not parts of {type(model).__name__}; its parts are "
                         f"{sorted(sites)}")
    chosen: list[tuple[Any, str]] = []
    for part in names:
        chosen += [(o, m) for o, m in sites[part] if all(o is not seen or m != n for seen, n in chosen)]
    return chosen


class CompileHandler:
    def validate(self, model: Any, config: CompileConfig, adapter: Any, pending: tuple = ()) -> None:
        on_cpu = any(p.device.type == "cpu" for p in model.parameters())
        if config.backend == "inductor" and on_cpu and not _cpp_compiler():
            raise RuntimeError("CompileConfig(backend='inductor') on the CPU generates C++ and needs a compiler, and "
                               "none was found (CXX, c++, g++, clang++): install one (e.g. apt install g++) or "
                               "leave CompileConfig out")
        _chosen_sites(model, config, adapter)

    def apply(self, model: Any, config: CompileConfig, adapter: Any, prepared: None = None) -> _Applied:
        state = _Applied()
        for owner, method in _chosen_sites(model, config, adapter):
            previous = owner.__dict__.get(method)
            state.replaced.append((owner, method, previous))
            owner.__dict__[method] = CompiledForward(owner, previous, config.options(), method)
        return state


def graph_breaks(model: Any, run: Callable[[], Any], parts: tuple[str, ...] | None = None) -> dict[str, dict]:
    """Graphs and graph breaks ``torch._dynamo.explain`` finds in the forward of each module of ``parts`` (None =
    all) that ``run()`` calls, on the inputs of its first call there, with the model as it is now (techniques
    applied or not; a compiled forward is explained as the forward it compiles).

    Returns ``{"part/ModuleClass": {"graphs": int, "graph_breaks": int, "reasons": [str, ...], "calls": int}}``;
    ``calls`` counts the module's calls in ``run()``.
    """
    from vlaccel.adapters.base import get_adapter

    all_parts = get_adapter(model).module_parts(model)
    modules = {f"{name}/{type(m).__name__}": m for name in (parts or list(all_parts)) for m in all_parts[name]}
    first: dict[str, tuple[tuple, dict]] = {}
    calls = dict.fromkeys(modules, 0)

    def capture(key: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            calls[key] += 1
            first.setdefault(key, (args, kwargs))

        return hook

    handles = [m.register_forward_pre_hook(capture(k), with_kwargs=True) for k, m in modules.items()]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    report = {}
    for key, (args, kwargs) in first.items():
        forward = modules[key].forward
        if isinstance(forward, CompiledForward):
            forward = forward._target()
        torch._dynamo.reset()
        with torch.no_grad():
            explained = torch._dynamo.explain(forward)(*args, **kwargs)
        reasons = sorted({str(b.reason).splitlines()[0][:160] for b in explained.break_reasons})
        report[key] = {"graphs": explained.graph_count, "graph_breaks": explained.graph_break_count,
                       "reasons": reasons, "calls": calls[key]}
    torch._dynamo.reset()
    return report
