"""The flags of ``vlaccel train-reference`` (one per ``TrainConfig`` field), the config parsed flags describe,
and the command line that states a config (recorded in every model card; parsing it gives the config back)."""

from __future__ import annotations

import argparse
import dataclasses
import shlex

from vlaccel.training.train_config import SCENE_TARGETS, TrainConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's flags; their defaults are ``TrainConfig``'s."""
    from vlaccel.models.config import VISUAL_READOUT_POOLS, VISUAL_READOUT_SOURCES

    d = TrainConfig()
    p.add_argument("--data", default=d.data, help="folder of demos from `vlaccel collect`")
    p.add_argument("--run-dir", default=d.run_dir, help="checkpoints (resumes from here if one exists)")
    p.add_argument("--out", default=d.out,
                   help="where the trained policy is saved (safetensors + JSON; default: RUN_DIR/policy). The bundled "
                        "policy is only replaced when named: --out src/vlaccel/assets/reference")
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
    p.add_argument("--window-context", type=int, default=d.window_context,
                   help="long-horizon memory tasks: up to this many random earlier frames join each window, beside "
                        "the cue frames, which are always kept (default %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate of the cosine schedule")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay (default %(default)s)")
    p.add_argument("--warmup", type=int, default=d.warmup,
                   help="steps of linear learning-rate warm-up before the cosine decay (default %(default)s)")
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


def _task_weight(text: str) -> tuple[str, float]:
    task, sep, weight = text.partition("=")
    try:
        if not sep or not task:
            raise ValueError
        return task, float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TASK=WEIGHT (e.g. push-v3=3), got {text!r}") from None


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The ``TrainConfig`` that parsed flags describe."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    if values.get("task_weights") is not None:
        values["task_weights"] = dict(values["task_weights"])
    return TrainConfig(**values)


def command_line(cfg: TrainConfig) -> str:
    """``vlaccel train-reference ...`` with the flags that set ``cfg``'s non-default fields, in the form these
    flags parse (``--no-bf16``, ``--freeze-head``, ``--tasks A B``, ``--task-weights TASK=W``), quoted for a
    shell: parsing it gives ``cfg`` back."""
    parser = argparse.ArgumentParser(prog="vlaccel train-reference")
    add_arguments(parser)
    defaults = TrainConfig()
    argv: list[str] = []
    for action in parser._actions:
        if not action.option_strings or action.dest not in {f.name for f in dataclasses.fields(TrainConfig)}:
            continue
        value = getattr(cfg, action.dest)
        if value == getattr(defaults, action.dest):
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse._StoreConstAction):  # --freeze-head (True), --no-bf16 (False)
            if value != action.const:
                raise ValueError(f"{flag} cannot state {action.dest}={value!r}")
            argv.append(flag)
        elif isinstance(value, dict):
            argv += [flag, *(f"{task}={weight!r}" for task, weight in value.items())]
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return shlex.join(["vlaccel", "train-reference", *argv])
