"""One episode under different KV caches: where a bounded cache's actions leave the full cache's, and which
history the episode needs raw.

Usage: python examples/episode_caches.py TASK SEED [POLICY]   (POLICY: 'reference' by default)

1. Plays the episode in history mode with the full cache and records every observation.
2. Replays those observations under the ``kv-efficient`` preset (the same inputs, so only the cache differs) and
   prints, per policy call, the largest action difference to the full cache and the frames whose summaries the
   gate keeps (frame j's chunk; frames 0-1 are the raw sinks, the last 2 the raw window).
3. Plays the episode in closed loop under caches that keep different parts of the history raw or summarised,
   and prints whether each succeeds and in how many calls.
"""

from __future__ import annotations

import os
import sys

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")


def caches() -> dict[str, list]:
    import vlaccel
    from vlaccel.techniques.kv_efficient.config import KVEfficientConfig

    def streaming(window: int, sinks: int) -> list:
        return [KVEfficientConfig(window_frames=window, sinks_frames=sinks, retention="streaming")]

    return {
        "kv-efficient (gated, budget 4)": vlaccel.presets.get("kv-efficient"),
        "gated, budget 8": [KVEfficientConfig(window_frames=2, sinks_frames=2, budget=8)],
        "all-summaries (mean, no budget)": [KVEfficientConfig(window_frames=2, sinks_frames=2, retention="mean")],
        "kv-streaming": vlaccel.presets.get("kv-streaming"),
        **{f"raw: sinks {s}, window {w}": streaming(w, s) for s, w in ((4, 2), (2, 4), (2, 6), (2, 10), (12, 2))},
    }


def main(task: str, seed: int, policy_name: str = "reference") -> None:
    import torch

    import vlaccel
    from vlaccel.sim.env import make_env
    from vlaccel.sim.episode import as_action_chunk

    torch.set_num_threads(max(1, int(os.environ.get("THREADS", "1"))))
    policy = vlaccel.load_policy(policy_name)
    env = make_env(task)

    def play(configs: list, replay: list | None = None) -> tuple[bool, list, list, list]:
        """(success, observations, action chunks [calls][chunk, A], kept frames per call)."""
        handle = vlaccel.apply(policy, *configs) if configs else None
        obs = env.reset(seed=seed)
        policy.reset(env.instruction)
        seen, actions, kept = [], [], []
        success = done = False
        while not (success or done) and (replay is None or len(seen) < len(replay)):
            current = obs if replay is None else replay[len(seen)]
            seen.append(current)
            actions.append(as_action_chunk(policy.step(current.image, proprio=current.state)))
            layer = policy.cache.layers[0] if hasattr(policy.cache, "layers") else None
            kept.append(sorted(int(j) + 2 for j in getattr(layer, "chunk_ids", [])))
            for k in range(4 if replay is None else 0):
                obs, step_success, done = env.step(actions[-1][k], render=(k == 3))
                success = success or step_success
                if success or done:
                    break
        policy.end_episode()
        if handle is not None:
            handle.remove()
        return success, seen, actions, kept

    success, observations, full, _ = play([])
    print(f"{task} seed {seed}, full cache: success={success} in {len(observations)} calls")
    _, _, gated, kept = play(vlaccel.presets.get("kv-efficient"), replay=observations)
    print("call  max |action - full cache's|  frames whose summaries the gate keeps")
    for call, (a, b) in enumerate(zip(full, gated)):
        print(f"{call:4}  {float(np.abs(np.asarray(a) - np.asarray(b)).max()):26.3f}  {kept[call]}")
    for name, configs in caches().items():
        success, seen, _, _ = play(configs)
        print(f"{name:34} success={success} calls={len(seen)}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python examples/episode_caches.py TASK SEED [POLICY]")
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:4])
