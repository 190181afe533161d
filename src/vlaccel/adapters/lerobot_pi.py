"""Adapter for LeRobot's pi0 and pi0.5 policies (``PI0Policy``, ``PI05Policy``; checked on LeRobot 0.6.1).

Both are a PaliGemma VLM coupled to a Gemma action expert (under ``policy.model.paligemma_with_expert``: the VLM
decoder ``paligemma.model.language_model``, SigLIP ``paligemma.model.vision_tower`` + ``multi_modal_projector``,
the expert ``gemma_expert.model``). ``sample_actions`` embeds the prefix with ``embed_prefix(images, img_masks,
tokens, masks)`` into [256 tokens per camera][language] (pi0.5's language carries the discretised state; pi0 puts
the state in the expert's block), runs the VLM over it once into a ``DynamicCache``, then takes
``config.num_inference_steps`` Euler steps, each running the expert over the action block on a clone of that cache:
expert layer i attends to what VLM layer i cached. So the techniques act on the coupling as on transformers' pi0
(:mod:`vlaccel.adapters.pi0`): layers are pruned in VLM/expert pairs (:meth:`LeRobotPI0Adapter.coupled_decoders`),
token pruning at VLM layer K narrows what expert layers > K read at every step, the head cache reuses the expert
layers' ``self_attn`` / ``mlp`` outputs between refresh steps, fewer flow steps set ``config.num_inference_steps``.

Where hooks fire: LeRobot calls the two decoder stacks as ``language_model.forward(...)`` and
``gemma_expert.model.forward(...)``, which bypasses module hooks on them; their decoder layers, ``self_attn``,
``mlp`` and norms, and the embedding / projection modules, are called as modules. Hence:

* a new ``sample_actions`` (the per-call reset, flow step 0) is the VLM's ``embed_tokens`` running inside
  ``embed_prefix`` (once per prefix, before the VLM layers);
* a flow step ends when ``action_out_proj`` runs (once per Euler step, after the expert);
* the token layout is read from ``embed_prefix``'s arguments (the image list gives the cameras, the language
  mask the valid prompt tokens), by wrapping ``embed_prefix`` as an instance attribute while token pruning is
  applied; it is dropped when the VLM's final ``norm`` has run.

No KV-Efficient: the policies keep no KV cache across calls (each ``sample_actions`` builds its prefix afresh), so
the capability ``history`` is absent. Nothing here imports LeRobot: the policies are recognised by class name and
module.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vlaccel.adapters.base import ModelAdapter
from vlaccel.adapters.flow_steps import FlowStepCounter, counted_step
from vlaccel.adapters.hf_vlm import patches
from vlaccel.adapters.layer_conventions import decoder_layer_queries
from vlaccel.adapters.pi0 import _ResetBeforePrefix
from vlaccel.token_layout import TokenLayout

__all__ = ["LeRobotPI0Adapter", "LEROBOT_PI_CLASSES"]

#: class name -> the LeRobot module it must come from
LEROBOT_PI_CLASSES = {"PI0Policy": "lerobot.policies.pi0", "PI05Policy": "lerobot.policies.pi05"}
_LAYOUT_ATTR = "_vlaccel_token_layout"


def _with_expert(model: Any) -> nn.Module:
    """``PaliGemmaWithExpertModel`` of a policy."""
    return model.model.paligemma_with_expert


def _vlm(model: Any) -> nn.Module:
    """The VLM decoder (a LeRobot ``PiGemmaModel``)."""
    return _with_expert(model).paligemma.model.language_model


def _expert(model: Any) -> nn.Module:
    """The action expert's decoder (a LeRobot ``PiGemmaModel`` without embeddings)."""
    return _with_expert(model).gemma_expert.model


