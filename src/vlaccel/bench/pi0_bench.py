"""``vlaccel bench --model pi0[-small|-tiny]``: presets on transformers' pi0 at real size, against the plain model.

What it measures, per setting, in one process: end-to-end ``sample_actions`` latency and the time spent in the
vision encoder, the VLM prefix and the expert's flow steps (forward hooks, wall clock; CUDA synchronised), as
medians over ``repeats`` rounds in which the plain model and the setting run alternately (``baseline call,
apply, accelerated call, remove``: the shared machine's drift hits both alike); FLOPs per part
(``FlopCounterMode``); parameters; the prefix KV cache's bytes (the keys and values every flow step reads: the
sum over VLM layers, token pruning shortens layers > K); and the action chunk's SQNR against the plain model on
the same observation and noise. Layer pruning calibrates at every apply, on observations made like the timed
one (other seeds). Weights are random (:mod:`vlaccel.models.pi0_configs`): speed and FLOPs do not depend on them,
fidelity on a random model is a sanity check only.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from vlaccel.bench.fidelity import sqnr_db
from vlaccel.bench.flops import count_flops
from vlaccel.bench.latency import ModuleTimer
from vlaccel.bench.memory import count_parameters, kv_bytes
from vlaccel.transformers_compat import output_cache

__all__ = ["MODELS", "DEFAULT_PRESETS", "run_pi0_bench", "to_markdown"]

#: --model name -> pi0_configs size
MODELS = {"pi0": "full", "pi0-small": "small", "pi0-tiny": "tiny"}
DEFAULT_PRESETS = ("efficientvla", "efficientvla-tokens", "efficientvla-layers", "head-cache", "ddim5")
#: FlopCounterMode's name of the module each part's work runs in (sample_actions calls them directly)
_FLOP_MODULES = {"vision": ("SiglipVisionModel", "PaliGemmaMultiModalProjector"), "prefix": ("PaliGemmaModel",),
                 "expert": ("PI0ForConditionalGeneration",)}


class _PartTimer:
    """Per-part seconds of one call (:class:`~vlaccel.bench.latency.ModuleTimer` over the vision encoder, the VLM
    prefix and the expert) and the prefix cache's KV bytes (a forward hook on the VLM)."""

    def __init__(self, model: Any, device: str):
        root = model.model
        self.timer = ModuleTimer({"vision": root.vlm.vision_tower, "prefix": root.vlm, "expert": root.dit},
                                 device).attach()
        self.kv_bytes = 0
        self.kv_hook = root.vlm.register_forward_hook(self._record_kv)

    def _record_kv(self, module: Any, args: Any, output: Any) -> None:
        self.kv_bytes = kv_bytes(output_cache(output))

    def call(self, model: Any, inputs: dict[str, Any]) -> tuple[dict[str, float], torch.Tensor]:
        """Seconds end to end and per part of one ``sample_actions`` call, and its actions."""
        clock = self.timer.clock
        self.timer.begin()
        clock.sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            actions = model.sample_actions(**inputs)
        clock.sync()
        return {"e2e": time.perf_counter() - t0, **self.timer.totals()}, actions

    def remove(self) -> None:
        self.timer.detach()
        self.kv_hook.remove()


def _flops(model: Any, inputs: dict[str, Any]) -> dict[str, int]:
    with torch.no_grad():
        total, per_module = count_flops(lambda: model.sample_actions(**inputs))
    parts = {part: sum(per_module.get(name, 0) for name in names) for part, names in _FLOP_MODULES.items()}
    return {**parts, "total": total}


def _median(calls: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(c[k] for c in calls) for k in calls[0]}


