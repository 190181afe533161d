"""Latency: end to end and per module, baseline and accelerated measured alternately in one process.

Measurement rule: warm up, then call every subject in strict round robin (A B A B ...) and
take the median of each subject's calls. Alternating puts slow drift of a shared machine (other jobs,
frequency changes) on both sides equally, so the *ratio* of medians is the robust headline.

Per-module times come from forward pre/post hooks on the policy's vision encoder, language model and the
DiT of the action head; a module's time is the sum over its calls within one subject call (the DiT runs
once per denoising step, the LM twice per ``predict_action``: instruction prefill + observation).
On CPU the hooks read ``time.perf_counter``; on CUDA they record ``torch.cuda.Event`` pairs (no
synchronisation inside the call, so the GPU pipeline is not disturbed), and the device is synchronised
before and after every call, around the end-to-end ``perf_counter`` reading.
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self

import torch
from torch import nn

__all__ = ["MODULES", "ModuleTimer", "Samples", "Subject", "policy_modules", "profile_call", "ratio", "time_alternating"]

#: the modules timed separately, in report order
MODULES = ("vision", "language_model", "action_head")


def policy_modules(policy: Any) -> dict[str, nn.Module]:
    """The timed modules of a ReferenceVLA-shaped policy (the action head is timed at its DiT)."""
    return {"vision": policy.vision, "language_model": policy.language_model, "action_head": policy.action_head.dit}


class _Clock:
    """perf_counter on CPU; CUDA events (read after a synchronise) on GPU."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start: Any, end: Any) -> float:
        if self.cuda:
            return start.elapsed_time(end) / 1e3  # elapsed_time is in ms; needs a prior sync
        return end - start


class ModuleTimer:
    """Sum of forward time per named module over one call, via forward pre/post hooks.

    Use ``with ModuleTimer(policy_modules(p)) as timer: timer.begin(); p.predict_action(...); timer.totals()``.
    """

    def __init__(self, modules: Mapping[str, nn.Module], device: str | torch.device = "cpu"):
        self.modules = dict(modules)
        self.clock = _Clock(device)
        self._handles: list[Any] = []
        self._open: dict[str, list[Any]] = {k: [] for k in self.modules}
        self._spans: dict[str, list[tuple[Any, Any]]] = {k: [] for k in self.modules}

    def attach(self) -> Self:
        if self._handles:
            raise RuntimeError("ModuleTimer is already attached")
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._pre(name)))
            self._handles.append(module.register_forward_hook(self._post(name)))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> Self:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _pre(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            self._open[name].append(self.clock.mark())

        return hook

    def _post(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self._spans[name].append((self._open[name].pop(), self.clock.mark()))

        return hook

    def begin(self) -> None:
        """Forget the spans of the previous call."""
        for name in self.modules:
            self._open[name].clear()
            self._spans[name].clear()

    def calls(self) -> dict[str, int]:
        return {name: len(spans) for name, spans in self._spans.items()}

    def totals(self) -> dict[str, float]:
        """Seconds per module since ``begin()`` (synchronises the device first)."""
        self.clock.sync()
        return {name: sum(self.clock.seconds(a, b) for a, b in spans) for name, spans in self._spans.items()}


@dataclasses.dataclass
class Subject:
    """One thing to time: a zero-argument call, and optionally the module timer attached to its policy."""

    name: str
    fn: Callable[[], Any]
    timer: ModuleTimer | None = None


@dataclasses.dataclass
class Samples:
    """Seconds per measured call: end to end and per module."""

    e2e: list[float] = dataclasses.field(default_factory=list)
    modules: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    def median(self) -> dict[str, Any]:
        return {"e2e": statistics.median(self.e2e),
                "modules": {k: statistics.median(v) for k, v in self.modules.items()}}


def time_alternating(subjects: Sequence[Subject], repeats: int = 20, warmup: int = 3,
                     device: str | torch.device = "cpu",
                     on_call: Callable[[], None] | None = None) -> tuple[dict[str, Samples], list[str]]:
    """Call ``subjects`` in strict round robin, ``warmup`` unrecorded rounds then ``repeats`` recorded ones.

    Returns (samples per subject name, the names in the order they were called, warm-up included).
    ``on_call`` runs after each recorded call (progress bars).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    names = [s.name for s in subjects]
    if len(set(names)) != len(names):
        raise ValueError(f"subject names must be unique, got {names}")
    clock = _Clock(device)
    samples = {s.name: Samples() for s in subjects}
    order: list[str] = []
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()  # a collection in the middle of one subject's call would bias that subject
    try:
        for round_ in range(warmup + repeats):
            for s in subjects:
                if s.timer is not None:
                    s.timer.begin()
                clock.sync()
                t0 = time.perf_counter()
                s.fn()
                clock.sync()
                elapsed = time.perf_counter() - t0
                order.append(s.name)
                if round_ < warmup:
                    continue
                samples[s.name].e2e.append(elapsed)
                if s.timer is not None:
                    for k, v in s.timer.totals().items():
                        samples[s.name].modules.setdefault(k, []).append(v)
                if on_call is not None:
                    on_call()
    finally:
        if was_enabled:
            gc.enable()
    return samples, order


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator`` with 0/0 = 1 and x/0 = inf (e.g. a module skipped entirely)."""
    if denominator == 0:
        return 1.0 if numerator == 0 else float("inf")
    return numerator / denominator


def profile_call(fn: Callable[[], Any], device: str | torch.device = "cpu", top: int = 12) -> list[dict[str, Any]]:
    """``torch.profiler`` over one call of ``fn``: the ``top`` ops by self time (where the time goes when a
    speedup falls short). Each row: op name, calls, self ms, total ms (CUDA time on GPU)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    clock = _Clock(device)
    with profile(activities=activities) as prof:
        fn()
        clock.sync()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    rows = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0.0), reverse=True)[:top]
    total_key = "device_time_total" if cuda else "cpu_time_total"
    return [{"op": e.key, "calls": int(e.count), "self_ms": getattr(e, key, 0.0) / 1e3,
             "total_ms": getattr(e, total_key, 0.0) / 1e3} for e in rows]

