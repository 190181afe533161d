"""SmolVLA's cross-attention keys/values projected once per chunk (``CrossKVReuseConfig``; checked on lerobot 0.6.1).

In SmolVLA's odd (cross-attention) expert layers, every flow step reads the VLM layer's cached prefix keys K and
values V [B, S, H_kv * d] and re-projects them with the expert's own ``k_proj`` / ``v_proj`` (``K W_k^T + b_k``),
though K and V do not change between the steps of one chunk: ``forward_cross_attn_layer`` reads them from the
``DynamicCache``, which the cross layers never write (the self-attention layers append and crop their own slots).
This computes each projection at the first step and returns the stored result at the others: the same tensors
LeRobot would have computed, so the action chunk is bit-identical (``torch.equal``).

Mechanism, no copy of LeRobot's loop: ``forward_cross_attn_layer`` is wrapped as an instance attribute of
``SmolVLMWithExpertModel``; when it reads the cache, the wrapper records the cached key and value tensors it reads
(their objects and in-place versions) for the duration of the call, and each cross layer's ``k_proj`` / ``v_proj``
gets an instance ``forward`` that reuses its stored output while the very same source tensor (same object, same
``_version``) and the same weights (same storage, dtype and version) come in, and computes (and stores) otherwise.
A new chunk brings a new cache, so step 0 always computes; training forwards (no cache) always compute.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["CrossKVReuse"]


def _stamp(t: torch.Tensor | None) -> tuple:
    """What identifies a tensor's contents here: storage, dtype, shape and in-place version (inference tensors have
    no version counter: their identity and storage stand for it)."""
    if t is None:
        return ()
    return (t.data_ptr(), t.dtype, t.shape, None if t.is_inference() else t._version)


class _Projection:
    """One cross layer's ``k_proj`` or ``v_proj``: reuses its output for the same cached source tensor."""

    def __init__(self, owner: CrossKVReuse, linear: nn.Linear, which: str):
        self.owner, self.linear, self.which = owner, linear, which
        self.previous = linear.__dict__.get("forward")
        self.source: torch.Tensor | None = None  # the cached tensor the stored output was projected from
        self.key: tuple = ()
        self.output: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [B, S, H_kv * d] (the cached prefix keys or values, reshaped) -> [B, S, H_kv * d_expert]
        source = self.owner.reading.get(self.which)
        key = (_stamp(source), _stamp(self.linear.weight), _stamp(self.linear.bias), x.shape, x.dtype)
        if source is not None and not self.linear.training and source is self.source and key == self.key:
            return self.output
        forward = self.previous if self.previous is not None else type(self.linear).forward.__get__(self.linear)
        out = forward(x)
        self.source, self.key, self.output = source, key, out
        return out

    def install(self) -> None:
        self.linear.forward = self.forward

    def uninstall(self) -> None:
        if self.linear.__dict__.get("forward") != self.forward:
            raise RuntimeError("the forward of an expert k_proj/v_proj was replaced after CrossKVReuseConfig was "
                               "applied; remove that change first (undo in reverse order)")
        if self.previous is None:
            del self.linear.__dict__["forward"]
        else:
            self.linear.forward = self.previous
        self.source = self.output = None


class CrossKVReuse:
    """Installed on a ``SmolVLMWithExpertModel``; ``remove()`` restores it exactly."""

    def __init__(self, joint: nn.Module):
        self.joint = joint
        self.reading: dict[str, torch.Tensor] = {}  # the cached K and V the running cross layer reads
        n = joint.self_attn_every_n_layers
        cross = [layer for i, layer in enumerate(joint.lm_expert.layers)
                 if "cross" in joint.attention_mode and not (n > 0 and i % n == 0)]
        self.projections = [_Projection(self, layer.self_attn.k_proj, "keys") for layer in cross]
        self.projections += [_Projection(self, layer.self_attn.v_proj, "values") for layer in cross]
        self.previous = joint.__dict__.get("forward_cross_attn_layer")
        for p in self.projections:
            p.install()
        joint.forward_cross_attn_layer = self.forward_cross_attn_layer

    def forward_cross_attn_layer(self, model_layers, inputs_embeds, layer_idx, position_ids, attention_mask,
                                 batch_size, head_dim, use_cache: bool = True, past_key_values: Any = None):
        inner = self.previous if self.previous is not None else \
            type(self.joint).forward_cross_attn_layer.__get__(self.joint)
        if use_cache and past_key_values is not None:  # LeRobot then reads K, V of this layer from the cache
            slot = past_key_values.layers[layer_idx]
            self.reading = {"keys": slot.keys, "values": slot.values}
        try:
            return inner(model_layers, inputs_embeds, layer_idx, position_ids, attention_mask, batch_size, head_dim,
                         use_cache=use_cache, past_key_values=past_key_values)
        finally:
            self.reading = {}

    def clear(self) -> None:
        for p in self.projections:
            p.source = p.output = None

    def remove(self) -> None:
        if self.joint.__dict__.get("forward_cross_attn_layer") != self.forward_cross_attn_layer:
            raise RuntimeError("SmolVLA's forward_cross_attn_layer was replaced after CrossKVReuseConfig was applied; "
                               "remove that change first (undo in reverse order)")
        if self.previous is None:
            del self.joint.__dict__["forward_cross_attn_layer"]
        else:
            self.joint.forward_cross_attn_layer = self.previous
        for p in reversed(self.projections):
            p.uninstall()
