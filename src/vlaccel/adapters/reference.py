"""Adapter for :class:`vlaccel.models.ReferenceVLA` (the worked example in docs/adapters.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from vlaccel.adapters.base import ModelAdapter


class ReferenceVLAAdapter(ModelAdapter):
    model_names = ("vlaccel ReferenceVLA",)
    CAPABILITIES = frozenset({"decoder_layers", "visual_tokens", "action_head", "sampler", "history", "frames"})

    @classmethod
    def matches(cls, model: Any) -> bool:
        from vlaccel.models.vla import ReferenceVLA

        return isinstance(model, ReferenceVLA)

    def decoder_owner(self, model: Any) -> nn.Module:
        return model.language_model  # a transformers LlamaModel: .layers, .config, .norm

    def token_layout(self, model: Any) -> Any:
        return model.current_layout  # TokenLayout set by ReferenceVLA.run_language_model

    def visual_tokens(self, model: Any) -> int:
        return model.config.visual_tokens

    def run_calibration_sample(self, model: Any, sample: dict[str, Any]) -> None:
        """sample: {"image": uint8 HxWx3 (or a list per camera), "instruction": str, "proprio": optional}.

        Runs the LM as ``predict_action`` does (instruction prefix, then one observation block on a fresh
        cache) without the action head, and restores the episode state afterwards.
        """
        import torch

        saved = model.cache, model.instruction, model.last_cognition, model.episode_active
        try:
            with torch.no_grad():
                model.reset(sample["instruction"])
                pixels = model.pixels_from_images(sample["image"])
                embeds = model.embed_observation(pixels, model.proprio_tensor(sample.get("proprio")))
                model.run_language_model(embeds, model.observation_layout(), model.cache)
        finally:
            model.cache, model.instruction, model.last_cognition, model.episode_active = saved

    def module_parts(self, model: Any) -> dict[str, list[nn.Module]]:
        readout = [model.visual_readout] if model.visual_readout is not None else []
        proprio = [model.proprio_proj] if model.proprio_proj is not None else []
        return {"vision": [model.vision, model.projector], "language_model": [model.language_model, *proprio],
                # the head's sampler is not a forward: its DiT is the module called per step
                "action_head": [model.action_head, model.action_head.dit, *readout]}

    def end_episode(self, model: Any, reason: str) -> None:
        if model.episode_active:
            model.end_episode(reason)

    def action_head_blocks(self, model: Any) -> nn.ModuleList:
        return model.action_head.dit.blocks  # DiTBlock: .attn_branch, .mlp_branch

    def denoise_step(self, model: Any) -> int:
        return model.action_head.dit.denoise_step

    def inference_steps(self, model: Any) -> int:
        return model.action_head.inference_steps

    def max_inference_steps(self, model: Any) -> int:
        return int(model.action_head.scheduler.config.num_train_timesteps)

    def set_inference_steps(self, model: Any, steps: int) -> None:
        model.action_head.inference_steps = steps

    def set_cache_factory(self, model: Any, factory: Callable[[], Any] | None) -> Callable[[], Any] | None:
        previous, model.cache_factory = model.cache_factory, factory
        return previous

    def register_reset_hook(self, model: Any, fn: Callable[[], None]) -> Any:
        return model.register_reset_hook(fn)

    def tokens_per_frame(self, model: Any) -> int:
        return model.config.tokens_per_frame
