"""How much does a policy's visual readout move the condition? Per task, the norm of the readout's output over the
norm of the cognition token's output (the part the readout adds to), in history mode over recorded demos.

    .venv/bin/python scripts/readout_norm.py POLICY [DEMOS]   # DEMOS default: data/demos (from `vlaccel collect`)
"""

import sys

import numpy as np

import vlaccel
from vlaccel.sim.data import load_demos

DEMOS_PER_TASK = 6
FRAMES = 20


def main() -> None:
    policy = vlaccel.load_policy(sys.argv[1])
    demos_dir = sys.argv[2] if len(sys.argv) > 2 else "data/demos"
    if policy.visual_readout is None:
        raise SystemExit(f"{sys.argv[1]} has no visual readout")
    out = {}
    policy.visual_readout.register_forward_hook(lambda m, a, o: out.__setitem__("readout", o))
    demos = load_demos(demos_dir)
    for task in sorted({d.task for d in demos}):
        ratios = []
        for d in [d for d in demos if d.task == task][:DEMOS_PER_TASK]:
            policy.reset(d.instruction)
            for t in range(min(len(d.images), FRAMES)):
                policy.step(d.images[t], None if d.states is None else d.states[t])
                readout = out["readout"][0].float()  # [D]
                cognition = policy.last_cognition[0] - readout  # [D]: the <cog> token's output alone
                ratios.append((readout.norm() / cognition.norm()).item())
        print(f"{task:24s} |readout| / |cognition token|: median {np.median(ratios):.3f} max {np.max(ratios):.3f}")


if __name__ == "__main__":
    main()
