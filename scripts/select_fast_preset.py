"""The selection run behind the ``fast`` preset: candidate head settings on selection seeds 2000-2019 (never the
evaluation seeds 1000-1049), history mode, the tasks where approximations tip episodes (push, window-open) and
reach. Results go to one resumable results file; the summary prints per task and candidate.

    MUJOCO_GL=egl .venv/bin/python scripts/select_fast_preset.py runs/eval/select_fast.jsonl

(about 25 minutes on a 2-core CPU, one process; bf16 runs 3.9x slower than float32 on a CPU without native bf16)
"""

from __future__ import annotations

import sys

import torch

import vlaccel
from vlaccel.sim.evaluate import run_eval
from vlaccel.techniques import DenoiseStepsConfig, TokenPruneConfig

CANDIDATES = {
    "sel-ddim3": lambda: [DenoiseStepsConfig(steps=3)],
    "sel-ddim2": lambda: [DenoiseStepsConfig(steps=2)],
    "sel-tok28-ddim3": lambda: [TokenPruneConfig(keep_fraction=28 / 64), DenoiseStepsConfig(steps=3)],
}


def main(out: str) -> None:
    torch.set_num_threads(1)
    for name, configs in CANDIDATES.items():
        vlaccel.presets.register(name, "selection candidate for the fast preset")(configs)
    summary = run_eval("reference", tasks=["push-v3", "window-open-v3", "reach-v3"], episodes=20,
                       presets=[*CANDIDATES, "bf16"], history=True, workers=0, out_path=out, seed0=2000,
                       progress=False)
    for task, conditions in summary["tasks"].items():
        print(task, {c: f"{v['successes']}/{v['n']}" for c, v in conditions.items()})


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/eval/select_fast.jsonl")
