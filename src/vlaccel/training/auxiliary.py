"""Training-only auxiliary loss of ``train-reference``: regress the expert hand's future displacement.

Why: trained on the diffusion loss alone, the bundled policy learned to ignore its camera. Its actions changed
by 0.003 between an all-black and a random-noise image, and it reached for the same spot whatever the goal.
Within a task the scenes differ in a few patches only (where the goal ball, the puck or the handle is), and
the noisy epsilon-MSE gradient did not make the language model attend to those patches in ~2000 CPU steps.

Targets (``batches.waypoint_targets``): the hand's displacement, in units of ``WAYPOINT_SCALE``, from the
current frame to 8 frames later and to the episode's last frame. Knowing them needs the target's position in
the image. Two linear probes read them:

* from the frame's visual tokens (the projector output, all ``visual_tokens x D`` values, so every patch has
  its own weights): this teaches the vision encoder to encode where things are;
* from the frame's cognition feature (what the action head is conditioned on): this teaches the language
  model to route that into the condition.

A third probe (``scene``, weight ``aux_object_weight``) reads where the task's object and goal are relative to
the hand (``batches.scene_targets``, from the simulator positions ``vlaccel collect`` records) from the
cognition feature. Why: with the waypoint probes alone, push-v3's puck position was linearly decodable from
the visual tokens (cross-validated R^2 0.91) but not from the cognition feature (0.01), so the arm went for the
goal and missed the puck (``examples/probe_positions.py``). The waypoint targets are dominated by the goal.
It is off by default: 950 steps with weight 1 left push where it was and cost the reach tasks.
Relative to the hand, the puck's 7 cm spread in y is small next to the hand's motion, and 500 steps at weight
0.05 brought the probe's loss down without putting the puck's y into the cognition (R^2 0.04 -> 0.06); the
``layout`` target (where object and goal started, standardized within the task) asks for exactly that spread.
It did not put it there either: 500 steps at weight 0.1 and at 1.0 left the y's R^2 at reset at 0.05 and
push where it was (docs/reference_policy.md, "What we tried").

The probes are not part of the policy and are not saved with it (only in training checkpoints).
"""

from __future__ import annotations

import torch
from torch import nn

from vlaccel.training.batches import WAYPOINT_FRAMES

WAYPOINT_SCALE = 0.1  # m: displacements are regressed in units of 10 cm


class WaypointProbes(nn.Module):
    """Linear waypoint probes on the cognition feature and on one frame's visual tokens, and the scene probe
    (object and goal: ``batches.scene_targets``) on the cognition feature."""

    def __init__(self, hidden: int, visual_tokens: int):
        super().__init__()
        out = 3 * len(WAYPOINT_FRAMES)
        self.cognition = nn.Linear(hidden, out)
        self.visual = nn.Linear(visual_tokens * hidden, out)
        self.scene = nn.Linear(hidden, 2 * 3)
        self._captured: torch.Tensor | None = None

    def capture_visual_tokens(self, policy: nn.Module) -> torch.utils.hooks.RemovableHandle:
        """Keep the projector's output of every forward ([B*F*cams, N, D]) for :meth:`loss`."""

        def hook(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
            self._captured = output

        return policy.projector.register_forward_hook(hook)

    def loss(self, z: torch.Tensor, valid: torch.Tensor, targets: torch.Tensor,
             scene: torch.Tensor | None = None, scene_scale: float = WAYPOINT_SCALE) -> dict[str, torch.Tensor]:
        """MSE of each probe. z: [B, F, D] cognition features; valid: [B, F] bool; targets: [B, F, W, 3] (m);
        scene: [B, F, 2, 3] scene targets (``batches.scene_targets``), regressed in units of ``scene_scale``
        (m for hand-relative targets; 1 for the already standardized layout), or None (no ``object`` term)."""
        if self._captured is None:
            raise RuntimeError("WaypointProbes.loss needs capture_visual_tokens(policy) and a forward first")
        b, f = valid.shape
        visual = self._captured.reshape(b, f, -1)  # [B, F, cams*N*D]
        self._captured = None
        target = targets[valid].flatten(1) / WAYPOINT_SCALE  # [M, W*3]
        mse = nn.functional.mse_loss
        zv = z[valid].float()  # [M, D]
        parts = {"waypoint": mse(self.cognition(zv), target),
                 "waypoint_visual": mse(self.visual(visual[valid].float()), target)}
        if scene is not None:
            parts["object"] = mse(self.scene(zv), scene[valid].flatten(1) / scene_scale)  # [M, 6]
        return parts
