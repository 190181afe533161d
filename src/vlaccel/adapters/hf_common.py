"""What every transformers adapter shares: where the decoder is, calibration forwards, and sequence plumbing.

transformers models have no episodes; a *sequence* plays that role. A forward starts a new sequence when it
gets no KV cache or an empty one (``generate()``'s prefill, or any plain ``model(...)`` call without a cache),
so:

* :meth:`TransformersAdapter.register_reset_hook` runs the callback (a technique's per-episode reset) before
  such a forward, from a forward pre-hook on the top-level model;
* :meth:`TransformersAdapter.set_cache_factory` makes such a forward use a fresh cache from the factory
  (KV-Efficient's) instead of the ``DynamicCache`` transformers would create or ``generate()`` passed in.
  ``generate()`` keeps using the cache the forward returns, so every decode step runs on it. A non-empty
  cache, or one of the factory's ``cache_class`` the caller passes, is left alone.

Knowledge is data: each subclass has a table from the model class name to the attribute path of the
module holding ``.layers`` (the decoder).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vlaccel.adapters.base import ModelAdapter
from vlaccel.transformers_compat import forward_cache, output_cache, replace_forward_cache

_FACTORY_ATTR = "_vlaccel_cache_factory"


def starts_sequence(kwargs: dict[str, Any]) -> bool:
    """Whether a forward with these keyword arguments begins a new sequence (no cache, or an empty one)."""
    cache = forward_cache(kwargs)
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
        return model.register_forward_pre_hook(_ResetOnNewSequence(fn), with_kwargs=True)

    def set_cache_factory(self, model: Any, factory: Callable[[], Any] | None) -> Callable[[], Any] | None:
        previous = model.__dict__.pop(_FACTORY_ATTR, None)
        if previous is not None:
            previous.remove()
        if factory is None:
            return None if previous is None else previous.factory
        model.__dict__[_FACTORY_ATTR] = _InstalledFactory(model, factory, bool(getattr(
            self.lm_config(model), "use_cache", True)))
        return None if previous is None else previous.factory


class _ResetOnNewSequence:
    """Forward pre-hook calling ``fn`` when a forward starts a new sequence. An object, not a closure, so a deep
    copy of the model gets a hook calling its own copy of ``fn`` (a bound method of the technique's state)."""

    def __init__(self, fn: Callable[[], None]):
        self.fn = fn

    def __call__(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        if starts_sequence(kwargs):
            self.fn()


class _InstalledFactory:
    """The forward hooks that put the factory's cache into each new sequence, and check it was used.

    Before the forward: a fresh cache from the factory replaces the empty one (under the keyword the model's
    forward declares, the other name removed: see :mod:`vlaccel.transformers_compat`). After it: the cache
    the model returns must be that object; anything else means transformers ran the sequence on a cache of
    its own, and the forward raises instead of returning an unbounded cache the caller believes is ours.
    """

    def __init__(self, model: Any, factory: Callable[[], Any], use_cache_default: bool):
        self.factory, self.use_cache_default = factory, use_cache_default
        self.expected: Any = None  # the cache this forward must return (None: nothing to check)
        self.hooks = [model.register_forward_pre_hook(self.before_forward, with_kwargs=True),
                      model.register_forward_hook(self.after_forward)]

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()

    def before_forward(self, module: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        self.expected = None
        use_cache = kwargs.get("use_cache")
        if (use_cache is None and not self.use_cache_default) or use_cache is False:
            return None
        cache = forward_cache(kwargs)
        if isinstance(cache, self.factory.cache_class) or not starts_sequence(kwargs):
            self.expected = cache
            return None
        self.expected = self.factory()
        return args, replace_forward_cache(module, kwargs, self.expected)

    def after_forward(self, module: Any, args: Any, output: Any) -> None:
        expected, self.expected = self.expected, None
        if expected is None:
            return
        got = output_cache(output)
        if got is not expected:
            raise RuntimeError(
                f"{type(module).__name__} ran on a {type(got).__name__} instead of the {type(expected).__name__} "
                "vlaccel installed: this transformers release passes the KV cache under a keyword "
                "vlaccel.transformers_compat does not know, so the applied technique would be silently bypassed. "
                "Install a transformers version in vlaccel's supported range (pyproject.toml)")
