#!/usr/bin/env bash
# Demos for recipes/long_horizon/choice.toml, into DIR (default data/choice): 300 clean and 100 noisy (DART)
# expert episodes of reach-choice-long, and 40 episodes of each core-suite task (replayed so the fine-tune keeps
# the core suite's level). About 21 minutes on a 2-core CPU with one worker.
set -euo pipefail
out="${1:-data/choice}"
vlaccel collect --tasks reach-choice-long --episodes 300 --out "$out"
vlaccel collect --tasks reach-choice-long --episodes 100 --seed 10000 --action-noise 0.2 --noise-hold 8 --out "$out"
vlaccel collect --episodes 40 --out "$out"
