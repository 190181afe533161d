"""Closed-loop diagnosis of a contact task: closest hand-object distance, when the gripper closes, whether the
object moved, and how far the training-only scene probe's read-out of the object's offset from the hand (taken
from a ``train-reference --aux-object-weight`` checkpoint) is from the truth, at the first frame and over the
episode. Eight history-mode episodes, seeds 1000-1007.

    MUJOCO_GL=egl .venv/bin/python scripts/closed_loop_scene_probe.py POLICY_DIR RUN_DIR/checkpoint.pt TASK
"""

import sys

import numpy as np
import torch

import vlaccel
from vlaccel.sim.env import make_env
from vlaccel.sim.evaluate import ACTION_REPEAT
from vlaccel.training.auxiliary import WAYPOINT_SCALE


def main(policy_path: str, checkpoint: str, task: str) -> None:
    policy = vlaccel.load_policy(policy_path).eval()
    probes = torch.load(checkpoint, weights_only=False)["probes"]
    weight, bias = probes["scene.weight"].float(), probes["scene.bias"].float()  # [6, D], [6]
    env = make_env(task)
    for seed in range(1000, 1008):
        obs = env.reset(seed=seed)
        policy.reset(env.instruction)
        start, goal = env.object_position(), env.goal_position()
        closest, errors, gripper_closed_at, success, done = np.inf, [], None, False, False
        while not (success or done):
            with torch.no_grad():
                chunk = np.asarray(policy.step(obs.image, proprio=obs.state))
            z = policy.last_cognition.float().reshape(-1)  # [D]
            read_out = ((weight @ z + bias) * WAYPOINT_SCALE).numpy().reshape(2, 3)  # object, goal minus hand (m)
            errors.append(np.linalg.norm(read_out[0] - (env.object_position() - obs.state[:3])))
            for k in range(min(ACTION_REPEAT, len(chunk))):
                obs, step_success, done = env.step(chunk[k], render=(k == ACTION_REPEAT - 1))
                success = success or step_success
                closest = min(closest, np.linalg.norm(env.object_position() - obs.state[:3]))
                if gripper_closed_at is None and obs.state[3] < 0.5:
                    gripper_closed_at = env.t
                if success or done:
                    break
        moved = np.linalg.norm(env.object_position()[:2] - start[:2])
        to_goal = np.linalg.norm(env.object_position()[:2] - goal[:2])
        print(f"seed {seed} success {success} steps {env.t} closest hand-object {closest:.3f} m, gripper closed at "
              f"step {gripper_closed_at}, object moved {moved:.3f} m, object-goal {to_goal:.3f} m | probe error "
              f"first frame {errors[0]:.3f} m, median {np.median(errors):.3f} m", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
