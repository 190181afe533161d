"""The benchmark: every preset against the unaccelerated policy, for speed, FLOPs, memory and fidelity.

For each preset the policy is deep-copied and the preset applied to the copy, so baseline and
accelerated policy live side by side in one process and are timed alternately (``latency``). FLOPs use
``FlopCounterMode`` with the CPU SDPA formula (``flops``); fidelity compares action chunks and cognition
features on recorded observations (``fidelity``). ``--history`` adds the KV-cache scaling study
(``history``). The result is one JSON-ready dict; ``report`` renders it for people.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import platform
from collections.abc import Callable, Sequence
from typing import Any

import torch

from vlaccel.bench.fidelity import compare_policies, load_observations
from vlaccel.bench.flops import flops_by_module
from vlaccel.bench.history import DEFAULT_LENGTHS, history_scaling
from vlaccel.config_cli import check, check_numbers
from vlaccel.bench.latency import (
    MODULES,
    ModuleTimer,
    Subject,
    policy_modules,
    profile_call,
    ratio,
    time_alternating,
)
from vlaccel.memory import count_parameters
from vlaccel.errors import UsageError, check_names

__all__ = [
    "BenchOptions",
    "Progress",
    "bench_preset",
    "combined_settings",
    "calibration_setter",
    "default_presets",
    "environment",
    "kv_settings",
    "resolve_policy",
    "run_benchmark",
]


@dataclasses.dataclass
class BenchOptions:
    repeats: int = 20
    """Timed calls per policy (median)."""
    warmup: int = 3
    """Untimed warm-up rounds first."""
    device: str = "cpu"
    """cpu, cuda or cuda:N."""
    fidelity_samples: int = 16
    """Observations for the action and cognition fidelity metrics."""
    calibration_samples: int = 64
    """Observations handed to layer pruning's calibration."""
    demos_dir: str = "data/demos"
    """Recorded demos for fidelity and layer-pruning calibration."""
    history: bool = False
    """Also run the history study: per-step latency and KV bytes vs episode length, full cache vs the presets."""
    history_lengths: tuple[int, ...] = DEFAULT_LENGTHS
    """History lengths in control steps of the history study."""
    history_repeats: int = 1
    """Lockstep episodes the history study takes medians over."""
    history_window: int = 4
    """Per-step latency at N = median of steps N-window+1..N over the repeats."""
    profile: bool = False
    """Add torch.profiler's top ops of one baseline and one accelerated call per preset."""

    def __post_init__(self) -> None:
        check(self)

    def validate(self) -> None:
        """Refuse out-of-range settings (``UsageError``)."""
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UsageError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        check_numbers(self, {"repeats": (1, None, "int"), "warmup": (0, None, "int"),
                             "fidelity_samples": (1, None, "int"), "calibration_samples": (1, None, "int"),
                             "history_repeats": (1, None, "int"), "history_window": (1, None, "int")})
        lengths = self.history_lengths
        if not lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in lengths):
            raise UsageError(f"--history-lengths must be one or more integers >= 1, got {list(lengths or ())}")


class Progress:
    """Progress sink: ``task(description, total)`` returns an ``advance()`` callable. This one is silent."""

    def task(self, description: str, total: int) -> Callable[[], None]:
        return lambda: None


def resolve_policy(policy: str | None = None, preset_model: str | None = None) -> tuple[Any, str]:
    """(policy, source label): a named/saved policy, a random ``tiny``/``default`` one, or by default the
    bundled reference if it exists, else a random ``default``-size ReferenceVLA."""
    from vlaccel.models import ReferenceVLA, ReferenceVLAConfig, load_policy
    from vlaccel.models.io import WEIGHTS, bundled_dir

    if policy and preset_model:
        raise UsageError("pass either --policy or --preset-model, not both")
    if policy:
        return load_policy(policy), f"policy {policy!r}"
    if preset_model is None and (bundled_dir("reference") / WEIGHTS).exists():
        return load_policy("reference"), "bundled reference policy (trained)"
    name = preset_model or "default"
    note = "" if preset_model else " (no bundled reference checkpoint found)"
    return ReferenceVLA(ReferenceVLAConfig.preset(name)), f"random-weight '{name}' ReferenceVLA{note}"


