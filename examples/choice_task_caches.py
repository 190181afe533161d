"""Where the hand goes on reach-choice-long under each KV cache: which target it ends nearest, and how far.

Runs the saved policy in history mode on the same seeds under caches that keep different parts of the history:

- ``full``: every frame (the baseline);
- ``cue-raw``: the first 18 frames raw (every cue draw ends by call 17) and the last 2: what a retention that kept
  the cue exactly as the policy saw it in training would hold;
- ``cue-raw reindexed``: the same with the kept slots re-indexed 0..N-1 (``positions="reindexed"``) instead of
  their logical positions in the episode;
- ``all-summaries``: sinks + window raw and every older frame as a one-slot mean summary, none evicted: the most any
  retention of one-slot summaries can keep, so an upper bound for the gate at any budget;
- ``kv-streaming`` and ``kv-window``: the presets.

- ``kv-efficient``: the gated preset, when the policy folder holds a gate trained for it (``POLICY/kv_gate``).

Usage: python examples/choice_task_caches.py POLICY_DIR [EPISODES] [FIRST_SEED]
Prints one row per cache: success, wrong-target endings, the target the hand ends nearest (and whether that is
the cued one), and the median end distance to the cued target. Under the gate it also prints, at the go signal,
whether a cue frame's summary is among the kept ones, and the gate's g for the cue chunks against the others
(one chunk per frame; chunk j is frame j + 2, after the 2 sink frames).
"""

from __future__ import annotations

import os
import sys

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")


def caches() -> dict[str, list]:
    import vlaccel
    from vlaccel.techniques.kv_efficient.config import KVEfficientConfig

    kept = {"window_frames": 2, "sinks_frames": 2}
    return {
        "full": [],
        "cue-raw": [KVEfficientConfig(window_frames=2, sinks_frames=18, retention="streaming")],
        "cue-raw reindexed": [KVEfficientConfig(window_frames=2, sinks_frames=18, retention="streaming",
                                                positions="reindexed")],
        "all-summaries": [KVEfficientConfig(**kept, retention="mean")],
        "kv-streaming": vlaccel.presets.get("kv-streaming"),
        "kv-window": vlaccel.presets.get("kv-window"),
        "kv-efficient": vlaccel.presets.get("kv-efficient"),
    }


class GateTrace:
    """The gate's g (mean over layers and batch) of every chunk as it closes, by chunk id."""

    def __init__(self, retention) -> None:
        self.g: dict[int, float] = {}
        scores = retention.gate_scores

        def traced(chunks, states):
            g = scores(chunks, states)  # [L, B, n]
            for m, value in enumerate(g.mean(dim=(0, 1)).tolist()):
                self.g[chunks.first_id + m] = value
            return g

        retention.gate_scores = traced


def run(policy_dir: str, episodes: int, seed0: int) -> None:
    import torch

    import vlaccel
    from vlaccel.sim.env import make_env
    from vlaccel.sim.episode import as_action_chunk

    torch.set_num_threads(max(1, int(os.environ.get("THREADS", "2"))))
    policy = vlaccel.load_policy(policy_dir)
    env = make_env("reach-choice-long")
    targets = np.asarray(env.spec.cue.targets)  # [3, 3]
    print(f"{'cache':18} {'success':>8} {'wrong':>6} {'ends nearest cued':>18} {'median dist to cued (m)':>24}")
    for name, configs in caches().items():
        handle = vlaccel.apply(policy, *configs) if configs else None
        wins = wrong = nearest_cued = cue_kept = 0
        dists, g_cue, g_other = [], [], []
        for seed in range(seed0, seed0 + episodes):
            obs = env.reset(seed=seed)
            policy.reset(env.instruction)
            trace = GateTrace(policy.cache.retention) if name == "kv-efficient" else None
            cue = env.cue_times
            cue_frames = {i for i in range(60) if cue.cue_start <= 4 * i < cue.cue_end}
            success = done = False
            calls, at_go_seen = 0, False
            while not (success or done):
                if trace is not None and not at_go_seen and 4 * calls >= cue.go_step:  # the first call after go
                    at_go_seen = True
                    kept = {int(j) + 2 for j in policy.cache.layers[0].chunk_ids}  # frames of the kept summaries
                    cue_kept += bool(kept & cue_frames)
                chunk = as_action_chunk(policy.step(obs.image, proprio=obs.state))
                calls += 1
                for k in range(4):
                    obs, step_success, done = env.step(chunk[k], render=(k == 3))
                    success = success or step_success
                    if success or done:
                        break
            if trace is not None:
                g_cue += [g for j, g in trace.g.items() if j + 2 in cue_frames]
                g_other += [g for j, g in trace.g.items() if j + 2 not in cue_frames]
            policy.end_episode()
            hand = obs.state[:3].astype(np.float64)  # [3]
            goal = env.goal_position()  # [3]
            d = np.linalg.norm(targets - hand, axis=1)  # [3]
            wins += success
            wrong += env.wrong_choice
            nearest_cued += bool(np.allclose(targets[int(np.argmin(d))], goal))
            dists.append(float(np.linalg.norm(goal - hand)))
        if handle is not None:
            handle.remove()
        print(f"{name:18} {wins:>4}/{episodes:<3} {wrong:>6} {nearest_cued:>14}/{episodes:<3} "
              f"{np.median(dists):>24.3f}", flush=True)
        if g_cue:
            print(f"    gate: a cue frame's summary kept at go in {cue_kept}/{episodes} episodes; g of cue chunks "
                  f"{np.mean(g_cue):.3f} (n={len(g_cue)}), of the others {np.mean(g_other):.3f} (n={len(g_other)})")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python examples/choice_task_caches.py POLICY_DIR [EPISODES] [FIRST_SEED]")
    run(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 12, int(sys.argv[3]) if len(sys.argv) > 3 else 1000)
