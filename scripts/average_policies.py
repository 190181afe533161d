"""Weight-space average of saved reference policies (WiSE-FT, Wortsman et al. 2022, eq. 1: theta = (1 - a)
theta_0 + a theta_1, generalized to any convex combination).

The continuations of the bundled policy all start from one checkpoint, so an interpolation between two of them
is itself a working policy. Whether it keeps what each end is good at is an empirical question: for push and
window-open it did not (docs/reference_policy.md, sessions 15-16: push's gain is lost a quarter of the way back).

    .venv/bin/python scripts/average_policies.py OUT POLICY:WEIGHT POLICY:WEIGHT [...]
    # e.g. runs/soup/policy runs/rel_c47/policy:0.5 runs/push6/policy:0.5

Weights are normalized to sum to 1. All policies must share one config (same architecture). The average is
computed in float32 and stored in bfloat16 like the bundled checkpoint.
"""

import sys

import torch

from vlaccel.models.io import load_reference, save_policy


def average(out: str, specs: list[str]) -> None:
    paths, weights = [], []
    for spec in specs:
        path, sep, weight = spec.rpartition(":")
        if not sep or not path:
            raise SystemExit(f"expected POLICY:WEIGHT, got {spec!r}")
        paths.append(path)
        weights.append(float(weight))
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise SystemExit(f"weights must be non-negative with a positive sum, got {weights}")
    total = sum(weights)
    policies = [load_reference(p) for p in paths]
    configs = {p.config.to_json() for p in policies}
    if len(configs) != 1:
        raise SystemExit("the policies differ in config (architecture or sampler); average only one lineage")
    merged = policies[0]
    states = [p.state_dict() for p in policies]
    with torch.no_grad():
        for name, tensor in merged.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(sum(w / total * s[name].float() for w, s in zip(weights, states, strict=True)))
    card = {"averaged_from": [{"policy": p, "weight": w / total} for p, w in zip(paths, weights, strict=True)],
            "command": "python scripts/average_policies.py " + " ".join([out, *specs])}
    save_policy(merged, out, card=card, storage_dtype=torch.bfloat16)
    print(f"saved the average of {len(paths)} policies to {out}")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    average(sys.argv[1], sys.argv[2:])
