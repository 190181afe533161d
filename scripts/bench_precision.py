"""PrecisionConfig on the bundled policy: speed per ``predict_action`` and action SQNR against float32.

Baseline and each setting alternate in one process (1 thread, medians over repeats, the same observation and
the same initial noise); SQNR over the 32 bundled calibration frames. ``vlaccel bench`` reports end-to-end
speed of the structural presets; this is the precision switch alone and with the head cache.

    .venv/bin/python scripts/bench_precision.py [repeats]
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch

import vlaccel
from vlaccel.models.io import bundled_dir
from vlaccel.techniques import HeadCacheConfig, PrecisionConfig
from vlaccel.techniques.layer_prune import load_calibration_observations

SETTINGS = {
    "float32 (neutral)": [PrecisionConfig(dtype="float32")],
    "bf16": [PrecisionConfig()],
    "bf16, action_out fp32": [PrecisionConfig(keep_float32=("action_head.dit.action_out",))],
    "bf16 vision + LM only": [PrecisionConfig(parts=("vision", "language_model"))],
    "fp16": [PrecisionConfig(dtype="float16")],
    "bf16 + head-cache": [PrecisionConfig(), HeadCacheConfig(interval=5)],
}


def main(repeats: int) -> None:
    torch.set_num_threads(1)
    policy = vlaccel.load_policy("reference")
    frames = load_calibration_observations(bundled_dir("reference") / "calibration.npz")
    one = frames[0]

    def call() -> float:
        start = time.perf_counter()
        policy.predict_action(one["image"], one["instruction"], one["proprio"])
        return time.perf_counter() - start

    def actions() -> np.ndarray:
        return np.stack([policy.predict_action(o["image"], o["instruction"], o["proprio"]) for o in frames])

    reference = actions()
    print(f"{'setting':24s} {'speedup':>8s} {'SQNR dB':>8s}")
    for name, configs in SETTINGS.items():
        ratios = []
        with vlaccel.applied(policy, *configs):
            out = actions()
        for _ in range(repeats):
            base = call()
            handle = vlaccel.apply(policy, *configs)
            fast = call()
            handle.remove()
            ratios.append(base / fast)
        noise = float(((out - reference) ** 2).sum())
        sqnr = float("inf") if noise == 0 else 10 * np.log10(float((reference ** 2).sum()) / noise)
        print(f"{name:24s} {statistics.median(ratios):7.2f}x {sqnr:8.1f}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
