#!/usr/bin/env bash
# The demo folder the long-horizon fine-tunes in this directory read (data/long-horizon): Meta-World's scripted
# experts on reach-memory-long, clean and DART (the expert's action plus held Gaussian noise, stored with the
# clean label), plus a replay of the 8 core tasks so a fine-tune keeps them. Episodes whose expert fails are not
# saved; already collected episodes are skipped, so the script can be rerun after an interruption. About 6
# minutes with 2 workers. Run from the repository root (MUJOCO_GL=egl where there is no display).
set -euo pipefail
out=data/long-horizon
vlaccel collect --tasks reach-memory-long --episodes 200 --out "$out"                 # 200 kept
vlaccel collect --episodes 40 --out "$out"                                             # 320 kept, seeds 0-39
vlaccel collect --tasks reach-memory-long --action-noise 0.2 --noise-hold 8 --seed 10000 --episodes 60 --out "$out"  # 57 kept
