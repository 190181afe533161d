#!/usr/bin/env bash
# Compensation of the reach-choice-long fine-tune (recipes/long_horizon/choice.toml) into a policy that reads its
# history through the KV-Efficient gated cache, with its gate. The policy's trainable parts (the language model's
# layers, the action head, the visual readout) learn together with the gate and the aggregator, the soft gated
# cache in place, distilled from teachers with their full history: the fine-tune itself on reach-choice-long, the
# bundled reference on the core suite's tasks (which the fine-tune should not have changed), and the same targets
# again for the trained policy with its full history (--full-history-weight), so that it keeps working without
# the compressed cache too. About 35 minutes on a 2-core CPU.
#   bash recipes/long_horizon/choice-compensate.sh FINE_TUNED_POLICY DEMOS OUT [extra train-kv-gate flags]
set -euo pipefail
policy="${1:?the fine-tuned policy folder}"
data="${2:?the demo folder of recipes/long_horizon/choice-data.sh}"
out="${3:?the folder the compensated policy (and its kv_gate/) is written to}"
shift 3
vlaccel train-kv-gate --policy "$policy" --data "$data" --policy-out "$out" \
  --compensate 'language_model.layers.*' 'language_model.norm.*' 'action_head.dit.*' 'visual_readout.*' \
  --compensate-lr 3e-5 --full-history-weight 1 \
  --teacher reference --teacher-tasks reach-v3 push-v3 drawer-open-v3 drawer-close-v3 button-press-topdown-v3 \
  window-open-v3 plate-slide-v3 reach-memory \
  --short-episodes whole --window 132 --budget 4 --sinks 132 --max-frames 46 --min-frames 38 --steps 400 \
  --minutes 35 --target-retention 0.15 --cognition-weight 0.25 --action-weight 30 --threads 2 "$@"
