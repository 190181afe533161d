"""Does a policy's push-v3 behaviour depend on where the puck is? Three checks, printed per line.

1. First chunk vs the expert, open loop: on the first frame of recorded demos (its own training data when DEMOS is
   the training folder) and for reach-v3 as a control, the correlation between the mean of the predicted first
   4 actions and the expert's, per axis, and the spread of each. A policy that localizes the target has a
   correlation near 1 and the expert's spread.
2. Closed loop, history mode, seeds 2000-2007: where the hand is when the gripper first closes, next to where
   the puck is, and whether the episode succeeds.
3. When does the hand stop following the puck, and how far does it follow? Correlation of the hand's x with the
   puck's x across episodes at env steps 8, 16, .., 40, and the gain (slope of hand x on puck x): in closed loop
   (seeds 2000-2011) and in the expert's demos (the same steps).

    MUJOCO_GL=egl .venv/bin/python scripts/push_diagnosis.py [POLICY] [DEMOS]   # defaults: reference, data/demos
"""

import sys
from pathlib import Path

import numpy as np
import torch

import vlaccel
from vlaccel.sim.env import make_env
from vlaccel.sim.evaluate import ACTION_REPEAT

FIRST_ACTIONS = 4
DEMOS_PER_TASK = 30


def first_chunk_vs_expert(policy, demos: Path, task: str) -> None:
    predicted, expert = [], []  # [N, 3] each: mean xyz of the first FIRST_ACTIONS actions
    for path in sorted((demos / task).glob("*.npz"))[:DEMOS_PER_TASK]:
        demo = np.load(path)
        policy.reset(str(demo["instruction"]))
        with torch.no_grad():
            chunk = np.asarray(policy.step(demo["images"][0], proprio=demo["states"][0]))  # [16, A]
        predicted.append(chunk[:FIRST_ACTIONS, :3].mean(0))
        expert.append(demo["actions"][:FIRST_ACTIONS, :3].mean(0))
    p, e = np.array(predicted), np.array(expert)
    corr = [float(np.corrcoef(p[:, i], e[:, i])[0, 1]) for i in range(3)]
    print(f"{task}: first chunk vs expert over {len(p)} demos: corr x/y/z {np.round(corr, 2)}, "
          f"spread expert {e.std(0).round(3)}, policy {p.std(0).round(3)}", flush=True)


def closed_loop_grasp_spot(policy, seeds=range(2000, 2008)) -> None:
    env = make_env("push-v3")
    for seed in seeds:
        obs = env.reset(seed=seed)
        policy.reset(env.instruction)
        puck = env.object_position().copy()
        success = done = False
        hand_at_close, closed_at = None, None
        while not (success or done):
            with torch.no_grad():
                chunk = np.asarray(policy.step(obs.image, proprio=obs.state))
            for k in range(min(ACTION_REPEAT, len(chunk))):
                obs, step_success, done = env.step(chunk[k], render=(k == ACTION_REPEAT - 1))
                success = success or step_success
                if closed_at is None and obs.state[3] < 0.5:
                    closed_at, hand_at_close = env.t, obs.state[:3].copy()
                if success or done:
                    break
        spot = "never closed" if closed_at is None else f"closed at step {closed_at}, hand xy {hand_at_close[:2].round(3)}"
        print(f"seed {seed}: puck xy {puck[:2].round(3)}, {spot}, success {success}", flush=True)


TRACK_STEPS = (8, 16, 24, 32, 40)


def _tracking_per_step(hand: list, puck: list) -> str:
    """hand: [episodes, len(TRACK_STEPS)] x; puck: [episodes] x -> their correlation and the gain (least-squares
    slope of hand x on puck x: 1 = the hand goes all the way to the puck's x, 0.25 = a quarter of the way) at each
    tracked step."""
    h, p = np.array(hand), np.array(puck)
    corr = [float(np.corrcoef(h[:, i], p)[0, 1]) for i in range(len(TRACK_STEPS))]
    gain = [float(np.polyfit(p, h[:, i], 1)[0]) for i in range(len(TRACK_STEPS))]
    return f"corr {np.round(corr, 2)}, gain {np.round(gain, 2)}"


def hand_tracks_puck(policy, demos: Path, seeds=range(2000, 2012)) -> None:
    env = make_env("push-v3")
    hand, puck = [], []  # [episodes, len(TRACK_STEPS)] hand x; [episodes] puck x
    for seed in seeds:
        obs = env.reset(seed=seed)
        policy.reset(env.instruction)
        puck.append(env.object_position()[0])
        xs = {}
        while env.t < max(TRACK_STEPS):
            with torch.no_grad():
                chunk = np.asarray(policy.step(obs.image, proprio=obs.state))
            for k in range(min(ACTION_REPEAT, len(chunk))):
                obs, _, _ = env.step(chunk[k], render=(k == ACTION_REPEAT - 1))
                xs.setdefault(env.t, obs.state[0])
        hand.append([xs[t] for t in TRACK_STEPS])
    print(f"closed loop, hand x vs puck x at steps {TRACK_STEPS}: {_tracking_per_step(hand, puck)}", flush=True)
    hand, puck = [], []
    for path in sorted((demos / "push-v3").glob("*.npz"))[:DEMOS_PER_TASK]:
        demo = np.load(path)
        every = int(demo["frame_every"])
        hand.append([demo["states"][min(t // every, len(demo["states"]) - 1), 0] for t in TRACK_STEPS])
        puck.append(demo["objects"][0, 0])
    print(f"expert demos, hand x vs puck x at steps {TRACK_STEPS}: {_tracking_per_step(hand, puck)}", flush=True)


def main(policy_name: str = "reference", demos: str = "data/demos") -> None:
    policy = vlaccel.load_policy(policy_name).eval()
    for task in ("push-v3", "reach-v3"):
        first_chunk_vs_expert(policy, Path(demos), task)
    closed_loop_grasp_spot(policy)
    hand_tracks_puck(policy, Path(demos))


if __name__ == "__main__":
    main(*sys.argv[1:3])
