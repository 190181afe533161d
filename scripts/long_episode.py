"""A long history episode of the bundled policy: KV memory, process memory and positions, step by step.

Runs ``STEPS`` policy calls (``reset`` once, then ``step`` per frame; frames cycle through the bundled calibration
set) with a preset applied (``kv-efficient``: budget mode, bounded memory), 1 thread, and prints at steps 10, 100,
1000, ... and the last: stored KV tokens per layer, KV bytes held by the cache tensors, the process's RSS, the
episode's next position. An episode ends where its positions would pass ``max_positions`` (496 observations for
the bundled policy): the policy refuses that step, and the script prints the refusal.

    .venv/bin/python scripts/long_episode.py [STEPS] [PRESET]      # defaults: 2000 kv-efficient
"""

from __future__ import annotations

import resource
import sys
import time
import torch

import vlaccel
from vlaccel.errors import PositionLimitError
from vlaccel.techniques.layer_prune import load_calibration_observations

INSTRUCTION = "reach the goal"


def kv_bytes(cache) -> int:
    return int(sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers))


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(steps: int, preset: str) -> None:
    torch.set_num_threads(1)
    policy = vlaccel.load_policy("reference")
    frames = [o["image"] for o in load_calibration_observations(
        vlaccel.models.io.bundled_dir("reference") / "calibration.npz")]
    if preset != "none":
        vlaccel.apply(policy, *vlaccel.presets.get(preset))
    policy.reset(INSTRUCTION)
    report = {10, steps} | {10 ** k for k in range(2, 7) if 10 ** k < steps}
    start = time.perf_counter()
    for step in range(1, steps + 1):
        try:
            policy.step(frames[step % len(frames)])
        except PositionLimitError as refused:
            print(f"step {step:6d} refused: {refused}")
            step -= 1
            break
        if step in report:
            report_line(policy.cache, step, start)
    if step not in report:
        report_line(policy.cache, step, start)


def report_line(cache, step: int, start: float) -> None:
    print(f"step {step:6d}: {cache.layers[0].keys.shape[-2]:5d} KV tokens/layer, {kv_bytes(cache) / 2**20:7.2f} MiB "
          f"KV, RSS {rss_mib():6.0f} MiB, next position {cache.get_seq_length()}, {time.perf_counter() - start:6.1f} s",
          flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000, sys.argv[2] if len(sys.argv) > 2 else "kv-efficient")
