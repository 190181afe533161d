"""How much of the training signal falls on ``reach-memory-long``'s reach, and how well a policy fits it there.

Two measurements:

1. The sampler: for a recipe's window settings (``window_prob``, ``window_frames``, ``window_anchor``,
   ``window_context``, batch sizes), the share of loss frames (frames whose action chunk is trained) that are
   long-task frames before the go signal, long-task frames after it, and frames of the other tasks. Drawn from
   the recipe's own samplers over the demos in DEMOS (frame indices only; nothing is rendered).
2. The fit: on the first EPISODES long-task demos, one whole-history forward (the full cache, as at inference)
   and the policy's sampled action chunk at every frame against the expert's, split before and after go
   (mean squared error per action step, action units), and the norm of the chunk's summed xyz action error
   (action units: how far off the expert's path the chunk would move the hand, before the env's action scale).
3. The context: at every frame after go, the same fit with four histories, all at their episode positions:
   the full history (the full cache at inference), the training window's shape (the first ``window_anchor``
   frames, the cue frames and the last ``window_frames`` frames, no holding frames in between) and that shape
   without the cue frames (what a window-only cache keeps), and a streaming cache whose raw sinks (the first 43
   frames) hold every drawn cue. Each frame's sampled chunk uses the same noise under all four, so the
   differences are paired. If the training shape fits much better than the full
   history, the ~90 holding frames that training windows leave out are what the reach gets wrong.

    .venv/bin/python examples/long_task_training_signal.py POLICY [DEMOS [EPISODES]]

DEMOS defaults to data/demos, EPISODES to 10. The recipe is read from POLICY's model card.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

import vlaccel
from vlaccel.models.io import BUNDLED, bundled_dir
from vlaccel.demo_files import load_demos
from vlaccel.training.batches import _gather, cue_frames, go_frame, prefix_length, window_frames

TASK = "reach-memory-long"


def sampler_shares(demos: list, t: dict, steps: int, rng: np.random.Generator) -> dict[str, float]:
    """Share of loss frames per phase over ``steps`` sampler draws of recipe ``t``."""
    counts = {"core": 0, "long_before_go": 0, "long_after_go": 0}
    samples_with_reach = samples = 0
    for _ in range(steps):
        if rng.random() < t["window_prob"]:
            picks = [demos[i] for i in rng.integers(0, len(demos), t["window_batch"])]
            lists = [window_frames(d, rng, t["window_frames"], t["window_anchor"], t["window_context"],
                                   t.get("window_go_prob", 0.0)) for d in picks]
        else:
            picks = [demos[i] for i in rng.integers(0, len(demos), t["batch_size"])]
            lists = [list(range(prefix_length(d, rng, t["max_frames"], t.get("prefix_go_prob", 0.0)))) for d in picks]
        for d, frames in zip(picks, lists):
            samples += 1
            if d.task != TASK:
                counts["core"] += len(frames)
                continue
            go = go_frame(d)
            after = sum(f >= go for f in frames)
            counts["long_after_go"] += after
            counts["long_before_go"] += len(frames) - after
            samples_with_reach += after > 0
    total = sum(counts.values())
    return {**{k: v / total for k, v in counts.items()}, "samples_with_reach": samples_with_reach / samples}


@torch.no_grad()
def fit(policy, demo, gen: torch.Generator) -> dict[str, np.ndarray]:
    """Per frame of ``demo``, full history: mean squared action error [F], the norm of the chunk's summed xyz
    action error [F] (action units) and the cognition features [F, D] (every frame's full-history feature:
    attention is causal)."""
    chunk = policy.config.action_chunk
    batch = _gather([demo], [list(range(demo.num_frames))], demo.num_frames, chunk, with_index=True)
    pixels = policy.normalize_pixels(batch.images).unsqueeze(2)  # [1, F, 1, 3, H, W]
    ids, mask = policy.batch_instruction_ids(batch.instructions)
    z = policy.history_cognition(ids, mask, pixels, batch.proprio, batch.frame_index)[0]  # [F, D]
    pred = policy.action_head.sample(z.float(), generator=gen)  # [F, chunk, A]
    expert, valid = batch.actions[0], batch.action_mask[0]  # [F, chunk, A], [F, chunk]
    sq = ((pred - expert).pow(2).mean(-1) * valid).sum(-1) / valid.sum(-1).clamp(min=1)  # [F]
    moved = ((pred - expert)[..., :3] * valid[..., None]).sum(1)  # [F, 3] summed xyz action error
    return {"sq": sq.numpy(), "moved": moved.norm(dim=-1).numpy(), "z": z}


CONTEXTS = ("full history", "anchors + cue + window", "anchors + window (no cue)", "first 43 frames + window")
CUE_SINKS = 43  # frames: every drawn cue ends by frame 42 (cue step <= 160, shown 12 env steps, 4 per frame)


def context_frames(demo, frame: int, context: str, anchor: int, frames: int) -> list[int]:
    """The frames, ascending, that history ``context`` (one of ``CONTEXTS``) holds at ``frame``."""
    if context == CONTEXTS[0]:
        return list(range(frame + 1))
    sinks = CUE_SINKS if context == CONTEXTS[3] else anchor
    keep = set(range(min(sinks, frame + 1))) | set(range(max(0, frame - frames + 1), frame + 1))
    if context == CONTEXTS[1]:
        keep.update(f for f in cue_frames(demo) if f <= frame)
    return sorted(keep)


@torch.no_grad()
def fit_after_go(policy, demo, z_full: torch.Tensor, anchor: int, frames: int, seed: int) -> dict[str, np.ndarray]:
    """Per context of ``CONTEXTS``: mean squared action error [R] at each of the R frames at or after go,
    the frame's chunk sampled with the same noise under every context. ``z_full`` [F, D]: the full-history
    cognition features (:func:`fit`'s), which are the first context's."""
    chunk = policy.config.action_chunk
    reach = list(range(go_frame(demo), demo.num_frames))
    whole = _gather([demo], [list(range(demo.num_frames))], demo.num_frames, chunk, with_index=True)
    expert, valid = whole.actions[0, reach], whole.action_mask[0, reach]  # [R, chunk, A], [R, chunk]
    out = {}
    for context in CONTEXTS:
        if context == CONTEXTS[0]:
            z_now = z_full[reach]  # [R, D]
        else:
            lists = [context_frames(demo, f, context, anchor, frames) for f in reach]
            batch = _gather([demo] * len(lists), lists, max(map(len, lists)), chunk, with_index=True)
            pixels = policy.normalize_pixels(batch.images).unsqueeze(2)  # [R, W, 1, 3, H, W]
            ids, mask = policy.batch_instruction_ids(batch.instructions)
            z = policy.history_cognition(ids, mask, pixels, batch.proprio, batch.frame_index)  # [R, W, D]
            z_now = z[torch.arange(len(reach)), [len(x) - 1 for x in lists]]  # [R, D]: the frame being acted on
        pred = policy.action_head.sample(z_now.float(), generator=torch.Generator().manual_seed(seed))  # [R, chunk, A]
        out[context] = (((pred - expert).pow(2).mean(-1) * valid).sum(-1) / valid.sum(-1).clamp(min=1)).numpy()
    return out


def main() -> None:
    policy_name = sys.argv[1] if len(sys.argv) > 1 else "reference"
    root = sys.argv[2] if len(sys.argv) > 2 else "data/demos"
    episodes = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    torch.set_num_threads(2)
    policy = vlaccel.load_policy(policy_name).eval()
    folder = bundled_dir(policy_name) if policy_name in BUNDLED else Path(policy_name)
    recipe = json.loads((folder / "model_card.json").read_text())["training"]
    demos = load_demos(root)
    shares = sampler_shares(demos, recipe, 2000, np.random.default_rng(0))
    print(f"recipe: window_prob {recipe['window_prob']}, window_frames {recipe['window_frames']}, anchor "
          f"{recipe['window_anchor']}, context {recipe['window_context']}, window_batch {recipe['window_batch']}, "
          f"go_prob {recipe.get('window_go_prob', 0.0)}, batch_size {recipe['batch_size']}, prefix go_prob "
          f"{recipe.get('prefix_go_prob', 0.0)}; {len(demos)} demos")
    print("share of loss frames: " + ", ".join(f"{k} {v:.1%}" for k, v in shares.items() if k != "samples_with_reach")
          + f"; long-task samples with a frame after go: {shares['samples_with_reach']:.1%} of all samples")
    gen = torch.Generator().manual_seed(0)
    rows = {"before": {"sq": [], "moved": []}, "after": {"sq": [], "moved": []}}
    ctx = {c: [] for c in CONTEXTS}
    for i, demo in enumerate([d for d in demos if d.task == TASK][:episodes]):
        out, go = fit(policy, demo, gen), go_frame(demo)
        for key in ("sq", "moved"):
            rows["before"][key].extend(out[key][:go])
            rows["after"][key].extend(out[key][go:])
        for c, sq in fit_after_go(policy, demo, out["z"], recipe["window_anchor"], recipe["window_frames"], i).items():
            ctx[c].extend(sq)
    for phase, r in rows.items():
        print(f"{phase:6} go: {len(r['sq'])} frames, action MSE {np.mean(r['sq']):.4f} (median {np.median(r['sq']):.4f}), "
              f"summed xyz action error median {np.median(r['moved']):.3f}")
    base = np.asarray(ctx[CONTEXTS[0]])
    print(f"after go, by history ({len(base)} frames, the same noise per frame):")
    for c, sq in ctx.items():
        sq = np.asarray(sq)
        diff = "" if c == CONTEXTS[0] else (f"; lower than the full history's on {np.mean(sq < base):.0%} of frames, "
                                            f"median ratio {np.median(sq / np.maximum(base, 1e-12)):.2f}")
        print(f"  {c:27} action MSE {sq.mean():.4f} (median {np.median(sq):.4f}){diff}")


if __name__ == "__main__":
    main()
