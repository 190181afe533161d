"""The Euler step a flow-matching VLA's sampler is at, counted by two hooks (transformers' and LeRobot's pi0, pi0.5,
SmolVLA): the head cache (EfficientVLA Eqs. 8-11) refreshes at steps ``s % interval == 0``.

The count restarts when a module that runs once per action chunk, before the first step, is entered (``start``:
the VLM of the prefix, its token embedding, the state projection) and advances after each step's last module
(``end``: the expert, or the action output projection). It is stored on a module of the model (``root``), so a deep
copy of the model counts its own steps, and only one technique at a time may install it.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["FlowStepCounter", "counted_step"]

_STEP_ATTR = "_vlaccel_flow_step"


class FlowStepCounter:
    """Counts the running sampler's steps on ``root`` (see the module doc); ``remove()`` takes the hooks off."""

    def __init__(self, root: nn.Module, start: nn.Module, end: nn.Module):
        if _STEP_ATTR in root.__dict__:
            raise RuntimeError(f"the flow steps of this {type(root).__name__} are already counted by another "
                               "technique")
        self.root, self.step = root, 0
        root.__dict__[_STEP_ATTR] = self
        self.hooks = [start.register_forward_pre_hook(self.restart), end.register_forward_hook(self.advance)]

    def restart(self, module: Any, args: Any) -> None:
        self.step = 0

    def advance(self, module: Any, args: Any, output: Any) -> None:
        self.step += 1

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        self.root.__dict__.pop(_STEP_ATTR, None)


def counted_step(root: nn.Module) -> int:
    """The step :class:`FlowStepCounter` counts on ``root``; an error if none is installed."""
    counter = root.__dict__.get(_STEP_ATTR)
    if counter is None:
        raise RuntimeError("the flow step is counted only while a technique that reads it is applied "
                           "(ModelAdapter.track_denoise_step)")
    return counter.step
