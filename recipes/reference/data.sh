#!/usr/bin/env bash
# The demo folders the recipes in this directory read (`data = ...` in each TOML file), built with
# `vlaccel collect` (Meta-World's scripted experts, the 8 tasks of the core suite unless --tasks names one).
# Episodes whose expert fails are not saved, so the counts below are what was kept when the releases were
# trained. Already collected episodes are skipped, so this script can be rerun after an interruption.
# Run from the repository root (MUJOCO_GL=egl where there is no display).
set -euo pipefail

# data/reference-v1 (reference-v1 to -v4): 60 clean demos per task, seeds 0-59; 479 kept.
vlaccel collect --episodes 60 --out data/reference-v1

# data/reference-v5 (reference-v5): 180 clean demos per task (seeds 0-179, of which 0-59 are v1's; 1439 kept)
# plus DART demos, the expert's action plus held Gaussian noise, stored with the clean label (seeds
# 10000-10089 per task; 664 kept). 2103 demos.
mkdir -p data/reference-v5
cp -rn data/reference-v1/. data/reference-v5/
vlaccel collect --episodes 180 --out data/reference-v5
vlaccel collect --action-noise 0.2 --noise-hold 8 --seed 10000 --episodes 90 --out data/reference-v5

# data/reference-v6 (reference-v6 to -v8): v5's demos plus 800 clean push demos (seeds 180-979; 799 kept) and
# 200 DART push attempts (seeds 10090-10289; 109 kept). 3011 demos, 1132 of them push.
mkdir -p data/reference-v6
cp -rn data/reference-v5/. data/reference-v6/
vlaccel collect --tasks push-v3 --seed 180 --episodes 800 --out data/reference-v6
vlaccel collect --tasks push-v3 --action-noise 0.2 --noise-hold 8 --seed 10090 --episodes 200 --out data/reference-v6
