"""``TrainConfig``: one ``vlaccel train-reference`` run, every field a flag (``training.flags``), checked on
construction."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from vlaccel.errors import UsageError

SCENE_TARGETS = ("relative", "layout")


@dataclasses.dataclass
class TrainConfig:
    """One training run; every field is a flag of ``vlaccel train-reference`` (``training.flags``). Constructing one
    checks the fields against each other (``validate``); what needs the demos or the policy is checked by ``train``."""

    data: str = "data/demos"
    run_dir: str = "runs/reference"
    out: str | None = None  # where the policy is saved; None: RUN_DIR/policy (never the bundled assets by default)
    preset: str = "default"
    steps: int = 3000
    minutes: float | None = None  # stop early when this much wall time has passed (then save)
    batch_size: int = 4
    max_frames: int | None = None
    window_prob: float = 0.75  # fraction of steps that use short windows instead of whole-episode prefixes
    window_frames: int = 3
    window_batch: int = 16
    window_anchor: int = 2  # the episode's first frames kept in front of every window (memory task: goal shown there)
    window_context: int = 0  # long-horizon memory tasks: up to this many random earlier frames join each window,
    # beside the cue frames, which are always kept (batches.window_frames)
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

    def __post_init__(self) -> None:
        if self.task_weights is not None and not self.task_weights:
            self.task_weights = None  # no weights = uniform sampling, as None (and what --task-weights can state)
        self.validate()

    @property
    def out_dir(self) -> Path:
        """Where the trained policy is saved: ``out``, or ``run_dir/policy``."""
        return Path(self.out) if self.out is not None else Path(self.run_dir) / "policy"

    def validate(self) -> None:
        """Refuse flags that contradict each other or are out of range (``UsageError``, naming the flag to fix)."""
        if self.visual_readout_heads and not self.init:
            raise UsageError("--visual-readout-heads adds a readout to an existing policy: pass --init POLICY too "
                             "(a policy trained from scratch gets its sizes from --preset)")
        if ((self.visual_readout_source, self.visual_readout_pool) != ("lm_output", "attention")
                and not self.visual_readout_heads):
            raise UsageError("--visual-readout-source/--visual-readout-pool shape an added readout: pass "
                             "--visual-readout-heads N too")
        if self.readout_norm_weight < 0:
            raise UsageError(f"--readout-norm-weight must be >= 0, got {self.readout_norm_weight}")
        if self.freeze_head and not self.freeze_backbone:
            raise UsageError("--freeze-head trains only a visual readout (and the probes): pass --freeze-backbone too")
        if self.freeze_backbone and not self.init:
            raise UsageError("--freeze-backbone keeps the vision encoder and LM as they are: pass --init POLICY")
        if not self.distill_weight >= 0:
            raise UsageError(f"--distill-weight must be >= 0, got {self.distill_weight}")
        if self.distill_weight > 0 and not self.freeze_backbone:
            raise UsageError("--distill-weight reuses the student's LM features for the teacher: pass "
                             "--freeze-backbone (and --init POLICY)")
        if self.distill_weight == 0 and (self.distill_tasks is not None or self.distill_from is not None):
            raise UsageError("--distill-tasks/--distill-from shape the distillation term: pass --distill-weight W > 0 "
                             "too")
        weights = {"aux_weight": self.aux_weight, "aux_visual_weight": self.aux_visual_weight,
                   "aux_object_weight": self.aux_object_weight}
        if any(not w >= 0 for w in weights.values()):
            raise UsageError(f"auxiliary loss weights must be >= 0, got {weights}")
        if self.scene_target not in SCENE_TARGETS:
            raise UsageError(f"scene_target must be one of {SCENE_TARGETS}, got {self.scene_target!r}")
