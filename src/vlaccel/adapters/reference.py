"""Adapter for :class:`vlaccel.models.ReferenceVLA` (the worked example in docs/adapters.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from vlaccel.adapters.base import ModelAdapter, register_adapter


@register_adapter
class ReferenceVLAAdapter(ModelAdapter):
    model_names = ("vlaccel ReferenceVLA",)

    @classmethod
    def matches(cls, model: Any) -> bool:
        from vlaccel.models.vla import ReferenceVLA

        return isinstance(model, ReferenceVLA)

    def decoder_owner(self, model: Any) -> nn.Module:
        return model.language_model  # a transformers LlamaModel: .layers, .config, .norm

    def token_layout(self, model: Any) -> Any:
        return model.current_layout  # TokenLayout set by ReferenceVLA.run_language_model

    def action_head_blocks(self, model: Any) -> nn.ModuleList:
        return model.action_head.dit.blocks  # DiTBlock: .attn_branch, .mlp_branch

    def denoise_step(self, model: Any) -> int:
        return model.action_head.dit.denoise_step

    def inference_steps(self, model: Any) -> int:
        return model.action_head.inference_steps

    def set_inference_steps(self, model: Any, steps: int) -> None:
        model.action_head.inference_steps = steps

    def set_cache_factory(self, model: Any, factory: Callable[[], Any] | None) -> Callable[[], Any] | None:
        previous, model.cache_factory = model.cache_factory, factory
        return previous

    def register_reset_hook(self, model: Any, fn: Callable[[], None]) -> Any:
        return model.register_reset_hook(fn)

    def tokens_per_frame(self, model: Any) -> int:
        return model.config.tokens_per_frame
