"""Adapter for transformers' pi0: ``PI0ForConditionalGeneration`` and the bare ``PI0Model`` (transformers >= 5.20).

pi0 is a PaliGemma VLM coupled to a Gemma action expert trained by flow matching. ``sample_actions`` embeds the
prefix ([image tokens of every camera][BOS + prompt]), runs the VLM over it once into a KV cache, then takes
``config.num_inference_steps`` Euler steps: each runs the expert (``model.dit``) over [state][noisy action chunk],
and expert layer i attends to the prefix keys/values that VLM layer i cached plus its own block; the cache is
cropped back to the prefix after every step. What that coupling means for each technique:

* layer pruning removes VLM layer i and expert layer i together (pairs), so expert layer j still reads the KV of
  the VLM layer it was trained against (:meth:`PI0Adapter.coupled_decoders`);
* token pruning at VLM layer K shortens the prefix held by VLM layers > K, and so what expert layers > K read at
  every Euler step; their attention masks are narrowed to the kept prefix columns
  (:meth:`PI0Adapter.coupled_decoders` names the readers);
* the head cache reuses each expert layer's ``self_attn`` and ``mlp`` outputs between refresh steps; the step index
  is counted by hooks (0 at each prefix run of the VLM, +1 after each expert forward), so ``model.sample_actions``
  stays the call the user makes;
* fewer flow steps set ``config.num_inference_steps``.

Where things are, all from the model's own config: the image-token id (``vlm_config.image_token_id``), tokens
per image ((image_size / patch_size)^2 of the SigLIP config), cameras per observation (the image tokens of the
prompt, one run of a multiple of the tokens per image). The token layout is read where the prefix is built: the
adapter wraps ``embed_prefix`` (an instance attribute, removed with the technique), which sees ``input_ids``.
pi0 keeps no history across calls: no KV-Efficient cache (its capability ``history`` is absent).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vlaccel.adapters.flow_steps import FlowStepCounter, counted_step
from vlaccel.adapters.hf_common import TransformersAdapter
from vlaccel.adapters.hf_vlm import layout_from_ids, patches

__all__ = ["PI0Adapter", "prefix_layout"]

_LAYOUT_ATTR = "_vlaccel_token_layout"


def _root(model: Any) -> nn.Module:
    """The ``PI0Model`` (``.vlm``, ``.dit``, ``.embed_prefix``) of either class."""
    return model.model if type(model).__name__ == "PI0ForConditionalGeneration" else model


class PI0Adapter(TransformersAdapter):
    CAPABILITIES = frozenset({"decoder_layers", "visual_tokens", "action_head", "sampler"})
    DECODER_PATH = {"PI0ForConditionalGeneration": "model.vlm.language_model", "PI0Model": "vlm.language_model"}
    model_names = tuple(f"transformers {name}" for name in DECODER_PATH)

    def capabilities(self, model: Any) -> frozenset[str]:
        if type(model).__name__ == "PI0Model":  # the caller runs the flow loop: no sampler to set
            return self.CAPABILITIES - {"sampler"}
        return self.CAPABILITIES

    def lm_config(self, model: Any) -> Any:
        config = self.decoder_owner(model).config
        if config is not model.config.vlm_config.text_config:
            raise RuntimeError(f"{type(model).__name__}: the VLM decoder's config is not config.vlm_config.text_config;"
                               " layer surgery would leave the model with a stale layer count")
        return config

    def coupled_decoders(self, model: Any) -> list[nn.Module]:
        return [_root(model).dit]

    # --- visual tokens ----------------------------------------------------------------------------------
    def image_token_id(self, model: Any) -> int:
        return int(model.config.vlm_config.image_token_id)

    def visual_tokens(self, model: Any) -> int:
        return patches(model.config.vlm_config.vision_config)

    def token_layout(self, model: Any) -> Any:
        return _root(model).__dict__.get(_LAYOUT_ATTR)

    def track_layout(self, model: Any) -> Any:
        return _LayoutFromPrefix(_root(model), self.image_token_id(model), self.visual_tokens(model))

    def register_reset_hook(self, model: Any, fn: Callable[[], None]) -> Any:
        """``fn`` runs before every prefix forward of the VLM: each ``sample_actions`` call is its own sequence."""
        return _root(model).vlm.register_forward_pre_hook(_ResetBeforePrefix(fn), with_kwargs=True)

    def set_cache_factory(self, model: Any, factory: Callable[[], Any] | None) -> Callable[[], Any] | None:
        raise NotImplementedError(f"{type(model).__name__} keeps no KV cache across calls: each sample_actions "
                                  "builds the prefix cache afresh and crops it after every flow step")

    def run_calibration_sample(self, model: Any, sample: dict[str, Any]) -> None:
        """sample: ``sample_actions``' keyword arguments of one observation (``state`` [S] or [1, S], ``input_ids``
        [T], ``pixel_values`` [cameras, 3, H, W], ``pixel_attention_mask`` [cameras], optional ``attention_mask``,
        ``noise``), tensors or arrays, with or without the batch axis; for a bare ``PI0Model`` its forward's
        (``action_embeds`` included). The noise, when not given, is drawn from a generator seeded with 0."""
        kwargs = {k: _batched(k, torch.as_tensor(v)) for k, v in sample.items()}
        missing = [k for k in ("state", "input_ids", "pixel_values") if k not in kwargs]
        if type(model).__name__ == "PI0Model":
            missing = [k for k in ("action_embeds", "input_ids", "pixel_values") if k not in kwargs]
        if missing:
            raise ValueError(f"a calibration sample for {type(model).__name__} needs {missing} (sample_actions' "
                             f"keyword arguments), got keys {sorted(kwargs)}")
        device = next(model.parameters()).device
        kwargs = {k: v.to(device) for k, v in kwargs.items()}
        kwargs["input_ids"] = kwargs["input_ids"].long()
        b = kwargs["input_ids"].shape[0]
        kwargs.setdefault("pixel_attention_mask", torch.ones(b, kwargs["pixel_values"].shape[1], dtype=torch.bool,
                                                             device=device))
        with torch.no_grad():
            if type(model).__name__ == "PI0Model":
                model(**kwargs)
                return
            if "noise" not in kwargs:
                g = torch.Generator().manual_seed(0)
                kwargs["noise"] = torch.randn(b, model.config.chunk_size, model.config.max_action_dim,
                                              generator=g).to(device)
            model.sample_actions(**kwargs)

    # --- the flow-matching action expert -----------------------------------------------------------------
    def action_head_blocks(self, model: Any) -> nn.ModuleList:
        return _root(model).dit.layers

    def action_head_branches(self, model: Any) -> list[nn.Module]:
        return [m for layer in self.action_head_blocks(model) for m in (layer.self_attn, layer.mlp)]

    def track_denoise_step(self, model: Any) -> Any:
        root = _root(model)
        return FlowStepCounter(root, root.vlm, root.dit)  # 0 at each prefix run of the VLM, +1 per expert forward

    def denoise_step(self, model: Any) -> int:
        return counted_step(_root(model))

    def inference_steps(self, model: Any) -> int:
        if type(model).__name__ == "PI0Model":
            raise NotImplementedError("a bare PI0Model has no sampler: the caller's loop sets the flow steps")
        return int(model.config.num_inference_steps)

    def max_inference_steps(self, model: Any) -> None:
        return None  # Euler steps of a continuous-time flow: any count integrates t = 1 -> 0

    def set_inference_steps(self, model: Any, steps: int) -> None:
        model.config.num_inference_steps = steps

    def module_parts(self, model: Any) -> dict[str, list[nn.Module]]:
        """``vision`` (SigLIP + projector) and ``transformer``: the VLM decoder and the action expert with its
        embeddings and output projection, one dtype because the expert attends to the VLM's cached keys."""
        root = _root(model)
        expert = [root.dit]
        if root is not model:
            expert += [model.embed_action_time, model.action_out_proj]
        return {"vision": [root.vlm.vision_tower, root.vlm.multi_modal_projector],
                "transformer": [root.vlm.language_model, *expert]}