def run_pi0_bench(model_name: str = "pi0-small", presets: tuple[str, ...] = DEFAULT_PRESETS, repeats: int = 3,
                  warmup: int = 1, device: str = "cpu", calibration: int = 2, log: Any = print) -> dict[str, Any]:
    """Measure ``presets`` on the pi0 of ``model_name`` (a key of :data:`MODELS`); returns a JSON-able dict."""
    from vlaccel import applied, presets as preset_registry
    from vlaccel.models.pi0_configs import CAMERAS, PROMPT_TOKENS, build_pi0, pi0_inputs
    from vlaccel.techniques.layer_prune import set_calibration_observations

    if model_name not in MODELS:
        raise ValueError(f"unknown pi0 model {model_name!r}; one of {sorted(MODELS)}")
    size = MODELS[model_name]
    started = time.perf_counter()
    model = build_pi0(size).to(device)
    shape = {"cameras": CAMERAS[size], "prompt_tokens": PROMPT_TOKENS[size]}
    inputs = {k: v.to(device) for k, v in pi0_inputs(model, seed=0, **shape).items()}
    set_calibration_observations(model, [pi0_inputs(model, seed=100 + i, **shape) for i in range(calibration)])
    params = count_parameters(model)
    log(f"{model_name}: {params / 1e9:.2f} B parameters, built in {time.perf_counter() - started:.0f} s")
    timer = _PartTimer(model, device)
    try:
        for _ in range(warmup):
            timer.call(model, inputs)
        base_flops = _flops(model, inputs)
        base_calls, base_actions = [], None
        settings = {}
        for name in presets:
            resolution = preset_registry.resolve(name, model, warn=False)
            log(resolution.description())
            calls, base_round = [], []
            flops = out = None
            for r in range(repeats):
                seconds, base_actions = timer.call(model, inputs)
                base_round.append(seconds)
                base_kv = timer.kv_bytes
                with applied(model, *resolution.configs):
                    kept_params = count_parameters(model)
                    if r == 0:
                        timer.call(model, inputs)  # a first call after apply (compile, caches)
                        flops = _flops(model, inputs)
                    seconds, out = timer.call(model, inputs)
                    calls.append(seconds)
                    kv = timer.kv_bytes
            base_calls += base_round
            base_med, med = _median(base_round), _median(calls)
            settings[name] = {
                "description": resolution.description(), "latency_s": med, "baseline_latency_s": base_med,
                "speedup": base_med["e2e"] / med["e2e"], "flops": flops, "flops_fraction": flops["total"] /
                base_flops["total"], "params": kept_params, "prefix_kv_bytes": kv, "baseline_prefix_kv_bytes": base_kv,
                "action_sqnr_db": sqnr_db(base_actions.float().cpu().numpy(), out.float().cpu().numpy())}
            log(f"  {name}: {settings[name]['speedup']:.2f}x, FLOPs {settings[name]['flops_fraction']:.3f}, "
                f"prefix KV {kv / 2**20:.1f} MiB")
    finally:
        timer.remove()
    return {"model": model_name, "size": size, "params": params, "device": device, "threads": torch.get_num_threads(),
            "repeats": repeats, **shape, "baseline": {"latency_s": _median(base_calls), "flops": base_flops,
                                                      "prefix_kv_bytes": base_kv},
            "settings": settings, "wall_s": time.perf_counter() - started}


def to_markdown(result: dict[str, Any]) -> str:
    """The result as a markdown table (latencies in ms, medians; speedups against the interleaved baseline)."""
    b = result["baseline"]
    ms = lambda s: f"{1000 * s:.0f}"  # noqa: E731
    lines = [f"pi0 `{result['model']}` ({result['params'] / 1e9:.2f} B parameters, {result['cameras']} cameras, "
             f"{result['prompt_tokens']} prompt tokens), {result['device']}, {result['threads']} threads, "
             f"{result['repeats']} alternating rounds, {result['wall_s'] / 60:.0f} min in all", "",
             "| setting | speedup | e2e ms | vision ms | VLM prefix ms | expert steps ms | FLOPs (fraction) | "
             "parameters | prefix KV | action SQNR |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| baseline | 1.00x | {ms(b['latency_s']['e2e'])} | {ms(b['latency_s']['vision'])} | "
             f"{ms(b['latency_s']['prefix'])} | {ms(b['latency_s']['expert'])} | {b['flops']['total'] / 1e12:.2f} T "
             f"(1.000) | {result['params'] / 1e9:.2f} B | {b['prefix_kv_bytes'] / 2**20:.1f} MiB | |"]
    for name, s in result["settings"].items():
        lat = s["latency_s"]
        lines.append(f"| {name} | {s['speedup']:.2f}x | {ms(lat['e2e'])} | {ms(lat['vision'])} | {ms(lat['prefix'])} | "
                     f"{ms(lat['expert'])} | {s['flops']['total'] / 1e12:.2f} T ({s['flops_fraction']:.3f}) | "
                     f"{s['params'] / 1e9:.2f} B | {s['prefix_kv_bytes'] / 2**20:.1f} MiB | "
                     f"{s['action_sqnr_db']:.1f} dB |")
    return "\n".join(lines) + "\n"