class LeRobotPI0Adapter(ModelAdapter):
    CAPABILITIES = frozenset({"decoder_layers", "visual_tokens", "action_head", "sampler"})
    model_names = tuple(f"LeRobot {name}" for name in LEROBOT_PI_CLASSES)

    @classmethod
    def matches(cls, model: Any) -> bool:
        module = LEROBOT_PI_CLASSES.get(type(model).__name__)
        return module is not None and type(model).__module__.startswith(module + ".")

    # --- decoders ---------------------------------------------------------------------------------------
    def decoder_owner(self, model: Any) -> nn.Module:
        return _vlm(model)

    def lm_config(self, model: Any) -> Any:
        config = _vlm(model).config
        if config is not _with_expert(model).paligemma.config.text_config:
            raise RuntimeError(f"{type(model).__name__}: the VLM decoder's config is not the PaliGemma text config; "
                               "layer surgery would leave the model with a stale layer count")
        return config

    def coupled_decoders(self, model: Any) -> list[nn.Module]:
        return [_expert(model)]

    def attention_queries(self, model: Any, layer: nn.Module, hidden_states: Any, position_embeddings: Any) -> Any:
        """Post-RoPE queries [B, H, T, d_h]; LeRobot's ``PiGemmaRMSNorm`` returns (output, gate), VLM layers have
        no adaRMS condition, so the norm's output alone is the transformers layer's."""
        shim = types.SimpleNamespace(self_attn=layer.self_attn,
                                     input_layernorm=lambda h: layer.input_layernorm(h)[0])
        return decoder_layer_queries(shim, hidden_states, position_embeddings)

    def run_calibration_sample(self, model: Any, sample: dict[str, Any]) -> None:
        """sample: a LeRobot observation batch as the preprocessor gives it to the policy (images per camera,
        ``observation.state``, ``observation.language.tokens`` / ``.attention_mask``), optionally ``noise``
        [B, chunk, max_action_dim]; drawn from a generator seeded with 0 when absent. One
        ``predict_action_chunk``: the VLM over the prefix, the expert over every flow step."""
        batch = dict(sample)
        noise = batch.pop("noise", None)
        tokens = batch.get("observation.language.tokens")
        if tokens is None or not model.config.image_features.keys() & batch.keys():
            raise ValueError(f"a calibration sample for {type(model).__name__} is a LeRobot batch after its "
                             "preprocessor (observation.images.*, observation.state, observation.language.tokens "
                             f"and .attention_mask); got keys {sorted(batch)}")
        device = next(model.parameters()).device
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        if noise is None:
            g = torch.Generator().manual_seed(0)
            noise = torch.randn(tokens.shape[0], model.config.chunk_size, model.config.max_action_dim, generator=g)
        with torch.no_grad():
            model.predict_action_chunk(batch, noise=torch.as_tensor(noise).to(device))

    # --- visual tokens -----------------------------------------------------------------------------------
    def visual_tokens(self, model: Any) -> int:
        vision = _with_expert(model).paligemma.config.vision_config  # image_size = config.image_resolution
        return patches(vision)

    def token_layout(self, model: Any) -> Any:
        return model.model.__dict__.get(_LAYOUT_ATTR)

    def track_layout(self, model: Any) -> Any:
        return _LayoutFromPrefix(model.model, _vlm(model), self.visual_tokens(model))

    # --- the flow-matching action expert -------------------------------------------------------------------
    def action_head_blocks(self, model: Any) -> nn.ModuleList:
        return _expert(model).layers

    def action_head_branches(self, model: Any) -> list[nn.Module]:
        return [m for layer in self.action_head_blocks(model) for m in (layer.self_attn, layer.mlp)]

    def track_denoise_step(self, model: Any) -> Any:
        return FlowStepCounter(model.model, _vlm(model).embed_tokens, model.model.action_out_proj)

    def denoise_step(self, model: Any) -> int:
        return counted_step(model.model)

    def inference_steps(self, model: Any) -> int:
        return int(model.config.num_inference_steps)

    def max_inference_steps(self, model: Any) -> None:
        return None  # Euler steps of a continuous-time flow: any count integrates t = 1 -> 0

    def set_inference_steps(self, model: Any, steps: int) -> None:
        model.config.num_inference_steps = steps  # the config object PI0Pytorch / PI05Pytorch reads

    # --- episode / cache plumbing --------------------------------------------------------------------------
    def register_reset_hook(self, model: Any, fn: Callable[[], None]) -> Any:
        """``fn`` runs before every prefix (each ``sample_actions`` call is its own sequence): at the VLM's
        ``embed_tokens``, which ``embed_prefix`` calls as a module once per call."""
        return _vlm(model).embed_tokens.register_forward_pre_hook(_ResetBeforePrefix(fn), with_kwargs=True)

    def set_cache_factory(self, model: Any, factory: Callable[[], Any] | None) -> Callable[[], Any] | None:
        raise NotImplementedError(f"{type(model).__name__} keeps no KV cache across calls: each sample_actions "
                                  "builds the prefix cache afresh; leave KVEfficientConfig out")

    def module_parts(self, model: Any) -> dict[str, list[nn.Module]]:
        """``vision`` (SigLIP + projector), ``vlm`` (the PaliGemma decoder, embeddings included) and ``expert``
        (the expert decoder with the state / action / time projections around it). Cast ``vlm`` and ``expert``
        to one dtype, or the ``vlm`` alone: the expert attends to the keys the VLM cached, and an expert in a lower
        precision than those keys fails in LeRobot's attention (float32 queries are promoted, bfloat16 ones not)."""
        root, paligemma = model.model, _with_expert(model).paligemma.model
        around = [getattr(root, n) for n in ("state_proj", "action_in_proj", "action_time_mlp_in",
                                             "action_time_mlp_out", "time_mlp_in", "time_mlp_out", "action_out_proj")
                  if isinstance(getattr(root, n, None), nn.Module)]
        return {"vision": [paligemma.vision_tower, paligemma.multi_modal_projector], "vlm": [_vlm(model)],
                "expert": [_expert(model), *around]}


