#!/usr/bin/env bash
# Replays the training of the bundled reference policy, reference-v8, from random weights: the demo folders
# (data.sh), then one `vlaccel train-reference` run per file, in lineage order. Each stage starts from the
# previous stage's runs/reference-*/policy; the last two stages distill toward runs/reference-v7/policy.
# Every stage checkpoints into its run_dir and resumes from there, so the script can be rerun after an
# interruption. About 7 hours of training on a 2-core CPU (10517 steps in all).
#
# What to expect: the configurations are those of the releases, with steps fixed to what each run completed
# (the originals stopped on wall-time budgets; see each file's comment for where a replay differs). The
# training code has changed since the early stages, so the weights will not be bit-identical to the released
# ones. Compare with the bundled policy on the evaluation seeds:
#   vlaccel eval --policy runs/reference-v8/policy --episodes 50 --history --workers 2
# (reference-v8: 367/400, push 27/50, window-open 40/50).
# Run from the repository root.
set -euo pipefail

bash recipes/reference/data.sh

for stage in v1 v2 v3 v4 v5 v6 v7 v8-readout v8-readout-push v8-part1 v8; do
    vlaccel train-reference --config "recipes/reference/$stage.toml"
done
