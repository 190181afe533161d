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

The probes are not part of the policy and are not saved with it (only in training checkpoints).
"""

from __future__ import annotations

import torch
from torch import nn

from vlaccel.training.batches import WAYPOINT_FRAMES

WAYPOINT_SCALE = 0.1  # m: displacements are regressed in units of 10 cm


class WaypointProbes(nn.Module):
    """Linear waypoint probes on the cognition feature and on one frame's visual tokens."""

    def __init__(self, hidden: int, visual_tokens: int):
        super().__init__()
        out = 3 * len(WAYPOINT_FRAMES)
        self.cognition = nn.Linear(hidden, out)
        self.visual = nn.Linear(visual_tokens * hidden, out)
        self._captured: torch.Tensor | None = None

    def capture_visual_tokens(self, policy: nn.Module) -> torch.utils.hooks.RemovableHandle:
        """Keep the projector's output of every forward ([B*F*cams, N, D]) for :meth:`loss`."""

        def hook(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
            self._captured = output

        return policy.projector.register_forward_hook(hook)

    def loss(self, z: torch.Tensor, valid: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """MSE of both probes. z: [B, F, D] cognition features; valid: [B, F] bool; targets: [B, F, W, 3] (m)."""
        if self._captured is None:
            raise RuntimeError("WaypointProbes.loss needs capture_visual_tokens(policy) and a forward first")
        b, f = valid.shape
        visual = self._captured.reshape(b, f, -1)  # [B, F, cams*N*D]
        self._captured = None
        target = targets[valid].flatten(1) / WAYPOINT_SCALE  # [M, W*3]
        mse = nn.functional.mse_loss
        return {"waypoint": mse(self.cognition(z[valid].float()), target),
                "waypoint_visual": mse(self.visual(visual[valid].float()), target)}
