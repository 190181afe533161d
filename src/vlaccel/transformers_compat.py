"""The one place that knows what differs between the transformers releases vlaccel supports (5.5.4 to 5.x).

The KV cache argument (below), and the SigLIP vision model's layout (:func:`siglip_vision_encoder`).

transformers up to 5.23 passes the cache to every model, decoder layer and attention forward as
``past_key_values`` and returns it as ``output.past_key_values``; 5.24 renamed both to ``cache``
(``@deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")`` on each forward). The old name still
works on 5.24 for a direct call, with a ``FutureWarning``, but where both names are present the new one wins
and the old one is dropped: a hook that adds ``past_key_values`` to a ``generate()`` forward (which already
carries ``cache=DynamicCache(...)``) is silently ignored.

So vlaccel never names either keyword elsewhere. Hooks read the cache a forward carries with
:func:`forward_cache`, replace it with :func:`replace_forward_cache` (which writes it under the name that
module's own forward declares and removes the other), calls pass it with :func:`cache_kwargs`, and outputs
are read with :func:`output_cache`. A forward pre-hook sees the keyword arguments *before* the deprecation
wrapper renames them, so both names can reach a hook on 5.24 (a user calling ``model(past_key_values=...)``
directly); :func:`forward_cache` refuses a forward that carries two different caches instead of guessing.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

#: the names a forward may receive the KV cache under, newest first
CACHE_NAMES = ("cache", "past_key_values")


@functools.cache
def _declared_keyword(forward: Any) -> str:
    params = inspect.signature(forward).parameters  # follows functools.wraps to the undecorated forward
    for name in CACHE_NAMES:
        if name in params:
            return name
    raise TypeError(f"{getattr(forward, '__qualname__', forward)} takes no KV cache argument (none of "
                    f"{', '.join(CACHE_NAMES)}); vlaccel cannot pass or read its cache")


def cache_keyword(module: Any) -> str:
    """The keyword ``module.forward`` declares for its KV cache: ``"cache"`` (transformers >= 5.24) or
    ``"past_key_values"`` (older releases, and models that were not renamed)."""
    return _declared_keyword(type(module).forward)


def cache_kwargs(module: Any, cache: Any) -> dict[str, Any]:
    """``{keyword: cache}`` for a call ``module(..., **cache_kwargs(module, cache))``."""
    return {cache_keyword(module): cache}


def forward_cache(kwargs: dict[str, Any]) -> Any:
    """The KV cache a forward's keyword arguments carry (``None`` if none), under either name.

    Raises ``ValueError`` when both names carry different objects: transformers would keep one and drop the
    other, and which one depends on the release.
    """
    found = [kwargs[name] for name in CACHE_NAMES if kwargs.get(name) is not None]
    if len(found) == 2 and found[0] is not found[1]:
        raise ValueError(f"a forward received two different KV caches ({type(found[0]).__name__} as 'cache' and "
                         f"{type(found[1]).__name__} as 'past_key_values'); pass one, as 'cache' on transformers "
                         ">= 5.24 (or 'past_key_values' before)")
    return found[0] if found else None


def replace_forward_cache(module: Any, kwargs: dict[str, Any], cache: Any) -> dict[str, Any]:
    """Put ``cache`` in a forward pre-hook's ``kwargs`` (in place, and returned) under the keyword ``module``'s
    forward declares, removing the cache under any other name so transformers cannot prefer it."""
    for name in CACHE_NAMES:
        kwargs.pop(name, None)
    kwargs[cache_keyword(module)] = cache
    return kwargs


def output_cache(output: Any) -> Any:
    """The cache a model or ``generate()`` output returns (``output.cache``, or ``past_key_values`` before 5.24;
    for ``return_dict=False``, the tuple's ``Cache`` element); ``None`` when it returns none. Reads the field
    itself, so 5.24's deprecated ``output.past_key_values`` property never warns."""
    if isinstance(output, dict):  # a transformers ModelOutput is an OrderedDict of the fields it set
        return next((output[name] for name in CACHE_NAMES if output.get(name) is not None), None)
    if isinstance(output, tuple):
        from transformers import Cache

        return next((item for item in output if isinstance(item, Cache)), None)
    return None


def siglip_vision_encoder(config: Any) -> Any:
    """A SigLIP vision encoder whose ``embeddings``, ``encoder`` and ``post_layernorm`` sit at its top level on every
    release, so a policy that holds it has the same state-dict keys (and the same file) everywhere.

    transformers 5.20 puts them on ``SiglipVisionModel`` itself; 5.5 wraps them one level deeper, in
    ``SiglipVisionModel.vision_model`` (a ``SiglipVisionTransformer``, itself a pretrained model with the same
    ``forward(pixel_values) -> last_hidden_state``). This returns that inner model where it exists.
    """
    from transformers import SiglipVisionModel

    model = SiglipVisionModel(config)
    inner = getattr(model, "vision_model", None)
    return inner if inner is not None else model
