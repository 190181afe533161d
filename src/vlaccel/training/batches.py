"""History batches from demonstrations: whole-episode prefixes, as history mode sees them at inference.

A sample is one demo truncated to ``h`` frames (h random in [1, F], so every history length occurs); every
frame's cognition position gets a diffusion loss on the 16 env-step actions that follow it. Frames after
``h`` (padding to the longest sample in the batch) are masked out of the loss; attention is causal, so
padding at the end cannot change earlier positions.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from vlaccel.errors import UsageError


@dataclasses.dataclass
class HistoryBatch:
    instructions: list[str]
    images: torch.Tensor  # [B, F, H, W, 3] uint8
    proprio: torch.Tensor  # [B, F, P] float32
    actions: torch.Tensor  # [B, F, chunk, A] float32
    action_mask: torch.Tensor  # [B, F, chunk] float32 (0 past the episode end or past the sample's h)
    frame_index: torch.Tensor | None = None  # [B, F] episode frame index of each frame (None: 0..F-1)
    waypoints: torch.Tensor | None = None  # [B, F, len(WAYPOINT_FRAMES), 3] future hand displacement (m)
    scene: torch.Tensor | None = None  # [B, F, 2, 3] scene-probe targets for object and goal (see scene_targets)
    tasks: list[str] | None = None  # each sample's task name


# Auxiliary targets: where the expert's hand is this many frames later (None = the episode's last frame),
# relative to where it is now. Reaching them needs the target's position in the image (the goal ball, the
# puck, the drawer handle), which the action loss alone teaches a from-scratch vision encoder only slowly.
WAYPOINT_FRAMES: tuple[int | None, ...] = (8, None)


def waypoint_targets(states: np.ndarray, frame: int) -> np.ndarray:
    """Hand displacement [len(WAYPOINT_FRAMES), 3] from frame ``frame`` to each waypoint frame (clipped to
    the last frame), from the demo's proprio ``states`` [F, 4] (hand xyz first)."""
    last = len(states) - 1
    later = [last if k is None else min(frame + k, last) for k in WAYPOINT_FRAMES]
    return states[later, :3] - states[frame, :3]


LAYOUT_MIN_STD = 0.005  # m: a layout axis that varies less than this within a task is not a target (set to 0)


def layout_stats(demos: list) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per task, mean and standard deviation [2, 3] (m) of where the object and goal start (first frame).

    Demos without recorded positions are skipped; an axis whose spread is below ``LAYOUT_MIN_STD`` gets
    std ``inf`` so its standardized target is 0."""
    starts: dict[str, list[np.ndarray]] = {}
    for d in demos:
        if d.objects is not None and d.goals is not None:
            starts.setdefault(d.task, []).append(np.stack([d.objects[0], d.goals[0]]))  # [2, 3]
    stats = {}
    for task, xs in starts.items():
        x = np.stack(xs)  # [N, 2, 3]
        std = x.std(0)
        stats[task] = (x.mean(0), np.where(std < LAYOUT_MIN_STD, np.inf, std))
    return stats


def scene_targets(demo, layout: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> np.ndarray | None:
    """Scene-probe targets [F, 2, 3] for the task's object and goal, from the demo's recorded simulator
    positions; None for demos collected before those were recorded.

    ``layout=None``: where object and goal are relative to the hand (m). With ``layout`` (from
    :func:`layout_stats`): where they started in this episode, standardized within the task, the same for
    every frame. This is the part of the scene that differs between a task's episodes (push-v3: the puck's
    start, spread over 7 cm in y); relative to the hand, that part is small next to the hand's own motion."""
    if demo.objects is None or demo.goals is None:
        return None
    if layout is None:
        hand = demo.states[:, None, :3]  # [F, 1, 3]
        return np.stack([demo.objects, demo.goals], axis=1) - hand
    mean, std = layout[demo.task]  # [2, 3] each
    start = (np.stack([demo.objects[0], demo.goals[0]]) - mean) / std  # [2, 3]
    return np.broadcast_to(start, (demo.num_frames, 2, 3)).astype(np.float32)


