"""What every transformers adapter shares: where the decoder is, calibration forwards, and sequence plumbing.

transformers models have no episodes; a *sequence* plays that role. A forward starts a new sequence when it
gets no KV cache or an empty one (``generate()``'s prefill, or any plain ``model(...)`` call without a cache),
so:

* :meth:`TransformersAdapter.register_reset_hook` runs the callback (a technique's per-episode reset) before
  such a forward, from a forward pre-hook on the top-level model;
* :meth:`TransformersAdapter.set_cache_factory` makes such a forward use a fresh cache from the factory
  (KV-Efficient's :class:`ChunkedGatedCache`) instead of the ``DynamicCache`` transformers would create or
  ``generate()`` passed in. ``generate()`` keeps using the cache the forward returns, so every decode step
  runs on it. A non-empty cache, or a ``ChunkedGatedCache`` the caller passes, is left alone.

Knowledge is data: each subclass has a table from the model class name to the attribute path of the
module holding ``.layers`` (the decoder).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vlaccel.adapters.base import ModelAdapter

_FACTORY_ATTR = "_vlaccel_cache_factory"


def starts_sequence(kwargs: dict[str, Any]) -> bool:
    """Whether a forward with these keyword arguments begins a new sequence (no cache, or an empty one)."""
    cache = kwargs.get("past_key_values")
    return cache is None or cache.get_seq_length() == 0


class TransformersAdapter(ModelAdapter):
    """Base for adapters of transformers model classes listed in :attr:`DECODER_PATH`."""

    #: class name -> dotted attribute path from the model to the module holding ``.layers`` ("" = the model)
    DECODER_PATH: dict[str, str] = {}

    @classmethod
    def matches(cls, model: Any) -> bool:
        return type(model).__name__ in cls.DECODER_PATH and type(model).__module__.startswith("transformers.")

    def decoder_owner(self, model: Any) -> nn.Module:
        owner = model
        for part in filter(None, self.DECODER_PATH[type(model).__name__].split(".")):
            owner = getattr(owner, part)
        return owner

    def lm_config(self, model: Any) -> Any:
        """The decoder's config: for a VLM the text config (``generate()`` sizes its KV cache from it)."""
        config = self.decoder_owner(model).config
        top = getattr(model.config, "get_text_config", None)
        if top is not None and top(decoder=True) is not config:  # every supported class shares one object
            raise RuntimeError(f"{type(model).__name__}: the decoder's config is not model.config's text config; "
                               "layer surgery would leave generate() with a stale layer count")
        return config

    def run_calibration_sample(self, model: Any, sample: dict[str, Any]) -> None:
        """sample: the model's forward keyword arguments (``input_ids`` [B, T] or [T] as a tensor or nested list,
        plus e.g. ``pixel_values``, ``attention_mask``); one forward without a cache."""
        kwargs = dict(sample)
        if "input_ids" not in kwargs and "inputs_embeds" not in kwargs:
            raise ValueError(f"a calibration sample for {type(model).__name__} needs 'input_ids' (the forward's "
                             f"keyword arguments), got keys {sorted(kwargs)}")
        if "input_ids" in kwargs:
            ids = torch.as_tensor(kwargs["input_ids"], dtype=torch.long)
            kwargs["input_ids"] = ids.unsqueeze(0) if ids.dim() == 1 else ids
        kwargs = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        with torch.no_grad():
            model(**kwargs, use_cache=False)

    # --- sequence plumbing ------------------------------------------------------------------------
    def register_reset_hook(self, model: Any, fn: Callable[[], None]) -> Any:
        def before_forward(module, args, kwargs):
            if starts_sequence(kwargs):
                fn()

        return model.register_forward_pre_hook(before_forward, with_kwargs=True)

    def set_cache_factory(self, model: Any, factory: Callable[[], Any] | None) -> Callable[[], Any] | None:
        previous = model.__dict__.pop(_FACTORY_ATTR, None)
        if previous is not None:
            previous.hook.remove()
        if factory is None:
            return None if previous is None else previous.factory
        use_cache_default = bool(getattr(self.lm_config(model), "use_cache", True))

        def before_forward(module, args, kwargs):
            from vlaccel.techniques.kv_efficient.cache import ChunkedGatedCache

            cache = kwargs.get("past_key_values")
            use_cache = kwargs.get("use_cache")
            if (use_cache is None and not use_cache_default) or use_cache is False:
                return None
            if isinstance(cache, ChunkedGatedCache) or not starts_sequence(kwargs):
                return None
            kwargs["past_key_values"] = factory()
            return args, kwargs

        model.__dict__[_FACTORY_ATTR] = _InstalledFactory(factory, model.register_forward_pre_hook(
            before_forward, with_kwargs=True))
        return None if previous is None else previous.factory


class _InstalledFactory:
    def __init__(self, factory: Callable[[], Any], hook: Any):
        self.factory, self.hook = factory, hook
