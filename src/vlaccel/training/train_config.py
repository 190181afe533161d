"""``TrainConfig``: one ``vlaccel train-reference`` run. The command's flags are generated from these fields
(``training.flags``, with tyro), each flag's help is the field's docstring, and a recipe file (TOML) states the
same fields; constructing a config checks the fields against each other."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any, Literal

from vlaccel.config_cli import check, check_numbers
from vlaccel.errors import MissingInputError, UsageError
from vlaccel.models.config import VISUAL_READOUT_POOLS, VISUAL_READOUT_SOURCES

SCENE_TARGETS = ("relative", "layout")

#: each numeric field's range: (low, high, kind), see ``vlaccel.config_cli.check_numbers``; the probabilities
#: and loss weights are checked in ``validate`` with their own messages, task weights against the demos
#: (``batches.demo_probabilities``); ``steps=0`` with ``init`` saves that policy again, unchanged
RANGES = {
    "steps": (0, None, "int"), "minutes": (0, None, "float>"), "batch_size": (1, None, "int"),
    "max_frames": (1, None, "int"), "window_prob": (0, 1, "float"), "window_frames": (1, None, "int"),
    "window_batch": (1, None, "int"), "window_anchor": (0, None, "int"), "window_context": (0, None, "int"),
    "lr": (0, None, "float>"),
    "weight_decay": (0, None, "float"), "warmup": (0, None, "int"), "repeat": (1, None, "int"),
    "shift_pad": (0, None, "int"), "checkpoint_every": (1, None, "int"), "seed": (0, None, "int"),
    "threads": (1, None, "int"),
}
EXPERIMENT_RANGES = {"visual_readout_heads": (0, None, "int"), "distill_frames": (1, None, "int")}


@dataclasses.dataclass
class TrainExperiment:
    """Terms that served single experiments on the bundled policy's lineage (a visual readout, action
    distillation, a scene probe). Off by default; a recipe's ``[experiment]`` table sets them, and on the command
    line they are ``--experiment.NAME``."""

    aux_object_weight: float = 0.0
    """Weight of the scene probe (object and goal positions from the cognition feature; 0 = off)."""
    scene_target: Literal["relative", "layout"] = "relative"
    """Scene probe target: object and goal minus hand, m (relative), or their start, standardized (layout)."""
    visual_readout_heads: int = 0
    """With init: add a visual readout this wide (query heads, or channels per token); 0 = none."""
    visual_readout_source: Literal["lm_output", "lm_input"] = "lm_output"
    """What the added readout pools: the LM's outputs at the visual tokens, or the LM's visual inputs."""
    visual_readout_pool: Literal["attention", "flatten"] = "attention"
    """How the readout reads them: learned queries, or channels per token (flatten needs lm_input)."""
    readout_norm_weight: float = 0.0
    """Weight of |readout|^2 / |cognition token|^2, a trust region on what the readout adds (0 = off)."""
    freeze_head: bool = False
    """With freeze_backbone: keep the action head too, so only the readout and the probes train."""
    distill_weight: float = 0.0
    """Weight of the action distillation term (training.distillation; needs freeze_backbone; 0 = off)."""
    distill_tasks: list[str] | None = None
    """The tasks whose sampled actions the distillation keeps (None: every task)."""
    distill_from: str | None = None
    """The distillation teacher policy (None: the ``init`` policy); it must have the student's backbone."""
    distill_frames: int = 16
    """Frames per batch that get the distillation term (the teacher runs its DDIM chain for each)."""


