"""Closed-loop diagnosis of a contact task: closest hand-object distance, when the gripper closes, whether the
object moved, and how far the training-only scene probe's read-out of the object's offset from the hand (taken
from a ``train-reference --aux-object-weight`` checkpoint) is from the truth, at the first frame and over the
episode. Eight history-mode episodes, seeds 1000-1007.

    MUJOCO_GL=egl .venv/bin/python scripts/closed_loop_scene_probe.py POLICY_DIR RUN_DIR/checkpoint.pt TASK
"""
import sys
import numpy as np, torch, vlaccel
from vlaccel.sim.env import make_env
pol_path, ckpt_path, task = sys.argv[1], sys.argv[2], sys.argv[3]
policy = vlaccel.load_policy(pol_path).eval()
ck = torch.load(ckpt_path, weights_only=False)
W, b = ck["probes"]["scene.weight"].float(), ck["probes"]["scene.bias"].float()
env = make_env(task)
for seed in range(1000, 1008):
    obs = env.reset(seed=seed); policy.reset(env.instruction)
    obj0 = env.object_position(); goal = env.goal_position()
    dmin, errs, grip_closed_at, done, succ = 9, [], None, False, False
    while not (succ or done):
        with torch.no_grad():
            chunk = np.asarray(policy.step(obs.image, proprio=obs.state))
        z = policy.last_cognition.float().reshape(-1)
        pred = ((W @ z + b) * 0.1).numpy().reshape(2, 3)
        hand = obs.state[:3]
        errs.append(np.linalg.norm(pred[0] - (env.object_position() - hand)))
        for k in range(4):
            obs, s, done = env.step(chunk[k], render=(k == 3)); succ |= s
            d = np.linalg.norm(env.object_position() - obs.state[:3]); dmin = min(dmin, d)
            if grip_closed_at is None and obs.state[3] < 0.5: grip_closed_at = env.t
            if succ or done: break
    moved = np.linalg.norm(env.object_position()[:2] - obj0[:2])
    print(f"seed {seed} success {succ} steps {env.t} min hand-obj {dmin:.3f} gripper<0.5 at {grip_closed_at} "
          f"obj moved {moved:.3f} obj-goal {np.linalg.norm(env.object_position()[:2]-goal[:2]):.3f} "
          f"probe err first {errs[0]:.3f} median {np.median(errs):.3f}", flush=True)