def environment(device: str = "cpu") -> dict[str, Any]:
    from vlaccel.versions import versions

    stack = versions(("torch", "transformers", "diffusers"))
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    env = {"machine": platform.machine(), "cpu": cpu, "cpu_count": os.cpu_count(),
           "threads": torch.get_num_threads(), "python": stack["python"], "torch": torch.__version__,
           "transformers": stack["transformers"], "diffusers": stack["diffusers"], "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def default_presets() -> list[str]:
    """Every registered preset except the baseline ("none") and cache-only ones (which only act in history
    mode; they are measured by ``--history``)."""
    import vlaccel

    out = []
    for name in vlaccel.presets.names():
        if name == "none":
            continue
        configs = vlaccel.presets.get(name)
        if configs and all(type(c).history_only for c in configs):
            continue
        out.append(name)
    return out


def kv_settings(policy: Any = None) -> dict[str, list[Any]]:
    """History-mode cache settings, name -> configs: the KV-Efficient cache and its retention baselines at one
    budget (:func:`vlaccel.presets.kv_efficient.benchmark_settings`, the presets of the same names)."""
    from vlaccel.presets.kv_efficient import benchmark_settings

    return {name: list(cfgs) for name, cfgs in benchmark_settings(policy=policy).items()}


def calibration_setter(observations: Sequence[Any]) -> Callable[[Any], None]:
    """A ``prepare(policy_copy)`` that gives layer pruning its calibration observations (before apply).

    Layer pruning (EfficientVLA Eq. 1) calibrates on observations of the target tasks; the bench hands it
    the same source it uses for fidelity (the demos, or the labelled synthetic fallback), so presets run
    whatever the working directory holds.
    """
    samples = [{"image": o.image, "instruction": o.instruction,
                **({"proprio": o.proprio} if o.proprio is not None else {})} for o in observations]

    def prepare(p: Any) -> None:
        try:
            from vlaccel.techniques.layer_prune import set_calibration_observations
        except ImportError:
            return
        set_calibration_observations(p, samples)

    return prepare


def bench_preset(policy: Any, name: str, configs: Sequence[Any], observations: Sequence[Any],
                 options: BenchOptions, baseline_flops: dict[str, int] | None = None,
                 progress: Progress | None = None, prepare: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Speed, FLOPs, parameters and fidelity of ``configs`` applied to a copy of ``policy``."""
    import vlaccel

    progress = progress or Progress()
    accelerated = copy.deepcopy(policy)
    if prepare is not None:
        prepare(accelerated)
    handle = vlaccel.apply(accelerated, *configs) if configs else None
    try:
        obs = observations[0]

        def call(p: Any) -> Callable[[], Any]:
            return lambda: p.predict_action(obs.image, obs.instruction, obs.proprio)

        with ModuleTimer(policy_modules(policy), options.device) as t_base, \
                ModuleTimer(policy_modules(accelerated), options.device) as t_acc:
            advance = progress.task(f"{name}: latency", 2 * options.repeats)
            samples, _ = time_alternating(
                [Subject("baseline", call(policy), t_base), Subject("accelerated", call(accelerated), t_acc)],
                repeats=options.repeats, warmup=options.warmup, device=options.device, on_call=advance)
        base, acc = samples["baseline"].median(), samples["accelerated"].median()

        if baseline_flops is None:
            baseline_flops = flops_by_module(policy_modules(policy), call(policy))
        acc_flops = flops_by_module(policy_modules(accelerated), call(accelerated))

        profile = None
        if options.profile:
            profile = {"baseline": profile_call(call(policy), options.device),
                       "accelerated": profile_call(call(accelerated), options.device)}

        advance = progress.task(f"{name}: fidelity", 1)
        fidelity = compare_policies(policy, accelerated, list(observations))
        advance()
        params_fraction = ratio(count_parameters(accelerated), count_parameters(policy))  # while applied
    finally:
        if handle is not None:
            handle.remove()
    return {
        "configs": [c.to_dict() for c in configs],
        "speedup_e2e": ratio(base["e2e"], acc["e2e"]),
        "speedup_by_module": {m: ratio(base["modules"][m], acc["modules"][m]) for m in MODULES},
        "latency_ms": {
            "baseline": {"e2e": 1e3 * base["e2e"], **{m: 1e3 * base["modules"][m] for m in MODULES}},
            "accelerated": {"e2e": 1e3 * acc["e2e"], **{m: 1e3 * acc["modules"][m] for m in MODULES}},
        },
        "flops_fraction": ratio(acc_flops["total"], baseline_flops["total"]),
        "flops_fraction_by_module": {m: ratio(acc_flops[m], baseline_flops[m]) for m in MODULES},
        "gflops": {"baseline": baseline_flops["total"] / 1e9, "accelerated": acc_flops["total"] / 1e9},
        "params_fraction": params_fraction,
        # where the accelerated call spends its time (the module to look at when a speedup falls short)
        "dominant_module": max(MODULES, key=lambda m: acc["modules"][m]),
        "dominant_module_share": max(acc["modules"].values()) / acc["e2e"],
        **fidelity,
        **({"profile": profile} if profile else {}),
    }


def combined_settings(presets: Sequence[str], combine: Sequence[str]) -> dict[str, list[Any]]:
    """Each preset's configs, then each preset combined with each of ``combine`` (``"PRESET+NAME"``), leaving out
    a preset combined with itself and pairs that would set one technique twice."""
    import vlaccel

    settings = {name: vlaccel.presets.get(name) for name in presets}
    for extra in combine:
        extra_configs = vlaccel.presets.get(extra)
        extra_types = {type(c) for c in extra_configs}
        for name in presets:
            if name in ("none", extra) or extra_types & {type(c) for c in settings[name]}:
                continue
            settings[f"{name}+{extra}"] = [*vlaccel.presets.get(name), *extra_configs]
    return settings


def run_benchmark(policy: Any, presets: Sequence[str] | None = None, options: BenchOptions | None = None,
                  source: str = "", progress: Progress | None = None,
                  combine: Sequence[str] = ()) -> dict[str, Any]:
    """The whole benchmark as one JSON-ready dict (see docs/benchmarks.md for the keys); ``combine``: presets
    also measured on top of each of ``presets`` (:func:`combined_settings`)."""
    import vlaccel

    options = options or BenchOptions()
    progress = progress or Progress()
    presets = list(presets) if presets else default_presets()
    # unknown names fail before any work
    check_names("preset", [*presets, *combine], vlaccel.presets.names())
    resolved = combined_settings(presets, combine)
    policy = policy.to(options.device).eval()
    # disjoint frames of the same pool: layer-pruning calibration on the even ones, fidelity on the odd ones
    observations, obs_source = load_observations(policy.config, options.fidelity_samples, options.demos_dir,
                                                 half=1)
    calibration, calib_source = load_observations(policy.config, options.calibration_samples, options.demos_dir,
                                                  seed=1, half=0)
    prepare = calibration_setter(calibration)
    baseline_flops = flops_by_module(policy_modules(policy), lambda: policy.predict_action(
        observations[0].image, observations[0].instruction, observations[0].proprio))
    result: dict[str, Any] = {
        "environment": environment(options.device),
        "policy": {"source": source, "parameters": count_parameters(policy),
                   "gflops_per_predict_action": baseline_flops["total"] / 1e9,
                   "tokens_per_frame": policy.config.tokens_per_frame},
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(options).items()},
        "observations": obs_source,
        "calibration": calib_source,
        "presets": {},
        "errors": {},
        "notes": [],
    }
    for name, configs in resolved.items():
        try:
            result["presets"][name] = bench_preset(policy, name, configs, observations, options, baseline_flops,
                                                   progress, prepare)
        except Exception as err:  # noqa: BLE001 - e.g. sized for another policy: reported, the others run
            result["errors"][name] = f"{type(err).__name__}: {err}"
    if options.history:
        kv = kv_settings(policy)
        settings = {**{n: resolved[n] for n in result["presets"] if resolved[n]}, **kv}
        total = (len(settings) + 1) * max(options.history_lengths) * options.history_repeats
        hist = history_scaling(policy, settings, options.history_lengths, options.history_repeats,
                               options.history_window, options.device, options.demos_dir, prepare=prepare,
                               on_step=progress.task("history scaling (lockstep episodes)", total))
        hist["kv_efficient_settings"] = sorted(kv)
        result["history"] = hist
        result["errors"].update({f"history/{k}": v for k, v in hist["errors"].items()})
        for name in result["presets"]:
            if name in hist["summary"]:
                s = hist["summary"][name]
                result["presets"][name]["kv_bytes_reduction"] = s["kv_bytes_reduction"]
                result["presets"][name]["history_per_step_speedup"] = s["per_step_speedup"]
                result["presets"][name]["history_at_steps"] = s["at_steps"]
    return result
