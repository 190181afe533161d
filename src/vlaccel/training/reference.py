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
``--checkpoint-every`` steps into ``--run-dir`` and resumes from there; saves the policy into ``--out`` (default
``RUN_DIR/policy``: the bundled policy in ``vlaccel/assets/reference`` is only replaced when ``--out`` names it).
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import re
import time
from pathlib import Path

import numpy as np
import torch

from vlaccel import atomic
from vlaccel.errors import MissingInputError, UsageError
from vlaccel.models import ReferenceVLA, ReferenceVLAConfig, load_policy, save_policy
from vlaccel.models.io import bundled_dir
from vlaccel.progress import progress_bar
from vlaccel.training.auxiliary import WAYPOINT_SCALE, WaypointProbes
from vlaccel.training.batches import (
    demo_probabilities,
    layout_stats,
    random_shift,
    sample_batch,
    sample_windows,
)
from vlaccel.training.distillation import ActionDistillation
from vlaccel.training.flags import command_line
from vlaccel.training.train_config import SCENE_TARGETS, TrainConfig, TrainExperiment

__all__ = ["SCENE_TARGETS", "TrainConfig", "TrainExperiment", "batch_loss", "load_checkpoint", "lr_at", "train"]


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
             if cfg.experiment.readout_norm_weight > 0 else None,
             distill.capture(policy) if distill is not None else None]
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
        total = total + cfg.experiment.readout_norm_weight * ratio.mean()
        parts["readout_norm"] = ratio.mean().item()
    if distill is not None:
        distill_loss = distill.loss(policy.action_head, z_all, valid, batch.tasks, gen)
        if distill_loss is not None:  # else no frame of a kept task in this batch
            total = total + cfg.experiment.distill_weight * distill_loss
            parts["distill"] = distill_loss.item()
    if probes is None or cfg.aux_weight == cfg.aux_visual_weight == cfg.experiment.aux_object_weight == 0:
        return total, parts
    if cfg.experiment.aux_object_weight > 0 and batch.scene is None:
        raise UsageError("aux_object_weight > 0 needs demos with object and goal positions; recollect them with "
                         "`vlaccel collect --overwrite` or set experiment.aux_object_weight 0")
    scene = batch.scene if cfg.experiment.aux_object_weight > 0 else None
    aux = probes.loss(z_all, valid, batch.waypoints, scene,
                      scene_scale=WAYPOINT_SCALE if cfg.experiment.scene_target == "relative" else 1.0)
    parts.update({k: v.item() for k, v in aux.items()})
    total = total + cfg.aux_weight * aux["waypoint"] + cfg.aux_visual_weight * aux["waypoint_visual"]
    if "object" in aux:
        total = total + cfg.experiment.aux_object_weight * aux["object"]
    return total, parts


