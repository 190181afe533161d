"""Training-only trust region on the actions a policy samples: distillation along a teacher's DDIM path.

Why (docs/reference_policy.md, "What we tried"): training the bundled policy's action head further on the
demos, with or without a visual readout, lifted push-v3 but cost window-open-v3 (28/40 -> 9-13/40 on the
selection seeds). The policy decodes deterministically (DDIM with eta = 0 from ``x_T = 0``), so each condition
has exactly one action path, and a small change of the head or of the condition moves it. A penalty on the
weights does not say which changes matter; this term says it in action space, on the tasks it is asked to
keep.

The term (for the frames of the named tasks): run the teacher's DDIM chain from its own condition ``z_T``,
``x_S = x_T, ..., x_0`` with guided noise estimates ``eps_T(x_k, t_k, z_T)`` (``DiffusionActionHead.ddim_path``);
pick one step k per frame at random and regress the student's guided estimate at the same point onto the
teacher's::

    L_distill = E_k || eps_S(x_k, t_k, z_S) - eps_T(x_k, t_k, z_T) ||^2     (guided: eps_u + s (eps_c - eps_u))

DDIM's update is a fixed function of (x_k, eps), so where the two estimates agree at every step the student
retraces the teacher's path from the same ``x_T`` and samples the same actions. Unlike the demos' epsilon-MSE
(random noise levels, random ``x_T``), this trains exactly the points the deterministic sampler visits.

The teacher must share the student's frozen backbone (vision, projector, proprio projection, LM: checked
tensor by tensor), so its condition comes without a second LM forward: the student's cognition with the
teacher's visual readout in place of the student's, ``z_T = z_S - readout_S(v) + readout_T(v)`` (v: the tokens
both read; a policy without a readout contributes 0).
"""

from __future__ import annotations

import torch
from torch import nn

from vlaccel.errors import UsageError

HEAD_PREFIXES = ("action_head.", "visual_readout.")  # everything else is the backbone both must share


class ActionDistillation:
    """Distillation of a frozen teacher's sampled actions into a student trained with a frozen backbone.

    ``frames``: at most this many (randomly chosen) frames of each batch get the term, since the teacher runs
    its whole DDIM chain for each of them.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, tasks: set[str], frames: int = 16):
        if frames < 1:
            raise UsageError(f"distillation needs at least one frame per batch, got frames={frames}")
        if not tasks:
            raise UsageError("distillation needs at least one task to keep "
                             "(e.g. experiment.distill_tasks = ['window-open-v3'])")
        student_state, teacher_state = student.state_dict(), teacher.state_dict()
        backbone = [k for k in student_state if not k.startswith(HEAD_PREFIXES)]
        differ = [k for k in backbone if k not in teacher_state or not torch.equal(student_state[k], teacher_state[k])]
        if differ or len(backbone) != sum(not k.startswith(HEAD_PREFIXES) for k in teacher_state):
            raise UsageError(f"the distillation teacher must have the student's backbone (the student reuses its LM "
                             f"features); {len(differ)} backbone tensors differ, e.g. {differ[:3]}. Distill from the "
                             f"policy the student was initialized from, with --freeze-backbone")
        if teacher.visual_readout is not None and student.visual_readout is None:
            raise UsageError("the distillation teacher has a visual readout and the student none: the teacher's "
                             "condition needs the tokens a student readout reads; add one (experiment.visual_readout_heads N)")
        if teacher.visual_readout is not None and (
                teacher.config.visual_readout_source != student.config.visual_readout_source):
            raise UsageError(f"teacher and student readouts read different tokens ("
                             f"{teacher.config.visual_readout_source} vs {student.config.visual_readout_source})")
        teacher.eval().requires_grad_(False)
        self.head, self.readout = teacher.action_head, teacher.visual_readout
        self.tasks, self.frames = set(tasks), frames
        self._readout_io: tuple[torch.Tensor, torch.Tensor] | None = None

    def capture(self, student: nn.Module) -> torch.utils.hooks.RemovableHandle | None:
        """Keep the student readout's input and output of every forward (for the teacher's condition)."""
        if student.visual_readout is None:
            return None

        def hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            self._readout_io = (args[0], output)

        return student.visual_readout.register_forward_hook(hook)

    def teacher_condition(self, z: torch.Tensor) -> torch.Tensor:
        """The teacher's condition [B, F, D] from the student's z [B, F, D] of the last forward."""
        if self._readout_io is None:
            return z.detach()
        tokens, student_out = self._readout_io  # [B*F, n, D], [B*F, D]
        self._readout_io = None
        with torch.no_grad():
            z_t = z - student_out.reshape(z.shape)
            if self.readout is not None:
                z_t = z_t + self.readout(tokens).reshape(z.shape)
        return z_t

    def loss(self, head: nn.Module, z: torch.Tensor, valid: torch.Tensor, tasks: list[str],
             gen: torch.Generator) -> torch.Tensor | None:
        """L_distill over up to ``frames`` valid frames of the kept tasks (None when the batch has none).

        head: the student's action head; z: [B, F, D] the student's conditions; valid: [B, F] bool; tasks: [B]."""
        z_t = self.teacher_condition(z)
        keep = torch.tensor([t in self.tasks for t in tasks], device=z.device)[:, None] & valid  # [B, F]
        rows = keep.flatten().nonzero().squeeze(1)  # [M]
        if rows.numel() == 0:
            return None
        rows = rows[torch.randperm(rows.numel(), generator=gen)[: self.frames]]  # [N]
        z_s, z_t = z.flatten(0, 1)[rows].float(), z_t.flatten(0, 1)[rows].float()  # [N, D]
        with torch.no_grad():
            xs, eps_t, timesteps = self.head.ddim_path(z_t)  # [S+1, N, chunk, A], [S, N, chunk, A], [S]
        k = torch.randint(0, len(timesteps), (rows.numel(),), generator=gen)  # [N]
        n = torch.arange(rows.numel())
        eps_s = head.guided_eps(xs[k, n], timesteps[k].to(z.device), z_s)  # [N, chunk, A]
        return (eps_s - eps_t[k, n].to(eps_s.dtype)).pow(2).mean()