def prefix_layout(images: list[torch.Tensor], lang_masks: torch.Tensor, per_image: int) -> Any:
    """The :class:`TokenLayout` of LeRobot's pi prefix: ``len(images)`` cameras x ``per_image`` tokens, then the
    language ``lang_masks`` [B, L] describes (right-padded); the instruction is the language up to the last valid
    token of any row (padding after it is left out of the relevance)."""
    visual = len(images) * per_image
    length = visual + lang_masks.shape[1]
    valid = lang_masks.bool().any(0).nonzero().flatten()  # [V] positions valid in some row
    instruction = slice(visual, visual + int(valid[-1]) + 1) if len(valid) else None
    return TokenLayout("observation", instruction=instruction, visual=slice(0, visual), cognition=length - 1,
                       length=length)


class _PrefixEmbedder:
    """``embed_prefix`` as an instance attribute of ``PI0Pytorch`` / ``PI05Pytorch``: records the prefix's token
    layout from its arguments, then embeds."""

    def __init__(self, root: nn.Module, per_image: int):
        self.root, self.per_image = root, per_image
        self.previous = root.__dict__.get("embed_prefix")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # (images, img_masks, lang_tokens | tokens, lang_masks | masks): pi0 and pi0.5 name the last two apart
        images = args[0] if args else kwargs["images"]
        masks = args[3] if len(args) > 3 else kwargs.get("lang_masks", kwargs.get("masks"))
        self.root.__dict__[_LAYOUT_ATTR] = prefix_layout(images, masks, self.per_image)
        embed = self.previous if self.previous is not None else type(self.root).embed_prefix.__get__(self.root)
        return embed(*args, **kwargs)


class _LayoutFromPrefix:
    """Keeps ``root``'s token layout from ``embed_prefix`` until the VLM's final norm has run (the prefix forward)."""

    def __init__(self, root: nn.Module, vlm: nn.Module, per_image: int):
        self.root = root
        self.embedder = _PrefixEmbedder(root, per_image)
        root.embed_prefix = self.embedder
        self.hook = vlm.norm.register_forward_hook(self.after_prefix)

    def after_prefix(self, module: Any, args: Any, output: Any) -> None:
        self.root.__dict__.pop(_LAYOUT_ATTR, None)  # the layout belongs to this prefix only

    def remove(self) -> None:
        self.hook.remove()
        if self.root.__dict__.get("embed_prefix") is not self.embedder:
            raise RuntimeError(f"{type(self.root).__name__}.embed_prefix was replaced after token pruning was "
                               "applied; remove that change first (undo in reverse order)")
        if self.embedder.previous is None:
            del self.root.__dict__["embed_prefix"]
        else:
            self.root.embed_prefix = self.embedder.previous
        self.root.__dict__.pop(_LAYOUT_ATTR, None)
