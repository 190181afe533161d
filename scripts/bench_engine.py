"""Engine switches on the bundled policy: torch.compile (per part) and torchao int8, speed and action SQNR, plus
the graph breaks ``torch._dynamo.explain`` finds under each technique.

Baseline and each setting alternate in one process (1 thread, medians over repeats, the same observation);
SQNR over 16 of the bundled calibration frames against float32 eager. Compile time is the first call's.
The int8 rows need torchao (``pip install -e '.[quant]'``); they are skipped without it.

    .venv/bin/python scripts/bench_engine.py [repeats]
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import statistics
import sys
import time

import numpy as np
import torch

import vlaccel
from vlaccel.models.io import bundled_dir
from vlaccel.techniques import (CompileConfig, DenoiseStepsConfig, HeadCacheConfig, KVEfficientConfig,
                                QuantizeConfig, TokenPruneConfig)
from vlaccel.techniques.compile import graph_breaks
from vlaccel.techniques.layer_prune import load_calibration_observations

SETTINGS = {
    "compile, every part": [CompileConfig()],
    "compile, language model": [CompileConfig(parts=("language_model",))],
    "compile, action head": [CompileConfig(parts=("action_head",))],
    "3 DDIM steps": [DenoiseStepsConfig(steps=3)],
    "3 DDIM steps + compile (fast on a CPU without bf16)": [DenoiseStepsConfig(steps=3), CompileConfig()],
}
INT8 = {
    "int8 weight-only": [QuantizeConfig(scheme="int8_weight_only")],
    "int8 weight-only + compile": [QuantizeConfig(scheme="int8_weight_only"), CompileConfig()],
    "int8 dynamic": [QuantizeConfig(scheme="int8_dynamic")],
    "int8 dynamic + compile": [QuantizeConfig(scheme="int8_dynamic"), CompileConfig()],
}
BREAKS = {
    "none (plain policy)": [],
    "head-cache": [HeadCacheConfig(interval=5)],
    "token selection": [TokenPruneConfig(keep_fraction=28 / 64)],
}


def _sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    noise = float(((out - ref) ** 2).sum())
    return float("inf") if noise == 0 else 10 * np.log10(float((ref ** 2).sum()) / noise)


def main(repeats: int) -> None:
    torch.set_num_threads(1)
    policy = vlaccel.load_policy("reference")
    frames = load_calibration_observations(bundled_dir("reference") / "calibration.npz")[:16]
    one = frames[0]

    def call(p) -> float:
        start = time.perf_counter()
        p.predict_action(one["image"], one["instruction"], one["proprio"])
        return time.perf_counter() - start

    def actions(p) -> np.ndarray:
        return np.stack([p.predict_action(o["image"], o["instruction"], o["proprio"]) for o in frames])

    reference = actions(policy)
    settings = dict(SETTINGS)
    if importlib.util.find_spec("torchao") is not None:
        settings.update(INT8)
    else:
        print("torchao not installed: the int8 rows are skipped (pip install -e '.[quant]')")
    print("| setting | speedup vs float32 eager | action SQNR dB | first call s |")
    print("|---|---:|---:|---:|")
    for name, configs in settings.items():
        torch._dynamo.reset()
        accelerated = copy.deepcopy(policy)  # baseline and setting side by side, called alternately
        vlaccel.apply(accelerated, *configs)
        first = call(accelerated)
        out = actions(accelerated)
        ratios = [call(policy) / call(accelerated) for _ in range(repeats)]
        print(f"| {name} | {statistics.median(ratios):.2f}x | {_sqnr(reference, out):.1f} | {first:.1f} |", flush=True)
        del accelerated

    print("\n| techniques | module | calls per predict_action | graphs | graph breaks | reasons |")
    print("|---|---|---:|---:|---:|---|")
    for name, configs in BREAKS.items():
        with vlaccel.applied(policy, *configs) if configs else contextlib.nullcontext():
            report = graph_breaks(policy, lambda: policy.predict_action(one["image"], one["instruction"],
                                                                        one["proprio"]))
        for module, r in report.items():
            print(f"| {name} | {module} | {r['calls']} | {r['graphs']} | {r['graph_breaks']} | "
                  f"{'; '.join(r['reasons']) or '-'} |", flush=True)
    kv = [KVEfficientConfig(window=policy.config.tokens_per_frame * 4, retention="streaming")]
    with vlaccel.applied(policy, *kv):
        def episode() -> None:
            policy.reset(one["instruction"])
            for o in frames[:8]:
                policy.step(o["image"], o["proprio"])
            policy.end_episode()

        report = graph_breaks(policy, episode, parts=("language_model",))
    for module, r in report.items():
        print(f"| KV-Efficient (streaming, history mode) | {module} | {r['calls']} per episode | {r['graphs']} | "
              f"{r['graph_breaks']} | {'; '.join(r['reasons']) or '-'} |", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 9)
