"""``vlaccel bench --model NAME|FOLDER``: presets on a flow-matching VLA (transformers pi0; LeRobot pi0, pi0.5 and
SmolVLA) at real size, against the plain model.

What it measures, per setting, in one process: end-to-end latency of one action chunk and the time spent in the
vision encoder, the VLM prefix and the expert's flow steps (:mod:`vlaccel.bench.flow_subjects` says where each part
is), as medians over ``repeats`` rounds in which the plain model and the setting run alternately (``baseline call,
apply, accelerated call, remove``: the shared machine's drift hits both alike); FLOPs per part (``FlopCounterMode``,
read before and after each part's calls); parameters; the prefix KV cache's bytes (the keys and values every flow
step reads); and the action chunk's SQNR against the plain model on the same observation and noise. Layer pruning
calibrates at every apply, on observations made like the timed one (other seeds). A setting the model cannot take
is reported as an error row with the reason, and the others still run.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from vlaccel.bench.fidelity import sqnr_db
from vlaccel.bench.flops import register_cpu_sdpa_formula
from vlaccel.bench.flow_subjects import FlowSubject, build_subject
from vlaccel.bench.latency import _Clock
from vlaccel.memory import count_parameters, kv_bytes
from vlaccel.transformers_compat import output_cache

__all__ = ["DEFAULT_PRESETS", "PARTS", "run_flow_bench", "to_markdown"]

DEFAULT_PRESETS = ("efficientvla", "efficientvla-tokens", "efficientvla-layers", "head-cache", "ddim5")
PARTS = ("vision", "prefix", "expert")


class _Parts:
    """Seconds and FLOPs of the vision and expert parts of one call (the prefix: the rest, or its module), and the
    prefix cache's KV bytes. Module parts use forward hooks; a method part is wrapped as an instance attribute."""

    def __init__(self, subject: FlowSubject, device: str):
        self.subject, self.clock = subject, _Clock(device)
        self.counter: FlopCounterMode | None = None
        self.kv_bytes = 0
        self._first = True  # the next call of the prefix-cache method is the chunk's first
        self._hooks: list[Any] = []
        self._wrapped: list[tuple[Any, str, bool, Any]] = []
        self._spans: dict[str, list[float]] = {}
        self._flops: dict[str, int] = {}
        self.attach()

    def attach(self) -> None:
        subject = self.subject
        sites = {"vision": [(m, "") for m in subject.vision], "expert": [subject.expert]}
        if subject.prefix_module is not None:
            sites["prefix"] = [(subject.prefix_module, "")]
        for part, targets in sites.items():
            for obj, method in targets:
                self._attach(part, obj, method)
        if subject.prefix_module is not None:
            self._hooks.append(subject.prefix_module.register_forward_hook(
                lambda m, a, out: self._record_kv(output_cache(out))))
        elif subject.prefix_cache is not None:
            self._wrap(*subject.prefix_cache, self._first_call_cache)

    def end_to_end(self) -> tuple[dict[str, float], torch.Tensor]:
        """Seconds of one chunk with no measuring site attached (per-part times ``None``): a compiled model is timed
        so, because the sites' clock reads would break its graphs."""
        self.remove()
        try:
            start = self._now()
            with torch.no_grad():
                actions = self.subject.call()
            seconds = time.perf_counter() - start[0]
        finally:
            self.attach()
        return {"e2e": seconds, **dict.fromkeys(PARTS)}, actions

    # --- measuring sites --------------------------------------------------------------------------------------
    def _attach(self, part: str, obj: Any, method: str) -> None:
        if not method:
            starts: list[tuple[float, int]] = []
            self._hooks.append(obj.register_forward_pre_hook(lambda m, a: starts.append(self._now())))
            self._hooks.append(obj.register_forward_hook(lambda m, a, o: self._close(part, starts.pop())))
            return
        self._wrap(obj, method, lambda inner: self._timed(part, inner))

    def _wrap(self, obj: Any, method: str, make: Any) -> None:
        own = method in obj.__dict__
        previous = obj.__dict__.get(method)
        inner = getattr(obj, method)
        obj.__dict__[method] = make(inner)
        self._wrapped.append((obj, method, own, previous))

    def _timed(self, part: str, inner: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            start = self._now()
            out = inner(*args, **kwargs)
            self._close(part, start)
            return out

        return call

    def _first_call_cache(self, inner: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            out = inner(*args, **kwargs)
            if self._first:
                self._first = False
                self._record_kv(out[1] if isinstance(out, tuple) and len(out) > 1 else None)
            return out

        return call

    def _record_kv(self, cache: Any) -> None:
        self.kv_bytes = kv_bytes(cache) if cache is not None else 0

    def _now(self) -> tuple[float, int]:
        self.clock.sync()
        return time.perf_counter(), self.counter.get_total_flops() if self.counter is not None else 0

    def _close(self, part: str, start: tuple[float, int]) -> None:
        end = self._now()
        self._spans.setdefault(part, []).append(end[0] - start[0])
        self._flops[part] = self._flops.get(part, 0) + end[1] - start[1]

    # --- one call ---------------------------------------------------------------------------------------------
    def call(self, flops: bool = False) -> tuple[dict[str, float], torch.Tensor, dict[str, int] | None]:
        """Seconds end to end and per part of one chunk, the actions, and (``flops=True``) FLOPs per part."""
        self._spans, self._flops, self._first = {}, {}, True
        if flops:
            register_cpu_sdpa_formula()
            self.counter = FlopCounterMode(display=False)
        start = self._now()
        # FLOPs are counted on the eager code: a compiled graph's kernels are not seen by FlopCounterMode
        with torch.no_grad(), (self.counter if flops else _null()), \
                (torch.compiler.set_stance("force_eager") if flops else _null()):
            actions = self.subject.call()
        end = self._now()
        seconds = {"e2e": end[0] - start[0], **{p: sum(self._spans.get(p, [])) for p in ("vision", "expert")}}
        seconds["prefix"] = sum(self._spans["prefix"]) if "prefix" in self._spans else \
            seconds["e2e"] - seconds["vision"] - seconds["expert"]
        counted = None
        if flops:
            total = self.counter.get_total_flops()
            counted = {p: self._flops.get(p, 0) for p in ("vision", "expert")}
            counted["prefix"] = self._flops["prefix"] if "prefix" in self._flops else \
                total - counted["vision"] - counted["expert"]
            counted["total"] = total
            self.counter = None
        return seconds, actions, counted

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        for obj, method, own, previous in reversed(self._wrapped):
            if own:
                obj.__dict__[method] = previous
            else:
                del obj.__dict__[method]
        self._hooks, self._wrapped = [], []


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _median(calls: list[dict[str, float | None]]) -> dict[str, float | None]:
    return {k: None if any(c[k] is None for c in calls) else statistics.median(c[k] for c in calls) for k in calls[0]}


def run_flow_bench(model: str = "pi0-small", presets: tuple[str, ...] = DEFAULT_PRESETS, repeats: int = 3,
                   warmup: int = 1, device: str = "cpu", calibration: int = 2, log: Any = print) -> dict[str, Any]:
    """Measure ``presets`` on the model ``model`` names (:func:`~vlaccel.bench.flow_subjects.build_subject`);
    returns a JSON-able dict."""
    from vlaccel import applied, presets as preset_registry
    from vlaccel.techniques.layer_prune import set_calibration_observations

    started = time.perf_counter()
    subject = build_subject(model, device, calibration)
    set_calibration_observations(subject.model, subject.calibration)
    params = count_parameters(subject.model)
    log(f"{subject.name}: {type(subject.model).__name__}, {params / 1e9:.3f} B parameters, built in "
        f"{time.perf_counter() - started:.0f} s")
    parts = _Parts(subject, device)
    try:
        for _ in range(warmup):
            parts.call()
        _, _, base_flops = parts.call(flops=True)
        base_kv = parts.kv_bytes
        base_calls: list[dict[str, float]] = []
        settings: dict[str, Any] = {}
        for name in presets:
            try:  # "a+b": presets a and b applied together
                resolutions = [preset_registry.resolve(part, subject.model, warn=False) for part in name.split("+")]
            except Exception as err:  # noqa: BLE001 - reported as the setting's row, the others still run
                settings[name] = {"error": f"{type(err).__name__}: {err}"}
                log(f"  {name}: {settings[name]['error']}")
                continue
            description = "; ".join(r.description() for r in resolutions)
            configs = [c for r in resolutions for c in r.configs]
            compiled = any(c.name == "compile" for c in configs)  # timed end to end only (see _Parts.end_to_end)
            log(description)
            calls, base_round = [], []
            flops = out = base_actions = None
            kv = kept_params = 0
            try:
                for r in range(repeats):
                    seconds, base_actions, _ = parts.call()
                    base_round.append(seconds)
                    with applied(subject.model, *configs):
                        kept_params = count_parameters(subject.model)
                        if r == 0:
                            _, _, flops = parts.call(flops=True)  # on the eager code; the prefix KV too
                            kv = parts.kv_bytes
                            (parts.end_to_end if compiled else parts.call)()  # a first call (compile, caches)
                        seconds, out = parts.end_to_end() if compiled else parts.call()[:2]
                        calls.append(seconds)
                        kv = kv if compiled else parts.kv_bytes
            except Exception as err:  # noqa: BLE001
                settings[name] = {"description": description, "error": f"{type(err).__name__}: {err}"}
                log(f"  {name}: {settings[name]['error']}")
                continue
            base_calls += base_round
            base_med, med = _median(base_round), _median(calls)
            settings[name] = {
                "description": description, "latency_s": med, "baseline_latency_s": base_med,
                "speedup": base_med["e2e"] / med["e2e"], "flops": flops,
                "flops_fraction": flops["total"] / base_flops["total"], "params": kept_params, "prefix_kv_bytes": kv,
                "action_sqnr_db": sqnr_db(base_actions.float().cpu().numpy(), out.float().cpu().numpy())}
            log(f"  {name}: {settings[name]['speedup']:.2f}x, FLOPs {settings[name]['flops_fraction']:.3f}, "
                f"prefix KV {kv / 2**20:.1f} MiB")
        if not base_calls:  # every setting failed: still time the plain model
            base_calls = [parts.call()[0] for _ in range(repeats)]
    finally:
        parts.remove()
    return {"model": subject.name, "class": type(subject.model).__name__, "params": params, "device": device,
            "threads": torch.get_num_threads(), "repeats": repeats, **subject.shape,
            "baseline": {"latency_s": _median(base_calls), "flops": base_flops, "prefix_kv_bytes": base_kv},
            "settings": settings, "wall_s": time.perf_counter() - started}


def to_markdown(result: dict[str, Any]) -> str:
    """The result as a markdown table (latencies in ms, medians; speedups against the interleaved baseline), with
    each part's share of the baseline's time and FLOPs."""
    b = result["baseline"]
    ms = lambda s: "-" if s is None else f"{1000 * s:.0f}"  # noqa: E731
    shape = ", ".join(f"{result[k]} {k.replace('_', ' ')}" for k in ("cameras", "prompt_tokens", "flow_steps", "chunk")
                      if k in result)
    time_share = ", ".join(f"{p} {100 * b['latency_s'][p] / b['latency_s']['e2e']:.0f} %" for p in PARTS)
    flop_share = ", ".join(f"{p} {100 * b['flops'][p] / b['flops']['total']:.0f} %" for p in PARTS)
    lines = [f"`{result['model']}` ({result['class']}, {result['params'] / 1e9:.2f} B parameters, {shape}), "
             f"{result['device']}, {result['threads']} threads, {result['repeats']} alternating rounds, "
             f"{result['wall_s'] / 60:.0f} min in all", "",
             f"Baseline time: {time_share}; FLOPs: {flop_share}.", "",
             "| setting | speedup | e2e ms | vision ms | VLM prefix ms | expert steps ms | FLOPs (fraction) | "
             "parameters | prefix KV | action SQNR |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| baseline | 1.00x | {ms(b['latency_s']['e2e'])} | {ms(b['latency_s']['vision'])} | "
             f"{ms(b['latency_s']['prefix'])} | {ms(b['latency_s']['expert'])} | {b['flops']['total'] / 1e12:.3f} T "
             f"(1.000) | {result['params'] / 1e9:.3f} B | {b['prefix_kv_bytes'] / 2**20:.1f} MiB | |"]
    for name, s in result["settings"].items():
        if "error" in s:
            lines.append(f"| {name} | not applied: {s['error']} |||||||||")
            continue
        lat = s["latency_s"]
        lines.append(f"| {name} | {s['speedup']:.2f}x | {ms(lat['e2e'])} | {ms(lat['vision'])} | {ms(lat['prefix'])} | "
                     f"{ms(lat['expert'])} | {s['flops']['total'] / 1e12:.3f} T ({s['flops_fraction']:.3f}) | "
                     f"{s['params'] / 1e9:.3f} B | {s['prefix_kv_bytes'] / 2**20:.1f} MiB | "
                     f"{s['action_sqnr_db']:.1f} dB |")
    return "\n".join(lines) + "\n"
