"""``vlaccel train-reference``: behaviour cloning of the reference VLA on scripted Meta-World demos.

Loss (CogACT): epsilon-MSE of the DiT head at every frame's cognition position of a whole-history
forward, with ``repeat`` noise draws per position (CogACT's repeated diffusion steps) and CFG dropout of
the condition. Plus, with weight ``aux_weight``, the waypoint regression of ``training.auxiliary`` (the
expert hand's future displacement from the cognition feature and from the frame's visual tokens, through
training-only linear probes): without it the policy learned to ignore its camera. With weight
``aux_object_weight`` (off by default), the scene probe also reads the object's and goal's position from the
cognition feature (relative to the hand, or with ``scene_target="layout"`` where they started in the episode,
standardized within the task); it needs demos that record those positions. With weight ``distill_weight``
(off by default; needs ``freeze_backbone``), ``training.distillation`` keeps the sampled actions of the tasks
named in ``distill_tasks`` where the teacher policy (``distill_from``, default ``init``) has them. Checkpoints every
``--checkpoint-every`` steps into ``--run-dir`` and resumes from there.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch

from vlaccel.models import ReferenceVLA, ReferenceVLAConfig, load_policy, save_policy
from vlaccel.training.auxiliary import WAYPOINT_SCALE, WaypointProbes
from vlaccel.training.batches import (
    demo_probabilities,
    layout_stats,
    random_shift,
    sample_batch,
    sample_windows,
)
from vlaccel.training.distillation import ActionDistillation

SCENE_TARGETS = ("relative", "layout")


@dataclasses.dataclass
class TrainConfig:
    data: str = "data/demos"
    run_dir: str = "runs/reference"
    out: str = "src/vlaccel/assets/reference"
    preset: str = "default"
    steps: int = 3000
    minutes: float | None = None  # stop early when this much wall time has passed (then save)
    batch_size: int = 4
    max_frames: int | None = None
    window_prob: float = 0.75  # fraction of steps that use short windows instead of whole-episode prefixes
    window_frames: int = 3
    window_batch: int = 16
    window_anchor: int = 2  # the episode's first frames kept in front of every window (memory task: goal shown there)
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup: int = 100
    repeat: int = 4
    shift_pad: int = 4
    bf16: bool = True
    checkpoint_every: int = 200
    seed: int = 0
    tasks: list[str] | None = None
    task_weights: dict[str, float] | None = None  # relative sampling weight per task (unlisted tasks: 1)
    threads: int | None = None
    init: str | None = None  # start from a saved policy's weights (e.g. the bundled one) instead of random
    aux_weight: float = 1.0  # weight of the cognition waypoint probe's MSE (0 = off); zero-prediction MSE ~1.3
    aux_visual_weight: float = 0.1  # weight of the visual-token waypoint probe's MSE (0 = off)
    aux_object_weight: float = 0.0  # weight of the scene probe's MSE (object and goal vs hand; 0 = off). Opt-in:
    # 950 steps with weight 1 did not lift push (2/20) and the reach tasks fell (see the README)
    visual_readout_heads: int = 0  # with --init: add a visual readout with this many heads (models.visual_readout)
    visual_readout_source: str = "lm_output"  # what that readout pools (ReferenceVLAConfig.visual_readout_source)
    visual_readout_pool: str = "attention"  # and how (ReferenceVLAConfig.visual_readout_pool)
    readout_norm_weight: float = 0.0  # weight of |readout|^2 / |cognition token|^2 (a trust region on the condition:
    # with a frozen backbone the readout is exactly what moves it; 0 = off)
    freeze_head: bool = False  # with freeze_backbone: keep the action head too, so only the readout (and probes) train
    freeze_backbone: bool = False  # train only the action head, the visual readout and the probes (vision, projector,
    # proprio projection and LM frozen: steps cost a forward pass through them, and other tasks' perception is kept)
    distill_weight: float = 0.0  # weight of the action distillation term (training.distillation; 0 = off)
    distill_tasks: list[str] | None = None  # the tasks whose sampled actions it keeps (None: every task)
    distill_from: str | None = None  # the teacher policy (None: the --init policy)
    distill_frames: int = 16  # frames per batch that get the term (the teacher runs its DDIM chain for each)
    scene_target: str = "relative"  # what the scene probe reads: "relative" (object and goal minus hand, m) or
    # "layout" (where object and goal started this episode, standardized within the task; batches.scene_targets)


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def batch_loss(policy: ReferenceVLA, batch, cfg: TrainConfig, gen: torch.Generator,
               probes: WaypointProbes | None = None,
               distill: ActionDistillation | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts (``action``, ``waypoint``, ``waypoint_visual``, ``object``, ``readout_norm``,
    ``distill``) for one history batch."""
    images = random_shift(batch.images, cfg.shift_pad, gen)
    pixels = policy.normalize_pixels(images).unsqueeze(2)  # [B, F, cams=1, 3, H, W]
    ids, mask = policy.batch_instruction_ids(batch.instructions)
    readouts: list[torch.Tensor] = []
    hooks = [policy.visual_readout.register_forward_hook(lambda m, a, out: readouts.append(out))
             if cfg.readout_norm_weight > 0 else None, distill.capture(policy) if distill is not None else None]
    try:
        z_all = policy.history_cognition(ids, mask, pixels, batch.proprio, batch.frame_index)  # [B, F, D]
    finally:
        for hook in hooks:
            if hook is not None:
                hook.remove()
    valid = batch.action_mask.sum(-1) > 0  # [B, F]
    z, actions, amask = z_all[valid], batch.actions[valid], batch.action_mask[valid]  # [N, D], [N, chunk, A], [N, chunk]
    r = cfg.repeat
    action_loss = policy.action_head.training_loss(z.float().repeat(r, 1), actions.repeat(r, 1, 1),
                                                   amask.repeat(r, 1), cfg_dropout=policy.config.cfg_dropout)
    parts = {"action": action_loss.item()}
    total = action_loss
    if readouts:
        readout = readouts[0].float().reshape(z_all.shape)[valid]  # [N, D]
        ratio = readout.pow(2).sum(-1) / (z.float() - readout).detach().pow(2).sum(-1).clamp(min=1e-6)  # [N]
        total = total + cfg.readout_norm_weight * ratio.mean()
        parts["readout_norm"] = ratio.mean().item()
    if distill is not None:
        distill_loss = distill.loss(policy.action_head, z_all, valid, batch.tasks, gen)
        if distill_loss is not None:  # else no frame of a kept task in this batch
            total = total + cfg.distill_weight * distill_loss
            parts["distill"] = distill_loss.item()
    if probes is None or cfg.aux_weight == cfg.aux_visual_weight == cfg.aux_object_weight == 0:
        return total, parts
    if cfg.aux_object_weight > 0 and batch.scene is None:
        raise ValueError("aux_object_weight > 0 needs demos with object and goal positions; recollect them with "
                         "`vlaccel collect --overwrite` or set --aux-object-weight 0")
    aux = probes.loss(z_all, valid, batch.waypoints, batch.scene if cfg.aux_object_weight > 0 else None,
                      scene_scale=WAYPOINT_SCALE if cfg.scene_target == "relative" else 1.0)
    parts.update({k: v.item() for k, v in aux.items()})
    total = total + cfg.aux_weight * aux["waypoint"] + cfg.aux_visual_weight * aux["waypoint_visual"]
    if "object" in aux:
        total = total + cfg.aux_object_weight * aux["object"]
    return total, parts