def _batched(name: str, value: torch.Tensor) -> torch.Tensor:
    """``value`` with the batch axis added when a calibration sample gives one observation without it."""
    unbatched = {"state": 1, "input_ids": 1, "attention_mask": 1, "pixel_values": 4, "pixel_attention_mask": 1,
                 "noise": 2, "action_embeds": 2}
    return value.unsqueeze(0) if value.dim() == unbatched.get(name, -1) else value


def prefix_layout(input_ids: torch.Tensor, image_token: int, per_image: int) -> Any:
    """The :class:`TokenLayout` of a pi0 prefix ``input_ids`` [B, T]: one run of image tokens (a multiple of
    ``per_image``: one image per camera) at the same positions in every row, the text after it as instruction."""
    return layout_from_ids(input_ids, image_token, per_image, cameras=True)


class _PrefixEmbedder:
    """``PI0Model.embed_prefix`` as an instance attribute: records the prefix's token layout, then embeds."""

    def __init__(self, root: nn.Module, image_token: int, per_image: int):
        self.root, self.image_token, self.per_image = root, image_token, per_image
        self.previous = root.__dict__.get("embed_prefix")

    def __call__(self, input_ids: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.root.__dict__[_LAYOUT_ATTR] = prefix_layout(input_ids, self.image_token, self.per_image)
        embed = self.previous if self.previous is not None else type(self.root).embed_prefix.__get__(self.root)
        return embed(input_ids, *args, **kwargs)


class _LayoutFromPrefix:
    """Keeps ``root``'s token layout for the VLM forward that follows ``embed_prefix``; a prefix forward the
    wrapper did not see (the caller passed ``inputs_embeds``) is refused: its image tokens cannot be found."""

    def __init__(self, root: nn.Module, image_token: int, per_image: int):
        self.root = root
        self.embedder = _PrefixEmbedder(root, image_token, per_image)
        root.embed_prefix = self.embedder
        self.hooks = [root.vlm.register_forward_pre_hook(self.before_prefix),
                      root.vlm.register_forward_hook(self.after_prefix)]

    def before_prefix(self, module: Any, args: Any) -> None:
        if _LAYOUT_ATTR not in self.root.__dict__:
            raise ValueError("token pruning on pi0 finds the image tokens through embed_prefix(input_ids, ...); this "
                             "VLM forward came without it (inputs_embeds given): pass input_ids and pixel_values, or "
                             "remove the TokenPruneConfig")

    def after_prefix(self, module: Any, args: Any, output: Any) -> None:
        self.root.__dict__.pop(_LAYOUT_ATTR, None)  # the layout belongs to this prefix only

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        if self.root.__dict__.get("embed_prefix") is not self.embedder:
            raise RuntimeError("PI0Model.embed_prefix was replaced after token pruning was applied; remove that "
                               "change first (undo in reverse order)")
        if self.embedder.previous is None:
            del self.root.__dict__["embed_prefix"]
        else:
            self.root.embed_prefix = self.embedder.previous
        self.root.__dict__.pop(_LAYOUT_ATTR, None)


class _ResetBeforePrefix:
    """VLM forward pre-hook running ``fn`` (an object, so a deep copy calls its own copy of ``fn``)."""

    def __init__(self, fn: Callable[[], None]):
        self.fn = fn

    def __call__(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        self.fn()
