"""Where does the bundled policy lose the object's position? Linear probes on its features at episode start.

For each task, 150 reset scenes (seeds 0..149): the frame's 64 projected visual tokens and the cognition
feature (what the action head is conditioned on, ``policy.last_cognition``) are regressed onto the object's and
the goal's xy with ridge regression; printed is the 5-fold cross-validated R^2 (best of a few ridge strengths).

    MUJOCO_GL=egl .venv/bin/python scripts/probe_positions.py [POLICY]   # POLICY: 'reference' (default) or a path

Positions come from the simulator (``SimEnv.object_position`` / ``goal_position``), current at reset.
"""

import sys

import numpy as np
import torch

import vlaccel
from vlaccel.sim.env import make_env

SEEDS = 150
TASKS = ("push-v3", "reach-v3", "window-open-v3")


def ridge_cv_r2(x: np.ndarray, y: np.ndarray, alphas=(0.1, 1, 10, 100, 1000), folds: int = 5) -> float:
    """Best mean cross-validated R^2 over ``alphas`` of ridge regression x [N, D] -> y [N, K] (kernel form)."""
    idx = np.random.default_rng(0).permutation(len(x))
    best = -np.inf
    for alpha in alphas:
        pred = np.zeros_like(y)
        for held in np.array_split(idx, folds):
            train = np.setdiff1d(idx, held)
            mu, y_mu = x[train].mean(0), y[train].mean(0)
            xt = x[train] - mu
            coef = xt.T @ np.linalg.solve(xt @ xt.T + alpha * np.eye(len(train)), y[train] - y_mu)
            pred[held] = (x[held] - mu) @ coef + y_mu
        r2 = 1 - ((y - pred) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)
        best = max(best, float(r2.mean()))
    return best


def main() -> None:
    policy = vlaccel.load_policy(sys.argv[1] if len(sys.argv) > 1 else "reference").eval()
    n_vis = policy.config.visual_tokens
    print("cross-validated R^2 of a linear probe (1 = position fully recoverable, 0 = not at all)")
    for task in TASKS:
        env = make_env(task)
        visual, cognition, obj, goal = [], [], [], []
        for seed in range(SEEDS):
            o = env.reset(seed=seed)
            obj.append(env.object_position()[:2])
            goal.append(env.goal_position()[:2])
            with torch.no_grad():
                tokens = policy.embed_observation(policy.pixels_from_images(o.image), policy.proprio_tensor(o.state))
                policy.predict_action(o.image, env.instruction, proprio=o.state)
            visual.append(tokens[0, :n_vis].float().flatten().numpy())  # [64 * D]
            cognition.append(policy.last_cognition.float().flatten().numpy())  # [D]
        v, c, ob, g = map(np.asarray, (visual, cognition, obj, goal))
        print(f"{task:16s} object xy: visual tokens {ridge_cv_r2(v, ob):5.2f}  cognition {ridge_cv_r2(c, ob):5.2f} | "
              f"goal xy: visual tokens {ridge_cv_r2(v, g):5.2f}  cognition {ridge_cv_r2(c, g):5.2f}", flush=True)


if __name__ == "__main__":
    main()