@dataclasses.dataclass
class TrainConfig:
    """One training run of the reference VLA on demos from ``vlaccel collect`` (resumes from ``run_dir``)."""

    data: str = "data/demos"
    """Folder of demos from ``vlaccel collect``."""
    run_dir: str = "runs/reference"
    """Checkpoints go here; a run resumes from the checkpoint it finds."""
    out: str | None = None
    """Where the policy is saved (None: RUN_DIR/policy; the bundled one is replaced only when named)."""
    preset: Literal["tiny", "default"] = "default"
    """Model size of a policy trained from random weights (ignored with ``init``)."""
    init: str | None = None
    """Start from this saved policy ('reference' = the bundled one) instead of random weights."""
    steps: int = 3000
    """Optimizer steps (the cosine schedule's length)."""
    minutes: float | None = None
    """Wall-time budget of this invocation: stop and save when reached (a rerun resumes)."""
    batch_size: int = 4
    """Episodes per whole-episode-prefix step."""
    max_frames: int | None = None
    """Cap on the history length of a whole-episode prefix (None: whole episodes)."""
    window_prob: float = 0.75
    """Fraction of steps on short windows (more episodes per step) instead of whole-episode prefixes."""
    window_frames: int = 3
    """Frames in a short window."""
    window_batch: int = 16
    """Windows per short-window step."""
    window_anchor: int = 2
    """The episode's first frames kept in front of every window."""
    window_context: int = 0
    """Memory tasks: up to this many random earlier frames join each window (cue frames always do)."""
    window_go_prob: float = 0.0
    """Memory tasks: the share of windows drawn to cover the reach after the go signal (0: windows anywhere)."""
    window_loss: Literal["all", "window"] = "all"
    """Which frames of a window sample are trained: all of them, or only the window's consecutive frames ("window":
    the kept first, cue and context frames are history only, which skips most of the action head's work on them)."""
    prefix_go_prob: float = 0.0
    """Memory tasks: the share of whole-episode prefixes drawn to end in the reach after the go signal (0: any length)."""
    lr: float = 3e-4
    """Peak learning rate of the cosine schedule (it decays to a tenth)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup: int = 100
    """Steps of linear learning-rate warm-up before the cosine decay."""
    repeat: int = 4
    """Noise draws per cognition feature (CogACT's repeated diffusion steps)."""
    shift_pad: int = 4
    """Random-shift augmentation, in pixels."""
    bf16: bool = True
    """Train under bfloat16 autocast (``--no-bf16``: float32)."""
    checkpoint_every: int = 200
    """Steps between checkpoints."""
    seed: int = 0
    """Seeds every random generator of the run (restored on resume)."""
    tasks: list[str] | None = None
    """Train on these tasks' demos only (None: every task in ``data``)."""
    task_weights: dict[str, float] | None = None
    """Relative sampling weight per task, e.g. push-v3 3 (unlisted tasks: 1)."""
    threads: int | None = None
    """Torch CPU threads (None: torch's default)."""
    aux_weight: float = 1.0
    """Weight of the waypoint loss (expert hand's future displacement, from the cognition feature; 0 = off)."""
    aux_visual_weight: float = 0.1
    """Weight of the same loss read from the frame's visual tokens (0 = off)."""
    freeze_vision: bool = False
    """Keep the vision encoder as it is (its backward is about a fifth of a training step; the projector, LM and
    action head still train). Needs init."""
    freeze_backbone: bool = False
    """With init: train only the action head, a visual readout and the probes (the rest frozen)."""
    experiment: TrainExperiment = dataclasses.field(default_factory=TrainExperiment)
    """Experiment-only terms (off by default)."""

    def __post_init__(self) -> None:
        if isinstance(self.experiment, dict):  # from a model card or a recipe table
            self.experiment = TrainExperiment(**self.experiment)
        if self.task_weights is not None and not self.task_weights:
            self.task_weights = None  # no weights = uniform sampling, as None
        check(self)

    @property
    def out_dir(self) -> Path:
        """Where the trained policy is saved: ``out``, or ``run_dir/policy``."""
        return Path(self.out) if self.out is not None else Path(self.run_dir) / "policy"

    def validate(self) -> None:
        """Refuse fields that contradict each other or are out of range (``UsageError``, naming the field to fix)."""
        x = self.experiment
        check_numbers(self, RANGES)
        check_numbers(x, EXPERIMENT_RANGES, prefix="experiment.")
        if x.visual_readout_heads and not self.init:
            raise UsageError("experiment.visual_readout_heads adds a readout to an existing policy: set init too "
                             "(a policy trained from scratch gets its sizes from preset)")
        if (x.visual_readout_source, x.visual_readout_pool) != ("lm_output", "attention") and not x.visual_readout_heads:
            raise UsageError("experiment.visual_readout_source/visual_readout_pool shape an added readout: set "
                             "experiment.visual_readout_heads N too")
        if x.readout_norm_weight < 0:
            raise UsageError(f"experiment.readout_norm_weight must be >= 0, got {x.readout_norm_weight}")
        if x.freeze_head and not self.freeze_backbone:
            raise UsageError("experiment.freeze_head trains only a visual readout (and the probes): set "
                             "freeze_backbone too")
        if self.freeze_backbone and not self.init:
            raise UsageError("freeze_backbone keeps the vision encoder and LM as they are: set init POLICY")
        if not x.distill_weight >= 0:
            raise UsageError(f"experiment.distill_weight must be >= 0, got {x.distill_weight}")
        if x.distill_weight > 0 and not self.freeze_backbone:
            raise UsageError("experiment.distill_weight reuses the student's LM features for the teacher: set "
                             "freeze_backbone (and init POLICY)")
        if x.distill_weight == 0 and (x.distill_tasks is not None or x.distill_from is not None):
            raise UsageError("experiment.distill_tasks/distill_from shape the distillation term: set "
                             "experiment.distill_weight W > 0 too")
        weights = {"aux_weight": self.aux_weight, "aux_visual_weight": self.aux_visual_weight,
                   "experiment.aux_object_weight": x.aux_object_weight}
        if any(not w >= 0 for w in weights.values()):
            raise UsageError(f"auxiliary loss weights must be >= 0, got {weights}")
        if x.scene_target not in SCENE_TARGETS:
            raise UsageError(f"experiment.scene_target must be one of {SCENE_TARGETS}, got {x.scene_target!r}")
        if x.visual_readout_source not in VISUAL_READOUT_SOURCES or x.visual_readout_pool not in VISUAL_READOUT_POOLS:
            raise UsageError(f"experiment.visual_readout_source must be one of {VISUAL_READOUT_SOURCES} and "
                             f"visual_readout_pool one of {VISUAL_READOUT_POOLS}")
        if not 0 <= self.window_go_prob <= 1:
            raise UsageError(f"window_go_prob is a probability: it must be in [0, 1], got {self.window_go_prob}")
        if self.window_loss not in ("all", "window"):
            raise UsageError(f"window_loss must be 'all' or 'window', got {self.window_loss!r}")
        if self.freeze_vision and not self.init:
            raise UsageError("freeze_vision keeps the vision encoder as it is: set init POLICY")
        if not 0 <= self.prefix_go_prob <= 1:
            raise UsageError(f"prefix_go_prob is a probability: it must be in [0, 1], got {self.prefix_go_prob}")
        if self.preset not in ("tiny", "default"):
            raise UsageError(f"preset must be 'tiny' or 'default', got {self.preset!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "the config") -> TrainConfig:
        """A config from a mapping of field names (a recipe file, a model card's ``training``); an unknown name is
        refused, naming the fields that exist."""
        values = dict(values)
        experiment = values.pop("experiment", {}) or {}
        for names, known, where in ((values, cls, ""), (experiment, TrainExperiment, "experiment.")):
            fields = {f.name for f in dataclasses.fields(known)} - {"experiment"}
            unknown = sorted(set(names) - fields)
            if unknown:
                raise UsageError(f"{source}: unknown field(s) {[where + u for u in unknown]}; {where or 'top-level '}"
                                 f"fields are {sorted(fields)}")
        return cls(**values, experiment=TrainExperiment(**experiment))


def load_recipe(path: str | Path) -> TrainConfig:
    """The ``TrainConfig`` a recipe file states: TOML, top-level keys are ``TrainConfig`` fields, an
    ``[experiment]`` table holds ``TrainExperiment`` fields; what it leaves out keeps its default."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"--config {path}: no such file; pass a recipe TOML such as recipes/reference/v8.toml")
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"--config {path}: not valid TOML ({err})") from None
    return TrainConfig.from_dict(values, source=str(path))