def train(cfg: TrainConfig, log=print) -> dict:
    from vlaccel.sim.data import load_demos

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.visual_readout_heads and not cfg.init:
        raise ValueError("--visual-readout-heads adds a readout to an existing policy: pass --init POLICY too "
                         "(a policy trained from scratch gets its sizes from --preset)")
    if (cfg.visual_readout_source, cfg.visual_readout_pool) != ("lm_output", "attention") and not cfg.visual_readout_heads:
        raise ValueError("--visual-readout-source/--visual-readout-pool shape an added readout: pass "
                         "--visual-readout-heads N too")
    if cfg.readout_norm_weight < 0:
        raise ValueError(f"--readout-norm-weight must be >= 0, got {cfg.readout_norm_weight}")
    if cfg.freeze_head and not cfg.freeze_backbone:
        raise ValueError("--freeze-head trains only a visual readout (and the probes): pass --freeze-backbone too")
    if cfg.freeze_backbone and not cfg.init:
        raise ValueError("--freeze-backbone keeps the vision encoder and LM as they are: pass --init POLICY")
    if not cfg.distill_weight >= 0:
        raise ValueError(f"--distill-weight must be >= 0, got {cfg.distill_weight}")
    if cfg.distill_weight > 0 and not cfg.freeze_backbone:
        raise ValueError("--distill-weight reuses the student's LM features for the teacher: pass --freeze-backbone "
                         "(and --init POLICY)")
    if cfg.distill_weight == 0 and (cfg.distill_tasks is not None or cfg.distill_from is not None):
        raise ValueError("--distill-tasks/--distill-from shape the distillation term: pass --distill-weight W > 0 too")
    demos = load_demos(cfg.data, tasks=cfg.tasks)
    if not demos:
        raise FileNotFoundError(f"no demonstrations in {cfg.data}; create them with `vlaccel collect --out {cfg.data}`")
    tasks = sorted({d.task for d in demos})
    unknown = sorted(set(cfg.distill_tasks or ()) - set(tasks))
    if unknown:
        raise ValueError(f"--distill-tasks names tasks with no demos: {unknown}; the demos hold {tasks}")
    probs = demo_probabilities(demos, cfg.task_weights)  # before any model is built: bad weights fail fast
    if cfg.init:
        policy = load_policy(cfg.init)
    else:
        policy = ReferenceVLA(ReferenceVLAConfig.preset(cfg.preset))
    if cfg.visual_readout_heads:
        policy.add_visual_readout(cfg.visual_readout_heads, cfg.visual_readout_source, cfg.visual_readout_pool)
    if cfg.readout_norm_weight > 0 and policy.visual_readout is None:
        raise ValueError("--readout-norm-weight penalizes a visual readout; the policy has none: add one with "
                         "--visual-readout-heads N (with --init)")
    if cfg.freeze_head and policy.visual_readout is None:
        raise ValueError(f"--freeze-head leaves nothing but the probes to train: {cfg.init} has no visual readout; "
                         "add one with --visual-readout-heads N")
    frozen = (policy.vision, policy.projector, policy.proprio_proj, policy.language_model) if cfg.freeze_backbone else ()
    for module in frozen + ((policy.action_head,) if cfg.freeze_head else ()):
        if module is not None:
            module.requires_grad_(False)
    distill = None
    if cfg.distill_weight > 0:
        distill = ActionDistillation(load_policy(cfg.distill_from or cfg.init), policy,
                                     set(cfg.distill_tasks if cfg.distill_tasks is not None else tasks),
                                     cfg.distill_frames)
    if policy.config.image_size != demos[0].images.shape[1]:
        raise ValueError(f"demos are {demos[0].images.shape[1]} px but the {cfg.preset!r} preset expects "
                         f"{policy.config.image_size} px; collect with --image-size {policy.config.image_size}")
    weights = {"aux_weight": cfg.aux_weight, "aux_visual_weight": cfg.aux_visual_weight,
               "aux_object_weight": cfg.aux_object_weight}
    if any(not w >= 0 for w in weights.values()):
        raise ValueError(f"auxiliary loss weights must be >= 0, got {weights}")
    if cfg.scene_target not in SCENE_TARGETS:
        raise ValueError(f"scene_target must be one of {SCENE_TARGETS}, got {cfg.scene_target!r}")
    if cfg.aux_object_weight > 0:
        old = [str(d.path) for d in demos if d.objects is None or d.goals is None]
        if old:
            raise ValueError(f"{len(old)} of {len(demos)} demos in {cfg.data} have no object/goal positions (collected "
                             f"before vlaccel recorded them, e.g. {old[0]}); the scene probe (--aux-object-weight "
                             f"{cfg.aux_object_weight:g}) needs them. Recollect with `vlaccel collect --overwrite "
                             f"--out {cfg.data}` or pass --aux-object-weight 0")
    layout = layout_stats(demos) if cfg.aux_object_weight > 0 and cfg.scene_target == "layout" else None
    policy.train()
    probes = WaypointProbes(policy.config.lm_hidden, policy.config.visual_tokens)  # training only
    capture = probes.capture_visual_tokens(policy)
    params = [p for p in policy.parameters() if p.requires_grad] + list(probes.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt"
    step, history = 0, []
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=False)
        policy.load_state_dict(ckpt["model"])
        if "probes" in ckpt:  # checkpoints from before the waypoint loss have none: the probes start fresh
            missing, unexpected = probes.load_state_dict(ckpt["probes"], strict=False)
            if unexpected or any(not k.startswith("scene.") for k in missing):  # only the scene probe may be new
                raise ValueError(f"{ckpt_path}: probe weights do not match (missing {missing}, unexpected {unexpected})")
        opt.load_state_dict(ckpt["optimizer"])
        step, history = ckpt["step"], ckpt["history"]
        rng.bit_generator.state = ckpt["numpy_rng"]
        gen.set_state(ckpt["torch_gen"])
        torch.set_rng_state(ckpt["torch_rng"])
        log(f"resumed from {ckpt_path} at step {step}")

    def save_checkpoint() -> None:
        torch.save({"model": policy.state_dict(), "probes": probes.state_dict(), "optimizer": opt.state_dict(),
                    "step": step, "history": history,
                    "numpy_rng": rng.bit_generator.state, "torch_gen": gen.get_state(),
                    "torch_rng": torch.get_rng_state(), "train_config": dataclasses.asdict(cfg)}, ckpt_path)

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    t0, ema, part_ema = time.time(), None, {}
    with Progress(TextColumn("train-reference"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn()) as bar:
        task = bar.add_task("train", total=cfg.steps, completed=step, loss="-")
        while step < cfg.steps:
            if cfg.minutes is not None and time.time() - t0 > cfg.minutes * 60:
                log(f"time budget of {cfg.minutes} min reached at step {step}")
                break
            if rng.random() < cfg.window_prob:
                batch = sample_windows(demos, cfg.window_batch, policy.config.action_chunk, rng, cfg.window_frames,
                                        cfg.window_anchor, probs, layout)
            else:
                batch = sample_batch(demos, cfg.batch_size, policy.config.action_chunk, rng, cfg.max_frames, probs,
                                     layout)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                loss, parts = batch_loss(policy, batch, cfg, gen, probes, distill)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
            part_ema = {k: v if k not in part_ema else 0.98 * part_ema[k] + 0.02 * v for k, v in parts.items()}
            if step % 20 == 0:
                history.append({"step": step, "loss_ema": round(ema, 5), "seconds": round(time.time() - t0, 1),
                                **{f"{k}_ema": round(v, 5) for k, v in part_ema.items()}})
            bar.update(task, completed=step, loss=f"{ema:.4f}")
            if not bar.console.is_terminal and step % 50 == 0:  # keep background logs readable
                shown = " ".join(f"{k} {v:.4f}" for k, v in part_ema.items())
                log(f"step {step}/{cfg.steps} loss_ema {ema:.4f} ({shown}) elapsed {time.time() - t0:.0f}s")
            if step % cfg.checkpoint_every == 0:
                save_checkpoint()
    save_checkpoint()
    capture.remove()
    policy.eval()
    card = {
        "model": "vlaccel ReferenceVLA", "preset": cfg.preset, "tasks": tasks,
        "data": {"dir": cfg.data, "episodes": len(demos), "frames": int(sum(len(d.images) for d in demos)),
                 "frame_every": int(demos[0].frame_every)},
        "training": {**dataclasses.asdict(cfg), "steps_done": step, "final_loss_ema": ema,
                     "loss_curve": history[-50:]},
        "command": "vlaccel train-reference " + _cli_args(cfg),
        "storage_dtype": "bfloat16",
    }
    out = save_policy(policy, cfg.out, card=card, storage_dtype=torch.bfloat16)
    log(f"saved policy to {out} (steps {step}, loss_ema {ema})")
    return card


def _cli_args(cfg: TrainConfig) -> str:
    defaults = TrainConfig()
    parts = []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if v != getattr(defaults, f.name):
            flag = "--" + f.name.replace("_", "-")
            if isinstance(v, dict):
                v = [f"{k}={w:g}" for k, w in v.items()]
            parts.append(flag + ("" if v is True else " " + (" ".join(v) if isinstance(v, list) else str(v))))
    return " ".join(parts)