def train(cfg: TrainConfig, log=print) -> dict:
    """Train (or resume from ``cfg.run_dir``) as ``cfg`` says; saves the policy into ``cfg.out_dir`` and returns
    its model card. Everything that can be refused is refused before anything is written."""
    from vlaccel.atomic import check_writable

    check_writable(cfg.run_dir, "--run-dir", folder=True)
    check_writable(cfg.out_dir, "--out", folder=True)
    check_resumed_recipe(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    demos, probs, layout = _load_demos(cfg)
    tasks = sorted({d.task for d in demos})
    policy, distill, init_stream = _build_policy(cfg, demos, tasks)
    policy.train()
    with init_stream.init_rng():  # the probes' initial weights continue the last built policy's seeded init
        probes = WaypointProbes(policy.config.lm_hidden, policy.config.visual_tokens)  # training only
    capture = probes.capture_visual_tokens(policy)
    run = _Run(cfg, policy, probes)
    run.resume(log)
    ema = _fit(cfg, run, demos, probs, layout, distill, log)
    run.save()
    capture.remove()
    policy.eval()
    card = _model_card(cfg, demos, tasks, run.step, ema, run.history)
    if cfg.out_dir.resolve() == bundled_dir("reference").resolve():
        log(f"replacing the bundled policy in {cfg.out_dir} (--out names it)")
    out = save_policy(policy, cfg.out_dir, card=card, storage_dtype=torch.bfloat16)
    log(f"saved policy to {out} (steps {run.step}, loss_ema {ema})")
    return card


def _load_demos(cfg: TrainConfig) -> tuple[list, np.ndarray | None, dict | None]:
    """The demos, their sampling probabilities and (scene target "layout") per-task layout statistics; refuses
    demos that cannot serve ``cfg``."""
    from vlaccel.demo_files import load_demos

    demos = load_demos(cfg.data, tasks=cfg.tasks)
    if not demos:
        raise MissingInputError(f"no demonstrations in {cfg.data}; create them with `vlaccel collect --out {cfg.data}`")
    tasks = sorted({d.task for d in demos})
    unknown = sorted(set(cfg.experiment.distill_tasks or ()) - set(tasks))
    if unknown:
        raise UsageError(f"experiment.distill_tasks names tasks with no demos: {unknown}; the demos hold {tasks}")
    probs = demo_probabilities(demos, cfg.task_weights)  # before any model is built: bad weights fail fast
    if cfg.experiment.aux_object_weight > 0:
        old = [str(d.path) for d in demos if d.objects is None or d.goals is None]
        if old:
            raise UsageError(f"{len(old)} of {len(demos)} demos in {cfg.data} have no object/goal positions (collected "
                             f"before vlaccel recorded them, e.g. {old[0]}); the scene probe (experiment."
                             f"aux_object_weight {cfg.experiment.aux_object_weight:g}) needs them. Recollect with "
                             f"`vlaccel collect --overwrite --out {cfg.data}` or set experiment.aux_object_weight 0")
    scene = cfg.experiment.aux_object_weight > 0
    layout = layout_stats(demos) if scene and cfg.experiment.scene_target == "layout" else None
    return demos, probs, layout


def _build_policy(cfg: TrainConfig, demos: list, tasks: list[str]
                  ) -> tuple[ReferenceVLA, ActionDistillation | None, ReferenceVLA]:
    """The policy to train (fresh from ``--preset`` or ``--init``, with an added readout, frozen parts frozen),
    the distillation term, and the policy built last (whose seeded init stream the probes continue)."""
    policy = load_policy(cfg.init) if cfg.init else ReferenceVLA(ReferenceVLAConfig.preset(cfg.preset))
    if cfg.experiment.visual_readout_heads:
        x = cfg.experiment
        policy.add_visual_readout(x.visual_readout_heads, x.visual_readout_source, x.visual_readout_pool)
    if cfg.experiment.readout_norm_weight > 0 and policy.visual_readout is None:
        raise UsageError("experiment.readout_norm_weight penalizes a visual readout; the policy has none: add one "
                         "with experiment.visual_readout_heads N (with init)")
    if cfg.experiment.freeze_head and policy.visual_readout is None:
        raise UsageError(f"experiment.freeze_head leaves nothing but the probes to train: {cfg.init} has no visual "
                         "readout; add one with experiment.visual_readout_heads N")
    frozen = (policy.vision, policy.projector, policy.proprio_proj, policy.language_model) if cfg.freeze_backbone else ()
    frozen = frozen or ((policy.vision,) if cfg.freeze_vision else ())
    for module in frozen + ((policy.action_head,) if cfg.experiment.freeze_head else ()):
        if module is not None:
            module.requires_grad_(False)
    distill, last_built = None, policy
    if cfg.experiment.distill_weight > 0:
        last_built = load_policy(cfg.experiment.distill_from or cfg.init)
        distill = ActionDistillation(last_built, policy,
                                     set(tasks if cfg.experiment.distill_tasks is None else cfg.experiment.distill_tasks),
                                     cfg.experiment.distill_frames)
    if policy.config.image_size != demos[0].images.shape[1]:
        raise UsageError(f"demos are {demos[0].images.shape[1]} px but the {cfg.preset!r} preset expects "
                         f"{policy.config.image_size} px; collect with --image-size {policy.config.image_size}")
    return policy, distill, last_built


class _Run:
    """What a checkpoint in ``run_dir`` holds: the policy, the probes, the optimizer, the step, the loss history
    and every random generator the loop draws from (seeded from ``cfg.seed``, restored on resume)."""

    def __init__(self, cfg: TrainConfig, policy: ReferenceVLA, probes: WaypointProbes) -> None:
        self.cfg, self.policy, self.probes = cfg, policy, probes
        self.params = [p for p in policy.parameters() if p.requires_grad] + list(probes.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        run_dir = Path(cfg.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "checkpoint.pt"
        self.step, self.history = 0, []
        self.rng = np.random.default_rng(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)

    def resume(self, log) -> None:
        """Continue from the checkpoint in ``run_dir``, if there is one."""
        if not self.path.exists():
            return
        ckpt = load_checkpoint(self.path)
        self.policy.load_state_dict(ckpt["model"])
        if "probes" in ckpt:  # checkpoints from before the waypoint loss have none: the probes start fresh
            missing, unexpected = self.probes.load_state_dict(ckpt["probes"], strict=False)
            if unexpected or any(not k.startswith("scene.") for k in missing):  # only the scene probe may be new
                raise UsageError(f"{self.path}: probe weights do not match (missing {missing}, unexpected "
                                 f"{unexpected}); pass another --run-dir")
        self.opt.load_state_dict(ckpt["optimizer"])
        self.step, self.history = ckpt["step"], ckpt["history"]
        self.rng.bit_generator.state = ckpt["numpy_rng"]
        self.gen.set_state(ckpt["torch_gen"])
        torch.set_rng_state(ckpt["torch_rng"])
        log(f"resumed from {self.path} at step {self.step}")

    def save(self) -> None:
        """Write the checkpoint atomically (a temp file, then ``os.replace``): a run killed while saving keeps the
        previous checkpoint. Only tensors and plain Python values, so :func:`load_checkpoint` reads it weights-only."""
        state = {"model": self.policy.state_dict(), "probes": self.probes.state_dict(),
                 "optimizer": self.opt.state_dict(), "step": self.step, "history": self.history,
                 "numpy_rng": self.rng.bit_generator.state, "torch_gen": self.gen.get_state(),
                 "torch_rng": torch.get_rng_state(), "train_config": dataclasses.asdict(self.cfg)}
        with atomic.replacing(self.path) as tmp:
            torch.save(state, tmp)


CHECKPOINT_KEYS = ("model", "optimizer", "step", "history", "numpy_rng", "torch_gen", "torch_rng")


def load_checkpoint(path: Path) -> dict:
    """A ``train-reference`` checkpoint, loaded weights-only (``torch.load(weights_only=True)``): tensors and plain
    Python values. A file that needs anything else (a pickled object, which could run code when loaded) is refused
    with one ``UsageError`` line naming it, as is an unreadable or truncated one."""
    again = "delete it (training starts over) or pass another --run-dir"
    try:
        ckpt = torch.load(path, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        what = f"it names {found.group(1)}" if found else str(err).splitlines()[0]
        raise UsageError(f"{path} is not a weights-only checkpoint ({what}); loading it could run code, so it is "
                         f"refused: {again}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"{path} is not a readable checkpoint ({first}); it may be truncated: {again}") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UsageError(f"{path} is not a train-reference checkpoint (no {', '.join(missing)}): {again}")
    return ckpt


#: fields a resumed run may change: where files go, how long and how fast this invocation runs, and the schedule's
#: length (a longer run continues the same recipe); every other field is the recipe the checkpoint was trained on
RESUME_MAY_CHANGE = frozenset({"data", "run_dir", "out", "steps", "minutes", "threads", "checkpoint_every"})


def _flat(config: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in config.items():
        if isinstance(value, dict) and key == "experiment":
            flat.update(_flat(value, f"{key}."))
        else:
            flat[prefix + key] = list(value) if isinstance(value, tuple) else value
    return flat


def check_resumed_recipe(cfg: TrainConfig) -> None:
    """Refuse, before anything is loaded, to resume a checkpoint in ``cfg.run_dir`` that was trained with another
    recipe (learning rate, seed, task list, ...): the run would silently continue as a mix of both."""
    path = Path(cfg.run_dir) / "checkpoint.pt"
    if not path.exists():
        return
    recorded = load_checkpoint(path).get("train_config")
    if not isinstance(recorded, dict):  # checkpoints written before the config was recorded: nothing to compare
        return
    now, then = _flat(dataclasses.asdict(cfg)), _flat(recorded)
    changed = [k for k in sorted(set(now) | set(then))
               if k not in RESUME_MAY_CHANGE and k in then and now.get(k) != then[k]]
    if changed:
        diffs = "; ".join(f"{k}: {then[k]!r} in the checkpoint, {now.get(k)!r} now" for k in changed)
        raise UsageError(f"{path} was trained with another recipe ({diffs}); resume with the checkpoint's values, or "
                         f"start a new run from its policy: --init {Path(cfg.out_dir)} --run-dir NEW_FOLDER")


def _fit(cfg: TrainConfig, run: _Run, demos: list, probs: np.ndarray | None, layout: dict | None,
         distill: ActionDistillation | None, log) -> float | None:
    """The optimisation loop, from ``run.step`` to ``cfg.steps`` (or the time budget); checkpoints every
    ``checkpoint_every`` steps; returns the loss EMA."""
    policy, chunk = run.policy, run.policy.config.action_chunk
    t0, ema, part_ema = time.time(), None, {}
    with progress_bar("train-reference", cfg.steps, completed=run.step) as bar:
        while run.step < cfg.steps:
            if cfg.minutes is not None and time.time() - t0 > cfg.minutes * 60:
                log(f"time budget of {cfg.minutes} min reached at step {run.step}")
                break
            if run.rng.random() < cfg.window_prob:
                batch = sample_windows(demos, cfg.window_batch, chunk, run.rng, cfg.window_frames, cfg.window_anchor,
                                       probs, layout, cfg.window_context, cfg.window_go_prob,
                                       history_only=cfg.window_loss == "window")
            else:
                batch = sample_batch(demos, cfg.batch_size, chunk, run.rng, cfg.max_frames, probs, layout,
                                     cfg.prefix_go_prob)
            for group in run.opt.param_groups:
                group["lr"] = lr_at(run.step, cfg)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                loss, parts = batch_loss(policy, batch, cfg, run.gen, run.probes, distill)
            run.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(run.params, 1.0)
            run.opt.step()
            run.step += 1
            ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
            part_ema = {k: v if k not in part_ema else 0.98 * part_ema[k] + 0.02 * v for k, v in parts.items()}
            if run.step % 20 == 0:
                run.history.append({"step": run.step, "loss_ema": round(ema, 5), "seconds": round(time.time() - t0, 1),
                                    **{f"{k}_ema": round(v, 5) for k, v in part_ema.items()}})
            bar.update(run.step, loss_ema=ema, **part_ema)
            if run.step % cfg.checkpoint_every == 0:
                run.save()
    return ema


def _model_card(cfg: TrainConfig, demos: list, tasks: list[str], step: int, ema: float | None,
                history: list[dict]) -> dict:
    """The model card saved next to the weights: data, the full config, the loss curve and the command that
    replays the run (``training.flags.command_line``)."""
    return {
        "model": "vlaccel ReferenceVLA", "preset": cfg.preset, "tasks": tasks,
        "data": {"dir": cfg.data, "episodes": len(demos), "frames": int(sum(len(d.images) for d in demos)),
                 "frame_every": int(demos[0].frame_every)},
        "training": {**dataclasses.asdict(cfg), "steps_done": step, "final_loss_ema": ema,
                     "loss_curve": history[-50:]},
        "command": command_line(cfg),
        "storage_dtype": "bfloat16",
    }