def action_chunk(actions: np.ndarray, start: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """actions [T, A] -> (actions[start:start+chunk] zero-padded [chunk, A], valid mask [chunk])."""
    out = np.zeros((chunk, actions.shape[1]), np.float32)
    part = actions[start : start + chunk]
    out[: len(part)] = part
    mask = np.zeros(chunk, np.float32)
    mask[: len(part)] = 1.0
    return out, mask


def _gather(picks: list, frame_lists: list[list[int]], width: int, chunk: int, with_index: bool,
            layout: dict | None = None) -> HistoryBatch:
    """Frames ``frame_lists[i]`` of each picked demo, padded to ``width`` frames by repeating the last one.

    Padding frames are masked out of the loss and get the positions that would follow the last frame.
    """
    b = len(picks)
    h, w = picks[0].images.shape[1:3]
    images = np.zeros((b, width, h, w, 3), np.uint8)
    proprio = np.zeros((b, width, picks[0].states.shape[1]), np.float32)
    actions = np.zeros((b, width, chunk, picks[0].actions.shape[1]), np.float32)
    mask = np.zeros((b, width, chunk), np.float32)
    index = np.zeros((b, width), np.int64)
    waypoints = np.zeros((b, width, len(WAYPOINT_FRAMES), 3), np.float32)
    scenes = [scene_targets(d, layout) for d in picks]
    scene = None if any(s is None for s in scenes) else np.zeros((b, width, 2, 3), np.float32)
    for i, (d, frames) in enumerate(zip(picks, frame_lists)):
        n = len(frames)
        images[i, :n], proprio[i, :n] = d.images[frames], d.states[frames]
        images[i, n:] = d.images[frames[-1]]  # padding frames (masked out of the loss)
        index[i, :n] = frames
        index[i, n:] = frames[-1] + 1 + np.arange(width - n)
        for k, f in enumerate(frames):
            actions[i, k], mask[i, k] = action_chunk(d.actions, f * int(d.frame_every), chunk)
            waypoints[i, k] = waypoint_targets(d.states, f)
        if scene is not None:
            scene[i, :n] = scenes[i][frames]
    return HistoryBatch([d.instruction for d in picks], torch.from_numpy(images), torch.from_numpy(proprio),
                        torch.from_numpy(actions), torch.from_numpy(mask),
                        torch.from_numpy(index) if with_index else None, torch.from_numpy(waypoints),
                        None if scene is None else torch.from_numpy(scene), [d.task for d in picks])


def pick_demos(demos: list, count: int, rng: np.random.Generator, probs: np.ndarray | None = None) -> list:
    """``count`` demos drawn with replacement: uniformly, or with per-demo probabilities ``probs`` [len(demos)]."""
    if probs is None:
        return [demos[i] for i in rng.integers(0, len(demos), count)]
    return [demos[i] for i in rng.choice(len(demos), size=count, p=probs)]


def demo_probabilities(demos: list, task_weights: dict[str, float] | None) -> np.ndarray | None:
    """Per-demo sampling probabilities [len(demos)] from relative task weights (unlisted tasks weigh 1).

    A task of weight w has each of its demos drawn w times as often as a weight-1 task's; ``None`` (or all
    weights 1) keeps uniform sampling over demos. Unknown task names and negative or all-zero weights are refused.
    """
    if not task_weights:
        return None
    tasks = sorted({d.task for d in demos})
    unknown = sorted(set(task_weights) - set(tasks))
    if unknown:
        raise UsageError(f"task weights name tasks with no demos: {unknown}; the demos hold {tasks}")
    bad = {t: w for t, w in task_weights.items() if not (w >= 0 and np.isfinite(w))}
    if bad:
        raise UsageError(f"task weights must be finite and >= 0, got {bad}")
    w = np.array([task_weights.get(d.task, 1.0) for d in demos], dtype=np.float64)
    if w.sum() == 0:
        raise UsageError("task weights leave nothing to sample (every task has weight 0)")
    return w / w.sum()


def prefix_length(demo, rng: np.random.Generator, max_frames: int | None = None, go_prob: float = 0.0) -> int:
    """The length h of one whole-episode prefix of ``demo``: uniform in [1, F] (F capped by ``max_frames``).

    ``go_prob``: on a long-horizon memory task whose go frame is within the cap, the probability that h is
    drawn in [go + 1, F] instead, so the prefix ends in the reach after the go signal and trains it with the
    whole history the full cache holds at inference (uniform h ends there only some 15 % of the time)."""
    f = len(demo.images) if max_frames is None else min(len(demo.images), max_frames)
    go = go_frame(demo) if go_prob > 0 else None
    if go is not None and go < f and rng.random() < go_prob:
        return int(rng.integers(go + 1, f + 1))
    return int(rng.integers(1, f + 1))


def sample_batch(demos: list, batch_size: int, chunk: int, rng: np.random.Generator,
                 max_frames: int | None = None, probs: np.ndarray | None = None,
                 layout: dict | None = None, go_prob: float = 0.0) -> HistoryBatch:
    """Whole-episode prefixes of random length h (:func:`prefix_length`); ``layout``: see
    :func:`scene_targets`."""
    picks = pick_demos(demos, batch_size, rng, probs)
    lengths = [prefix_length(d, rng, max_frames, go_prob) for d in picks]
    return _gather(picks, [list(range(n)) for n in lengths], max(lengths), chunk, with_index=False, layout=layout)


def _cue_times(demo):
    """The drawn ``CueTimes`` of a long-horizon memory task's demo; None for every other task."""
    from vlaccel.sim.tasks import get_task

    spec = get_task(demo.task)
    return None if spec.cue is None else spec.cue.draw(demo.task, demo.seed)


def cue_frames(demo) -> list[int]:
    """The frames of ``demo`` that show a long-horizon memory task's cue (its drawn ``CueSchedule`` window);
    empty for every other task."""
    times = _cue_times(demo)
    if times is None:
        return []
    fe = int(demo.frame_every)
    return list(range(-(-times.cue_start // fe), min(-(-times.cue_end // fe), demo.num_frames)))


def go_frame(demo) -> int | None:
    """The first policy frame of ``demo`` at or after a long-horizon memory task's go signal; None for every
    other task."""
    times = _cue_times(demo)
    return None if times is None else -(-times.go_step // int(demo.frame_every))


def window_frames(demo, rng: np.random.Generator, frames: int, anchor: int, context: int,
                  go_prob: float = 0.0) -> list[int]:
    kept, window = _window_split(demo, rng, frames, anchor, context, go_prob)
    return kept + window


def _window_split(demo, rng: np.random.Generator, frames: int, anchor: int, context: int,
                  go_prob: float = 0.0) -> tuple[list[int], list[int]]:
    """The frames one window sample keeps, ascending: ``frames`` consecutive frames starting anywhere, the
    episode's first ``anchor`` frames and, on a long-horizon memory task, the cue frames (:func:`cue_frames`)
    and up to ``context`` random frames from between them, all before the window. Everything else the
    policy would see at inference in between is left out.

    ``go_prob``: on a long-horizon memory task, the probability that the window is drawn among those that
    hold at least one frame at or after the go signal (the reach that acts on the cue; drawn uniformly,
    only some 15 of an episode's ~100 frames are)."""
    n = demo.num_frames
    go = go_frame(demo) if go_prob > 0 else None
    if go is not None and go < n and rng.random() < go_prob:
        s = int(rng.integers(max(0, go - frames + 1), max(1, n - frames + 1)))
    else:
        s = int(rng.integers(0, max(1, n - frames + 1)))
    window = list(range(s, min(s + frames, n)))
    keep = set(range(min(anchor, s)))
    cue = [f for f in cue_frames(demo) if f < s]
    if cue:
        keep.update(cue)
        others = [f for f in range(s) if f not in keep]
        k = min(len(others), int(rng.integers(0, context + 1)))
        if k:
            keep.update(int(f) for f in rng.choice(others, size=k, replace=False))
    return sorted(keep), window


def sample_windows(demos: list, batch_size: int, chunk: int, rng: np.random.Generator, frames: int,
                   anchor: int = 0, probs: np.ndarray | None = None, layout: dict | None = None,
                   context: int = 0, go_prob: float = 0.0, history_only: bool = False) -> HistoryBatch:
    """Short windows of ``frames`` consecutive frames starting anywhere in an episode (more episodes per step).

    Each frame keeps the position it has in the whole episode (``frame_index``), so the distance to the
    instruction matches inference. ``anchor`` > 0 also keeps the episode's first ``anchor`` frames in front of
    the window (at their own positions): a window is then a subset of the history the policy sees at
    inference, and information shown only at the start of an episode (the memory task's goal) stays in
    every sample. A long-horizon memory task's cue frames are kept the same way, with up to ``context``
    random frames in between, and ``go_prob`` of them are drawn to cover the reach after the go signal
    (:func:`window_frames`). Whole-prefix batches (:func:`sample_batch`) teach the
    use of all old frames. ``history_only``: the kept frames in front of the window get no loss (action mask 0),
    only the window's own frames are trained.
    """
    picks = pick_demos(demos, batch_size, rng, probs)
    splits = [_window_split(d, rng, frames, anchor, context, go_prob) for d in picks]
    frame_lists = [kept + window for kept, window in splits]
    width = max(anchor + frames, *(len(f) for f in frame_lists))
    batch = _gather(picks, frame_lists, width, chunk, with_index=True, layout=layout)
    if history_only:
        for i, (kept, _) in enumerate(splits):
            batch.action_mask[i, : len(kept)] = 0.0  # [kept, chunk]: history only
    return batch


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """DrQ-style augmentation: replicate-pad by ``pad`` px and crop back at a random offset per sequence.

    images [B, F, H, W, 3] uint8; the same shift for every frame of a sequence (the camera does not move
    within an episode).
    """
    if pad == 0:
        return images
    b, f, h, w, c = images.shape
    x = images.permute(0, 1, 4, 2, 3).reshape(b, f * c, h, w).float()
    x = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    offs = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator)
    out = torch.stack([x[i, :, oy : oy + h, ox : ox + w] for i, (oy, ox) in enumerate(offs.tolist())])
    return out.reshape(b, f, c, h, w).permute(0, 1, 3, 4, 2).round().to(torch.uint8)
