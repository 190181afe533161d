"""Where does the hand stop relative to the task's object? Closed loop, history mode, next to the scripted expert.

For each seed: success and the hand-minus-object offset (xyz, m) at the hand's closest approach to the
object (window-open-v3: the handle), for the expert and for each POLICY; then per runner the successes and the
median offset, of all episodes and of the failures. A policy that localizes the object stops
where the expert does; a systematic offset on one axis is a bias the policy learned, a scattered one is noise.

    MUJOCO_GL=egl .venv/bin/python scripts/reach_offset_diagnosis.py TASK SEED0 N POLICY [POLICY ...]
    # e.g. window-open-v3 3000 16 reference runs/rel_c47/policy   (about 2 min per policy)
"""

import sys

import numpy as np
import torch

import vlaccel
from vlaccel.sim.env import make_env
from vlaccel.sim.evaluate import ACTION_REPEAT


def closest_offset(env, obs, act) -> tuple[bool, np.ndarray]:
    """Run one episode from ``obs`` with ``act(obs) -> actions``; success and the offset [3] at closest approach."""
    done, success, offsets = False, False, []
    while not (success or done):
        actions = act(obs)
        for k, action in enumerate(actions):
            obs, step_success, done = env.step(action, render=(k == len(actions) - 1))
            offsets.append(obs.state[:3] - env.object_position())  # [3]
            success = success or step_success
            if success or done:
                break
    offsets = np.asarray(offsets)  # [T, 3]
    return success, offsets[np.argmin(np.linalg.norm(offsets, axis=1))]


def main() -> None:
    if len(sys.argv) < 5:
        raise SystemExit(__doc__)
    task, seed0, n, labels = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    env = make_env(task)
    runners = {"expert": None, **{label: vlaccel.load_policy(label) for label in labels}}
    for label, policy in runners.items():
        rows = []
        for seed in range(seed0, seed0 + n):
            obs = env.reset(seed=seed, render=policy is not None)
            if policy is None:
                success, off = closest_offset(env, obs, lambda _obs: [env.expert_action()])
            else:
                policy.reset(env.instruction)

                def act(obs, policy=policy):
                    with torch.no_grad():
                        return np.asarray(policy.step(obs.image, proprio=obs.state))[:ACTION_REPEAT]  # [4, A]

                success, off = closest_offset(env, obs, act)
            rows.append((success, off))
            print(f"{label[:24]:24s} seed {seed} success {int(success)} offset at closest {np.round(off, 3)}", flush=True)
        ok = np.array([s for s, _ in rows])
        offs = np.array([o for _, o in rows])  # [N, 3]
        print(f"{label[:24]:24s} {ok.sum()}/{n} successes; median offset {np.round(np.median(offs, 0), 3)}, "
              f"failures' median {np.round(np.median(offs[~ok], 0), 3) if (~ok).any() else '-'}", flush=True)


if __name__ == "__main__":
    main()
