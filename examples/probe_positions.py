"""Where does the bundled policy lose the object's position? Linear probes on its features at episode start.

For each task, 150 reset scenes (seeds 0..149): the frame's 64 projected visual tokens (the LM's input), the LM's
last-layer output at those 64 positions, and the cognition feature (what the action head is conditioned on,
``policy.last_cognition``) are regressed onto the object's and the goal's xy with ridge regression; printed is the
5-fold cross-validated R^2 of x and of y separately (each at its best of a few ridge strengths).

    MUJOCO_GL=egl .venv/bin/python examples/probe_positions.py [POLICY [TASK ...]]   # POLICY: 'reference' (default) or a path

Positions come from the simulator (``SimEnv.object_position`` / ``goal_position``), current at reset.
"""

import sys

import numpy as np
import torch

import vlaccel
from vlaccel.sim.env import make_env

SEEDS = 150
TASKS = ("push-v3", "reach-v3", "window-open-v3")


def ridge_cv_r2(x: np.ndarray, y: np.ndarray, alphas=(0.1, 1, 10, 100, 1000), folds: int = 5) -> np.ndarray:
    """Per-output cross-validated R^2 [K] of ridge regression x [N, D] -> y [N, K] (kernel form), each output
    scored at its best ridge strength in ``alphas``."""
    idx = np.random.default_rng(0).permutation(len(x))
    best = np.full(y.shape[1], -np.inf)
    for alpha in alphas:
        pred = np.zeros_like(y)
        for held in np.array_split(idx, folds):
            train = np.setdiff1d(idx, held)
            mu, y_mu = x[train].mean(0), y[train].mean(0)
            xt = x[train] - mu
            coef = xt.T @ np.linalg.solve(xt @ xt.T + alpha * np.eye(len(train)), y[train] - y_mu)
            pred[held] = (x[held] - mu) @ coef + y_mu
        r2 = 1 - ((y - pred) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)
        best = np.maximum(best, r2)
    return best


def main() -> None:
    policy = vlaccel.load_policy(sys.argv[1] if len(sys.argv) > 1 else "reference").eval()
    n_vis = policy.config.visual_tokens
    lm_out = {}
    policy.language_model.register_forward_hook(lambda m, a, out: lm_out.update(last=out.last_hidden_state))
    print("cross-validated R^2 of a linear probe (1 = position fully recoverable, 0 = not at all)")
    readout = {}
    if policy.visual_readout is not None:  # the readout's own output, standardized per feature (it is small)
        policy.visual_readout.register_forward_hook(lambda m, a, out: readout.update(last=out))
    print("  order per axis: visual tokens (LM input) / LM output at the visual tokens / cognition"
          + (" / visual readout alone (standardized)" if policy.visual_readout is not None else ""))
    for task in sys.argv[2:] or TASKS:
        env = make_env(task)
        visual, lm_visual, cognition, pooled, obj, goal = [], [], [], [], [], []
        for seed in range(SEEDS):
            o = env.reset(seed=seed)
            obj.append(env.object_position()[:2])
            goal.append(env.goal_position()[:2])
            with torch.no_grad():
                tokens = policy.embed_observation(policy.pixels_from_images(o.image), policy.proprio_tensor(o.state))
                policy.predict_action(o.image, env.instruction, proprio=o.state)
            visual.append(tokens[0, :n_vis].float().flatten().numpy())  # [64 * D]
            lm_visual.append(lm_out["last"][0, :n_vis].float().flatten().numpy())  # observation call: [64 * D]
            cognition.append(policy.last_cognition.float().flatten().numpy())  # [D]
            if "last" in readout:
                pooled.append(readout["last"][0].float().numpy())  # [D]
        v, lv, c, ob, g = map(np.asarray, (visual, lm_visual, cognition, obj, goal))
        features = [v, lv, c]
        if pooled:
            r = np.asarray(pooled)
            features.append((r - r.mean(0)) / (r.std(0) + 1e-8))
        for name, y in (("object", ob), ("goal", g)):
            per_axis = [ridge_cv_r2(x, y) for x in features]  # len(features) x [2]
            shown = " | ".join(f"{axis}: " + " / ".join(f"{r[i]:.2f}" for r in per_axis) for i, axis in enumerate("xy"))
            print(f"{task:16s} {name:6s} {shown}", flush=True)


if __name__ == "__main__":
    main()
