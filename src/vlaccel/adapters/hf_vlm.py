"""Adapter for transformers VLMs: PaliGemma (pi0's backbone), LLaVA (Llama decoder + vision tower), SmolVLM (SmolVLA's).

Where things are, read from each model's own config (no hard-coded sizes):

* decoder: ``model.model.language_model`` (PaliGemma, LLaVA) or ``model.model.text_model`` (SmolVLM), a
  transformers Gemma/Llama decoder whose config is ``model.config.text_config``;
* image tokens: the positions of ``config.image_token_id`` in the forward's ``input_ids`` (the processor
  expands one placeholder per visual token); per image there are
  (image_size / patch_size)^2 tokens (PaliGemma; LLaVA adds the CLS token with ``vision_feature_select_strategy
  ="full"``), divided by ``scale_factor``^2 for SmolVLM's pixel shuffle;
* text span (the instruction for EfficientVLA's relevance): the tokens after the image (the prompt), or
  before it when the image comes last.

The token layout is tracked by a forward pre-hook on the top-level model that reads ``input_ids``
(:meth:`HFVLMAdapter.track_layout`); a forward that starts a sequence or is given ``pixel_values`` is an
``"observation"`` block, the decode steps of ``generate()`` are ``"text"`` blocks (nothing to prune). Token pruning needs one contiguous image
span per sequence at the same position in every row of the batch (one image, same-length prompts or batch 1);
anything else is a clear error. A forward given only ``inputs_embeds`` has no layout and is not pruned.
"""

from __future__ import annotations

from typing import Any

import torch

from vlaccel.adapters.hf_common import TransformersAdapter, starts_sequence
from vlaccel.token_layout import TokenLayout

_LAYOUT_ATTR = "_vlaccel_token_layout"


def patches(vision_config: Any) -> int:
    return (vision_config.image_size // vision_config.patch_size) ** 2


def paligemma_tokens(config: Any) -> int:
    return patches(config.vision_config)


def llava_tokens(config: Any) -> int:
    return patches(config.vision_config) + (config.vision_feature_select_strategy == "full")


def smolvlm_tokens(config: Any) -> int:
    return patches(config.vision_config) // config.scale_factor ** 2


#: class name -> (decoder path, visual tokens per image from the model config)
VLMS: dict[str, tuple[str, Any]] = {
    "PaliGemmaForConditionalGeneration": ("model.language_model", paligemma_tokens),
    "PaliGemmaModel": ("language_model", paligemma_tokens),
    "LlavaForConditionalGeneration": ("model.language_model", llava_tokens),
    "LlavaModel": ("language_model", llava_tokens),
    "SmolVLMForConditionalGeneration": ("model.text_model", smolvlm_tokens),
    "SmolVLMModel": ("text_model", smolvlm_tokens),
}


class HFVLMAdapter(TransformersAdapter):
    CAPABILITIES = frozenset({"decoder_layers", "visual_tokens", "history"})
    DECODER_PATH = {name: path for name, (path, _) in VLMS.items()}
    model_names = tuple(f"transformers {name}" for name in VLMS)

    def visual_tokens(self, model: Any) -> int:
        self.image_token_id(model)  # token pruning needs both: fail at validation, not at the first forward
        return int(VLMS[type(model).__name__][1](model.config))

    def image_token_id(self, model: Any) -> int:
        token = getattr(model.config, "image_token_id", None)
        if token is None:
            raise ValueError(f"{type(model).__name__}.config has no image_token_id; vlaccel finds the image tokens "
                             "of a sequence by that id")
        return int(token)

    def token_layout(self, model: Any) -> Any:
        return model.__dict__.get(_LAYOUT_ATTR)

    def track_layout(self, model: Any) -> Any:
        image_token, per_image = self.image_token_id(model), self.visual_tokens(model)

        def before_forward(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None and kwargs.get("inputs_embeds") is not None:
                raise ValueError(f"token pruning finds the image tokens of {type(module).__name__}'s input by "
                                 "input_ids, and this forward got only inputs_embeds: pass input_ids (with "
                                 "pixel_values), or remove the TokenPruneConfig")
            if ids is None:
                layout = None
            elif kwargs.get("pixel_values") is None and not starts_sequence(kwargs):
                # generate()'s decode steps (it passes the images, encoded, to the prefill only): an image-token
                # id here is generated text
                layout = TokenLayout("text", length=ids.shape[-1])
            else:
                layout = layout_from_ids(ids, image_token, per_image)
            module.__dict__[_LAYOUT_ATTR] = layout  # the module called (a deep copy's own), not a closure's

        return _LayoutTracker(model, model.register_forward_pre_hook(before_forward, with_kwargs=True))


def register_vlm(class_name: str, decoder_path: str, visual_tokens: Any) -> None:
    """Serve another transformers VLM class shaped like these: its decoder's attribute path and a function
    ``config -> visual tokens per image`` (e.g. ``register_vlm("Idefics3ForConditionalGeneration",
    "model.text_model", smolvlm_tokens)``)."""
    VLMS[class_name] = (decoder_path, visual_tokens)
    HFVLMAdapter.DECODER_PATH[class_name] = decoder_path
    HFVLMAdapter.model_names = (*HFVLMAdapter.model_names, f"transformers {class_name}")


def layout_from_ids(input_ids: torch.Tensor, image_token: int, per_image: int, cameras: bool = False) -> Any:
    """The :class:`TokenLayout` of a forward's ``input_ids`` [B, T]: one image span, the text after it as instruction.
    ``cameras=True`` (pi0): the span may hold several images, one per camera, ``per_image`` tokens each."""
    t = input_ids.shape[-1]
    is_image = input_ids.reshape(-1, t) == image_token  # [B, T]
    if not bool(is_image.any()):
        return TokenLayout("text", length=t)
    if bool((is_image != is_image[:1]).any()):
        raise ValueError("token pruning on a transformers VLM needs the image tokens at the same positions in every "
                         "row of the batch; use same-length prompts (no padding before the image) or batch size 1")
    where = is_image[0].nonzero().flatten()
    start, stop = int(where[0]), int(where[-1]) + 1
    if cameras and (stop - start != len(where) or len(where) % per_image):
        raise ValueError(f"token pruning on pi0 expects the prompt's image tokens as one run of {per_image} tokens "
                         f"per camera; found {len(where)} image tokens in positions [{start}, {stop})")
    if not cameras and (stop - start != len(where) or len(where) != per_image):
        raise ValueError(f"token pruning on a transformers VLM supports one image per sequence: expected one run of "
                         f"{per_image} image tokens, found {len(where)} image tokens in positions [{start}, {stop}) "
                         "(several images, or image splitting: process one image without splitting)")
    instruction = slice(stop, t) if stop < t else (slice(0, start) if start > 0 else None)
    return TokenLayout("observation", instruction=instruction, visual=slice(start, stop), cognition=t - 1, length=t)


class _LayoutTracker:
    def __init__(self, model: Any, hook: Any):
        self.model, self.hook = model, hook

    def remove(self) -> None:
        self.hook.remove()
        self.model.__dict__.pop(_LAYOUT_ATTR, None)
