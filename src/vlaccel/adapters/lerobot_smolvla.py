"""Adapter for LeRobot's ``SmolVLAPolicy`` (checked on lerobot 0.6.1); lerobot is imported only when a policy is used.

SmolVLA (``policy.model``: ``VLAFlowMatching``) embeds a prefix ``[64 image tokens per camera][language][state]``
(``embed_prefix``), runs the SmolVLM text decoder over it once into a KV cache, then takes ``config.num_steps`` Euler
steps, each running the action expert (``vlm_with_expert.lm_expert``) over the noisy action chunk. Expert layer i
reads VLM layer i's cache: even layers by joint self-attention (the expert's keys appended to the prefix's), odd
layers by cross-attention, where the expert's ``k_proj`` / ``v_proj`` re-project the cached VLM keys / values.
``SmolVLMWithExpertModel.forward`` runs its own loop over the layers: forward hooks on the decoder layers, the
text model and the expert never fire; hooks on ``input_layernorm``, ``q/k/v/o_proj``, ``mlp``, the final ``norm``,
``vision_model``, ``connector``, ``state_proj`` and ``action_out_proj`` do. What that means for each technique:

* layer pruning removes VLM layer i and expert layer i together, and only in aligned (self-attn, cross-attn) groups
  (2k, 2k+1) (:meth:`SmolVLAAdapter.layer_groups`): a cross layer's ``k_proj`` takes the VLM's KV width, a self
  layer's the expert's. Eq. 1's hidden states are read at each layer's ``input_layernorm`` and the final ``norm``
  (:meth:`SmolVLAAdapter.hidden_state_taps`); ``num_vlm_layers`` / ``num_expert_layers`` follow the surgery;
* token pruning cannot act inside the VLM (the loop is not hookable at a layer's output), so the image tokens are
  pruned *before* the VLM, in ``embed_prefix``, scored with layer 0's projections (:mod:`.lerobot_smolvla_tokens`);
* the head cache reuses each expert layer's ``mlp`` output between refresh steps (the attention is computed inline
  by the loop, not by a module); the flow step is counted by hooks (0 at ``state_proj``, i.e. each new prefix, +1
  after each ``action_out_proj``);
* fewer flow steps set ``config.num_steps``; the cross layers' re-projection of the cached prefix is computed once
  per chunk by ``CrossKVReuseConfig`` (:meth:`SmolVLAAdapter.install_cross_kv_reuse`), bit-identical.

SmolVLA keeps no history across calls (each ``predict_action_chunk`` builds its prefix afresh): no KV-Efficient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vlaccel.adapters.base import ModelAdapter
from vlaccel.adapters.flow_steps import FlowStepCounter, counted_step

__all__ = ["SmolVLAAdapter"]

_MODULE = "lerobot.policies.smolvla"


def _flow(policy: Any) -> nn.Module:
    """``VLAFlowMatching``: embed_prefix, state_proj, action projections, vlm_with_expert."""
    return policy.model


def _joint(policy: Any) -> nn.Module:
    """``SmolVLMWithExpertModel``: the VLM and the expert, and the loop running both."""
    return policy.model.vlm_with_expert


class SmolVLAAdapter(ModelAdapter):
    model_names = ("LeRobot SmolVLAPolicy",)
    CAPABILITIES = frozenset({"decoder_layers", "visual_tokens", "action_head", "sampler", "cross_kv"})

    @classmethod
    def matches(cls, model: Any) -> bool:
        kind = type(model)
        return kind.__name__ == "SmolVLAPolicy" and kind.__module__.startswith(_MODULE)

    # --- decoder stacks ---------------------------------------------------------------------------------
    def decoder_owner(self, model: Any) -> nn.Module:
        return _joint(model).get_vlm_model().text_model

    def lm_config(self, model: Any) -> Any:
        config = self.decoder_owner(model).config
        if config is not _joint(model).vlm.config.text_config:
            raise RuntimeError("SmolVLA's text model config is not vlm.config.text_config; layer surgery would leave "
                               "a stale layer count")
        return config

    def coupled_decoders(self, model: Any) -> list[nn.Module]:
        joint = _joint(model)
        if joint.num_expert_layers != joint.num_vlm_layers:
            raise NotImplementedError(f"this SmolVLA's expert has {joint.num_expert_layers} layers for "
                                      f"{joint.num_vlm_layers} VLM layers; vlaccel supports num_expert_layers=-1 "
                                      "(one expert layer per VLM layer)")
        return [joint.lm_expert]

    def layer_groups(self, model: Any) -> list[list[int]]:
        """Aligned (self-attn, cross-attn) groups: a layer is self-attention iff ``i % self_attn_every_n_layers ==
        0``, so only whole groups [n k, n k + n) can go without turning a cross layer into a self one."""
        joint = _joint(model)
        total = len(self.decoder_layers(model))
        n = joint.self_attn_every_n_layers
        if "cross" not in joint.attention_mode or n <= 1:
            return [[i] for i in range(total)]
        return [list(range(s, min(s + n, total))) for s in range(0, total, n)]

    def hidden_state_taps(self, model: Any, owner: nn.Module) -> list[tuple[nn.Module, str]]:
        """Layer i's input is what its ``input_layernorm`` is called with; the last layer's output what the final
        ``norm`` is called with (decoder-layer hooks never fire inside SmolVLA's loop)."""
        return [*[(layer.input_layernorm, "input") for layer in owner.layers], (owner.norm, "input")]

    def layers_changed(self, model: Any) -> None:
        joint = _joint(model)
        joint.num_vlm_layers = len(joint.get_vlm_model().text_model.layers)
        joint.num_expert_layers = len(joint.lm_expert.layers)

    def run_calibration_sample(self, model: Any, sample: dict[str, Any]) -> None:
        """sample: the dict ``predict_action_chunk`` takes (LeRobot's preprocessor output,
        :func:`vlaccel.models.lerobot_smolvla.smolvla_batch`) or a raw observation with a ``"task"`` string (run
        through LeRobot's preprocessor here); an optional ``"noise"`` [B, chunk, max_action_dim], else noise from a
        generator seeded with 0. The policy's action queue is left as it was."""
        sample = dict(sample)
        noise = sample.pop("noise", None)
        if "observation.language.tokens" not in sample:
            if "task" not in sample:
                raise ValueError("a SmolVLA calibration sample is predict_action_chunk's batch (with "
                                 "'observation.language.tokens') or a raw observation with a 'task' string; got keys "
                                 f"{sorted(sample)}")
            from vlaccel.models.lerobot_smolvla import smolvla_preprocessor

            sample = smolvla_preprocessor(model)(sample)
        cfg = model.config
        if noise is None:
            b = sample["observation.state"].shape[0]
            noise = torch.randn(b, cfg.chunk_size, cfg.max_action_dim, generator=torch.Generator().manual_seed(0))
        queues = model._queues
        try:
            with torch.no_grad():
                model.predict_action_chunk(sample, noise=torch.as_tensor(noise).to(cfg.device or "cpu"))
        finally:
            model._queues = queues

    # --- visual tokens --------------------------------------------------------------------------------------
    def visual_tokens(self, model: Any) -> int:
        vlm = _joint(model).vlm.config
        patches = (vlm.vision_config.image_size // vlm.vision_config.patch_size) ** 2
        return patches // vlm.scale_factor ** 2

    def token_prune_handler(self, model: Any) -> Any:
        from vlaccel.adapters.lerobot_smolvla_tokens import PrefixTokenPruneHandler

        return PrefixTokenPruneHandler()

    # --- the flow-matching action expert -----------------------------------------------------------------
    def action_head_blocks(self, model: Any) -> nn.ModuleList:
        return _joint(model).lm_expert.layers

    def action_head_branches(self, model: Any) -> list[nn.Module]:
        return [layer.mlp for layer in self.action_head_blocks(model)]

    def track_denoise_step(self, model: Any) -> Any:
        # 0 at state_proj (each new prefix), +1 after each action_out_proj (the end of a denoising step)
        return FlowStepCounter(model, _flow(model).state_proj, _flow(model).action_out_proj)

    def denoise_step(self, model: Any) -> int:
        return counted_step(model)

    def inference_steps(self, model: Any) -> int:
        return int(model.config.num_steps)

    def max_inference_steps(self, model: Any) -> None:
        return None  # Euler steps of a continuous-time flow: any count integrates t = 1 -> 0

    def set_inference_steps(self, model: Any, steps: int) -> None:
        model.config.num_steps = steps

    def install_cross_kv_reuse(self, model: Any) -> Any:
        """Project the cached prefix keys/values of every cross-attention expert layer once per chunk
        (``CrossKVReuseConfig``); returns a handle with ``remove()``."""
        from vlaccel.adapters.lerobot_smolvla_cross_kv import CrossKVReuse

        return CrossKVReuse(_joint(model))

    # --- plumbing -------------------------------------------------------------------------------------------
    def register_reset_hook(self, model: Any, fn: Callable[[], None]) -> Any:
        """``fn`` runs when each prefix is embedded (``state_proj``): each ``predict_action_chunk`` is its own
        episode."""
        return _flow(model).state_proj.register_forward_pre_hook(_RunBefore(fn))

    def set_cache_factory(self, model: Any, factory: Callable[[], Any] | None) -> Any:
        raise NotImplementedError("SmolVLA keeps no KV cache across calls: each predict_action_chunk builds its prefix "
                                  "cache afresh and crops it after every flow step; use TokenPruneConfig to shorten it")

    def compile_sites(self, model: Any) -> dict[str, list[tuple[Any, str]]]:
        """``sampler``: ``VLAFlowMatching.sample_actions``, the whole chunk (vision, prefix, every flow step), as
        LeRobot's own ``compile_model`` option compiles it. Compiling the ~230 small modules the layer loop calls one
        by one hits dynamo's recompile limit and runs them eagerly."""
        return {"sampler": [(_flow(model), "sample_actions")]}

    def module_parts(self, model: Any) -> dict[str, list[nn.Module]]:
        """``vision`` (SigLIP + connector), ``vlm`` (the text decoder) and ``expert`` (the action expert with its
        projections). SmolVLA's loop calls the layers' parts, not the layers: the lists hold those called modules
        (norms, q/k/v/o projections, MLPs), so each gets its input cast or its forward compiled."""
        flow, joint = _flow(model), _joint(model)
        vlm = joint.get_vlm_model()

        def called(stack: nn.Module) -> list[nn.Module]:
            parts = []
            for layer in stack.layers:
                attn = layer.self_attn
                parts += [layer.input_layernorm, attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj,
                          layer.post_attention_layernorm, layer.mlp]
            return [*parts, stack.norm]

        return {"vision": [vlm.vision_model, vlm.connector],
                "vlm": [vlm.text_model.embed_tokens, flow.state_proj, *called(vlm.text_model)],
                "expert": [flow.action_in_proj, flow.action_time_mlp_in, flow.action_time_mlp_out,
                           *called(joint.lm_expert), flow.action_out_proj]}


class _RunBefore:
    """Forward pre-hook running ``fn`` (an object, so a deep copy calls its own copy of ``fn``)."""

    def __init__(self, fn: Callable[[], None]):
        self.fn = fn

    def __call__(self, module: Any, args: Any) -> None:
        self.fn()
