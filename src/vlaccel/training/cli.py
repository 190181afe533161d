"""``vlaccel train-reference``."""

from __future__ import annotations

import argparse
import dataclasses


def register(sub: argparse._SubParsersAction) -> None:
    from vlaccel.models.config import VISUAL_READOUT_POOLS, VISUAL_READOUT_SOURCES
    from vlaccel.training.reference import SCENE_TARGETS, TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train-reference", help="train the reference VLA on simulator demos (resumable)")
    p.add_argument("--data", default=d.data, help="folder of demos from `vlaccel collect`")
    p.add_argument("--run-dir", default=d.run_dir, help="checkpoints (resumes from here if one exists)")
    p.add_argument("--out", default=d.out, help="where the trained policy is saved (safetensors + JSON)")
    p.add_argument("--preset", default=d.preset, choices=["tiny", "default"])
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--minutes", type=float, default=None, help="wall-time budget; saves when reached")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--max-frames", type=int, default=None, help="cap history length per sample")
    p.add_argument("--window-prob", type=float, default=d.window_prob,
                   help="fraction of steps on short windows (more episodes per step) vs whole-episode prefixes")
    p.add_argument("--window-frames", type=int, default=d.window_frames)
    p.add_argument("--window-batch", type=int, default=d.window_batch)
    p.add_argument("--window-anchor", type=int, default=d.window_anchor,
                   help="the episode's first frames kept in front of every window (default %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--repeat", type=int, default=d.repeat, help="noise draws per cognition feature")
    p.add_argument("--shift-pad", type=int, default=d.shift_pad, help="random-shift augmentation (px)")
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in float32")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--tasks", nargs="*", default=None)
    p.add_argument("--task-weights", nargs="+", default=None, type=_task_weight, metavar="TASK=W",
                   help="relative sampling weight of a task's demos, e.g. push-v3=3 (unlisted tasks: 1)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--init", default=None,
                   help="start from this saved policy ('reference' = the bundled one) instead of random weights")
    p.add_argument("--aux-weight", type=float, default=d.aux_weight,
                   help="weight of the waypoint loss (expert hand's future displacement) read from the cognition "
                        "feature (0 = off)")
    p.add_argument("--aux-visual-weight", type=float, default=d.aux_visual_weight,
                   help="weight of the same loss read from the frame's visual tokens (0 = off)")
    p.add_argument("--aux-object-weight", type=float, default=d.aux_object_weight,
                   help="weight of the scene loss: the object's and goal's position relative to the hand, read from "
                        "the cognition feature (needs demos from `vlaccel collect` that record positions; default 0 = off)")
    p.add_argument("--visual-readout-heads", type=int, default=d.visual_readout_heads,
                   help="with --init: add a visual readout of the frame's visual tokens, added to the cognition "
                        "feature, this wide (attention: query heads; flatten: channels per token); default 0 = none added")
    p.add_argument("--visual-readout-source", choices=VISUAL_READOUT_SOURCES, default=d.visual_readout_source,
                   help="what the added readout pools: the LM's outputs at the visual tokens ('lm_output') or the "
                        "projector's visual tokens the LM reads ('lm_input')")
    p.add_argument("--visual-readout-pool", choices=VISUAL_READOUT_POOLS, default=d.visual_readout_pool,
                   help="how the added readout reads the tokens: 'attention' (N learned queries) or 'flatten' (N "
                        "channels per token, concatenated in patch order; needs --visual-readout-source lm_input)")
    p.add_argument("--readout-norm-weight", type=float, default=d.readout_norm_weight,
                   help="weight of the visual readout's squared norm relative to the cognition token's (a trust "
                        "region: the readout moves the condition only where the other losses pay for it; 0 = off)")
    p.add_argument("--freeze-head", action="store_true",
                   help="with --freeze-backbone: keep the action head as well, so only the visual readout (and the "
                        "probes) train; the head's mapping for the other tasks stays exactly as it was")
    p.add_argument("--freeze-backbone", action="store_true",
                   help="with --init: train only the action head, the visual readout and the probes")
    p.add_argument("--distill-weight", type=float, default=d.distill_weight,
                   help="with --freeze-backbone: weight of a trust region on the sampled actions, the student's "
                        "guided noise estimate regressed onto the teacher's along the teacher's DDIM path (0 = off)")
    p.add_argument("--distill-tasks", nargs="+", default=None, metavar="TASK",
                   help="the tasks whose actions the distillation keeps (default: every task)")
    p.add_argument("--distill-from", default=None, metavar="POLICY",
                   help="the distillation teacher (default: the --init policy); must have the student's backbone")
    p.add_argument("--distill-frames", type=int, default=d.distill_frames,
                   help="frames per batch that get the distillation term (default %(default)s)")
    p.add_argument("--scene-target", choices=SCENE_TARGETS, default=d.scene_target,
                   help="what the scene loss regresses: 'relative' (object and goal minus hand, m) or 'layout' (where "
                        "object and goal started in the episode, standardized within the task)")
    p.set_defaults(func=run)


def _task_weight(text: str) -> tuple[str, float]:
    task, sep, weight = text.partition("=")
    try:
        if not sep or not task:
            raise ValueError
        return task, float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TASK=WEIGHT (e.g. push-v3=3), got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from vlaccel.training.reference import TrainConfig, train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    if values.get("task_weights") is not None:
        values["task_weights"] = dict(values["task_weights"])
    cfg = TrainConfig(**values)
    train(cfg)
    return 0
