"""Where does a policy's hand end up on ``reach-memory-long``? Tells a misremembered goal from a missing reach.

Plays SEEDS closed-loop episodes (history mode, full cache unless a preset is named, 4 actions per call, the seeds of ``vlaccel eval``)
and prints per episode: success, the hand's distance at the end to the true goal, to the centre of the goal
region (where a policy that forgot the cue would go) and to the holding waypoint (where it waits before go).

    MUJOCO_GL=egl .venv/bin/python examples/long_task_endpoints.py POLICY [SEEDS [PRESET]]

SEEDS defaults to 8 (from seed 1000); PRESET (e.g. ``kv-window``, the cache without the cue) is applied for every
episode; without it the policy keeps its full history.
"""

import sys

import numpy as np
import torch

import vlaccel
from vlaccel.sim.env import make_env
from vlaccel.sim.episode import ACTION_REPEAT, as_action_chunk

TASK = "reach-memory-long"
REGION_CENTRE = np.array([0.0, 0.8, 0.15])  # the goal region x in [-0.25, 0.25], y in [0.7, 0.9], z = 0.15
WAYPOINT = np.array([0.0, 0.6, 0.3])


def play(policy, env, seed: int) -> dict:
    obs = env.reset(seed=seed)
    policy.reset(env.instruction)
    success = done = False
    try:
        while not (success or done):
            chunk = as_action_chunk(policy.step(obs.image, proprio=obs.state))
            for k in range(min(ACTION_REPEAT, len(chunk))):
                obs, step_success, done = env.step(chunk[k], render=k == ACTION_REPEAT - 1)
                success = success or step_success
                if success or done:
                    break
    finally:
        policy.end_episode()
    hand = obs.state[:3]
    return {"seed": seed, "success": success, "to_goal": float(np.linalg.norm(hand - env.goal_position())),
            "to_centre": float(np.linalg.norm(hand - REGION_CENTRE)),
            "to_waypoint": float(np.linalg.norm(hand - WAYPOINT))}


def main() -> None:
    policy_name = sys.argv[1] if len(sys.argv) > 1 else "reference"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    torch.set_num_threads(2)
    preset = sys.argv[3] if len(sys.argv) > 3 else None
    policy = vlaccel.load_policy(policy_name)
    if preset is not None:
        vlaccel.apply(policy, *vlaccel.presets.get(preset, policy))
    env = make_env(TASK, image_size=policy.config.image_size)
    rows = []
    for seed in range(1000, 1000 + n):
        rows.append(play(policy, env, seed))
        r = rows[-1]
        print(f"seed {seed}: success {r['success']!s:5}  hand to goal {r['to_goal']:.3f} m, to region centre "
              f"{r['to_centre']:.3f} m, to waypoint {r['to_waypoint']:.3f} m", flush=True)
    fails = [r for r in rows if not r["success"]]
    if fails:
        med = {k: float(np.median([r[k] for r in fails])) for k in ("to_goal", "to_centre", "to_waypoint")}
        print(f"failed episodes ({len(fails)}/{n}), median distance of the hand at the end: to goal "
              f"{med['to_goal']:.3f} m, to region centre {med['to_centre']:.3f} m, to waypoint "
              f"{med['to_waypoint']:.3f} m; closer to the centre than to the goal: "
              f"{sum(r['to_centre'] < r['to_goal'] for r in fails)}/{len(fails)}; still within 5 cm of the "
              f"waypoint: {sum(r['to_waypoint'] < 0.05 for r in fails)}/{len(fails)}")


if __name__ == "__main__":
    main()
