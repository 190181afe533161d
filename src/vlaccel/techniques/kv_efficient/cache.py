"""``ChunkedGatedCache``: the KV-Efficient chunked cache as a transformers ``Cache`` (arXiv 2509.21354).

Any transformers decoder accepts it as its cache argument (forward and ``generate()``; the keyword is named by
:func:`vlaccel.transformers_compat.cache_kwargs`); the reference policy's
history mode uses it when a :class:`KVEfficientConfig` is applied. Per layer, oldest to newest::

    [protected prefix P][retained summaries, s slots each][raw tail (< C)][recent window W, raw]

Each layer's ``update`` appends the new tokens raw and returns the whole layer, so the current block attends to
everything stored plus itself, exactly like ``DynamicCache``. When the last layer has been updated, the cache
compresses every layer at once: raw tokens older than the last W have left the window; every full chunk of C
of them is dropped or, when the retention summarises (:mod:`.retentions`, the table), summarised
(RoPE-correct, :mod:`.rope`) and handed to the retention policy (:mod:`.retention`), which says which
summaries stay. The policy reads the cache only through read-only views and keeps its own per-layer state;
the cache applies its decision. Dropped chunks vanish from K, V and the mask together; a decision is made
once per chunk for K and V and every KV head of a layer, for the whole batch. Batching the summaries, the LSTM step and the selection
over layers (one call instead of L) is what keeps the per-step overhead small; the result is the same as
compressing layer by layer, because a chunk's summary is only attended to from the next forward on.

Logical positions (``positions="logical"``) follow transformers' sliding-window layer: ``get_seq_length()`` is the
number of tokens ever seen (the next position id), ``get_mask_sizes(q)`` returns ``(stored + q, seen - stored)`` so
the causal mask places the stored entries before the new block. Re-indexed positions (``positions="reindexed"``,
StreamingLLM's choice, arXiv 2309.17453 section 3.2) give the stored slots the positions ``0 .. N-1`` they have in
the cache: after every eviction the remaining keys are re-rotated to their new slot, ``get_seq_length()`` is the
number of stored slots, and an episode never runs out of positions.

Transformers builds one attention mask for all full-attention layers, so every layer must hold the same number
of slots. Budget mode gives that by construction (each layer keeps its own best ``min(k, M)`` summaries).
Threshold mode therefore decides per chunk for the whole model: keep iff the layer- and batch-mean utility
g >= tau (the paper's per-layer threshold would need per-layer masks; padded slots are the official code's bug).
Held memory per layer between forwards: at most ``P + M*s + (C - 1) + W`` tokens in budget mode.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.cache_utils import Cache, CacheLayerMixin

from vlaccel.errors import VlaccelError
from vlaccel.techniques.kv_efficient.config import KVEfficientConfig
from vlaccel.techniques.kv_efficient.gate import KVGate, MeanAggregator
from vlaccel.techniques.kv_efficient.retention import ClosedChunks, LayerView, Retention, make_retention
from vlaccel.techniques.kv_efficient.rope import (
    RotaryFrame,
    apply_rotation,
    find_rotary,
    remove_rotation,
    representative_positions,
)

__all__ = ["ChunkedGatedCache", "ChunkedGatedLayer", "TokenCountMismatchError"]


class TokenCountMismatchError(VlaccelError, RuntimeError):
    pass


class ChunkedGatedLayer(CacheLayerMixin):
    """One decoder layer's storage and bookkeeping (keys/values ``[B, H_kv, N, d_h]``)."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, cache: ChunkedGatedCache, layer_idx: int):
        super().__init__()
        self.cache = cache
        self.layer_idx = layer_idx
        self.clear()

    # ------------------------------------------------------------------ state
    def clear(self) -> None:
        """Episode reset: drop every stored token and summary; the retention policy drops its state."""
        self.keys = self.values = None
        self.is_initialized = False
        self.seen = 0  # tokens ever appended = next logical position
        self.protect_len: int | None = None  # tokens that are never evicted (set at the first update)
        self.n_protected = 0
        self.n_chunks = 0  # chunks completed so far (ids of summaries)
        self.summary_pos = torch.zeros(0, dtype=torch.long)  # [k] representative position of each summary
        self.chunk_ids = torch.zeros(0, dtype=torch.long)  # [k] which chunk each retained summary came from
        self.cache.retention.reset(self.layer_idx)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        b, h, _, d = key_states.shape
        self.keys = key_states.new_zeros(b, h, 0, d)
        self.values = value_states.new_zeros(b, h, 0, value_states.shape[-1])
        self.summary_pos = self.summary_pos.to(self.device)
        self.chunk_ids = self.chunk_ids.to(self.device)
        self.is_initialized = True
        self.cache.retention.begin(self.view())

    def reset(self) -> None:
        self.clear()

    @property
    def n_summaries(self) -> int:
        return int(self.summary_pos.numel())

    @property
    def stored(self) -> int:
        return 0 if self.keys is None else int(self.keys.shape[-2])

    @property
    def raw_start(self) -> int:
        return self.n_protected + self.n_summaries * self.cache.slots

    @property
    def reindexed(self) -> bool:
        return self.cache.config.positions == "reindexed"

    @property
    def gate_g(self) -> torch.Tensor | None:
        """[B, k] gate output g of each retained summary (gated retention; held by the policy), else None."""
        return self.cache.retention.summary_gate(self.layer_idx)

    def view(self) -> LayerView:
        """The read-only snapshot of this layer that retention policies are given."""
        return LayerView(index=self.layer_idx, batch=int(self.keys.shape[0]), device=self.device,
                         n_protected=self.n_protected, n_summaries=self.n_summaries,
                         raw=self.stored - self.raw_start)

    def positions(self) -> torch.Tensor:
        """[N] position of every stored slot: logical (prefix, summaries at their representative positions, raw)
        or, re-indexed, the slot index itself."""
        raw = self.stored - self.raw_start
        dev = self.summary_pos.device
        if self.reindexed:
            return torch.arange(self.stored, device=dev)
        return torch.cat([torch.arange(self.n_protected, device=dev),
                          self.summary_pos.repeat_interleave(self.cache.slots),
                          torch.arange(self.seen - raw, self.seen, device=dev)])

    def ready_chunks(self) -> int:
        """Full chunks of raw tokens that have left the recent window."""
        over = self.stored - self.raw_start - self.cache.config.window
        return max(0, over) // self.cache.chunk

    # ------------------------------------------------------------------ transformers Cache API
    def get_seq_length(self) -> int:
        return self.stored if self.reindexed else self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.stored + query_length, self.get_seq_length() - self.stored

    def get_max_length(self) -> int:
        """No maximum (``-1``, as ``DynamicLayer``): the abstract method of transformers >= 5.20's ``CacheLayerMixin``."""
        return -1

    def get_max_cache_shape(self) -> int:
        """The same under its name before transformers PR #46862 (released after 5.5.4, renamed by 5.20):
        abstract in 5.5's ``CacheLayerMixin``, so the layer cannot be built there without it; unused on 5.20."""
        return self.get_max_length()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``[B, H_kv, q, d]`` new keys/values; return every stored slot plus them (compression happens
        after the model's last layer, see :meth:`ChunkedGatedCache.update`)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        cfg, q = self.cache.config, key_states.shape[-2]
        if self.protect_len is None:
            self.protect_len = (q if cfg.protect_prefix else 0) + cfg.sinks
        self.keys = torch.cat([self.keys, key_states], dim=-2)  # [B, H, N + q, d]
        self.values = torch.cat([self.values, value_states], dim=-2)
        self.seen += q
        # Protected tokens arrive before any raw token exists, so they are always the first stored slots.
        self.n_protected = min(self.seen, self.protect_len)
        if self.cache.retention.spec.needs_attention:
            self.cache.retention.on_update(self.view(), q)
        return self.keys, self.values

    def commit(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError("ChunkedGatedCache keeps per-episode gate state; beam search is not supported")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("ChunkedGatedCache does not support expanding the batch (num_return_sequences > 1)")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError("ChunkedGatedCache does not support selecting batch items")

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("ChunkedGatedCache cannot be cropped (evicted chunks cannot be restored)")

    def slot_bias(self) -> torch.Tensor:
        """[B, N] additive attention bias of the stored slots: log g on summary slots, 0 elsewhere (training)."""
        b, n = self.keys.shape[0], self.stored
        g = self.gate_g  # [B, k]; no gate: g = 1, log g = 0
        g = g if g is not None else torch.ones(b, self.n_summaries, device=self.device)
        log_g = torch.log(g.clamp_min(1e-6)).repeat_interleave(self.cache.slots, dim=1)  # [B, k*s]
        zeros = log_g.new_zeros(b, self.n_protected)
        return torch.cat([zeros, log_g, log_g.new_zeros(b, n - self.raw_start)], dim=1)


class _PlainDecoder:
    """What :meth:`ChunkedGatedCache.for_model` needs from a transformers model no adapter claims."""

    def lm_config(self, model: Any) -> Any:
        return model.config.get_text_config(decoder=True)

    def decoder_owner(self, model: Any) -> Any:
        return model


class ChunkedGatedCache(Cache):
    """KV-Efficient chunked cache (see the module docstring). Build it with :meth:`for_model` or directly.

    Args:
        config: the :class:`KVEfficientConfig`.
        num_layers: decoder layers (one cache layer each; built from the *current* LM config, so layer pruning works).
        chunk: tokens per chunk (resolves ``config.chunk=None``).
        rotary: the model's ``rotary_emb`` module (needed by every summarising retention).
        head_dim: head size (needed to check the rotary embedding).
        gate: a :class:`KVGate` (``retention="gated"``).
        soft: training relaxation: every summary stays, ``slot_bias()`` gives log g for the attention logits.
    """

    def __init__(self, config: KVEfficientConfig, num_layers: int, *, chunk: int | None = None,
                 rotary: nn.Module | None = None, head_dim: int | None = None, gate: KVGate | None = None,
                 soft: bool = False):
        chunk = chunk if chunk is not None else config.chunk
        if chunk is None or chunk < 1:
            raise ValueError("ChunkedGatedCache needs a chunk size: set KVEfficientConfig(chunk=...) "
                             "(None means the tokens of one observation, which only a VLA adapter knows)")
        if config.summary_slots > chunk:
            raise ValueError(f"summary_slots={config.summary_slots} > chunk={chunk}")
        spec = config.retention_spec
        if spec.summarises and rotary is None:
            raise ValueError(
                f"retention={config.retention!r} re-rotates summary keys, which needs a RoPE model (a module with "
                "`rotary_emb`); this model has none. Use retention='streaming' or 'full'."
            )
        if spec.needs_gate and gate is None:
            raise ValueError(f"retention={config.retention!r} needs a trained gate (KVGate); see KVEfficientConfig.gate")
        if config.positions == "reindexed" and rotary is None:
            raise ValueError("positions='reindexed' re-rotates the stored keys to their slot, which needs a RoPE model "
                             "(a module with `rotary_emb`); this model has none. Use positions='logical'.")
        self.config = config
        self.chunk = int(chunk)
        self.slots = config.summary_slots
        self.soft = soft
        self.gate = gate
        self.rope = RotaryFrame(rotary, head_dim or 0) if rotary is not None else None
        self.aggregator = gate.aggregator if gate is not None else MeanAggregator(self.slots)
        self.retention: Retention = make_retention(config, chunk=self.chunk, gate=gate, soft=soft)
        self._block_tokens: int | None = None
        super().__init__(layers=[ChunkedGatedLayer(self, i) for i in range(num_layers)])

    # ------------------------------------------------------------------ construction from a model
    @classmethod
    def for_model(cls, model: Any, config: KVEfficientConfig, *, gate: KVGate | None = None,
                  chunk: int | None = None, soft: bool = False) -> ChunkedGatedCache:
        """A cache for ``model`` (a VLA with an adapter, or a transformers decoder) from its current config.

        ``gate``: an already loaded gate; otherwise ``config.gate`` (or the shipped one) is loaded and its
        policy fingerprint checked against ``model``.
        """
        from vlaccel.adapters import UnsupportedModelError, get_adapter
        from vlaccel.techniques.kv_efficient.resolve import resolve_chunk, resolve_gate

        try:
            adapter = get_adapter(model)
        except UnsupportedModelError:  # any transformers decoder: its text config and rotary_emb are enough
            adapter = _PlainDecoder()
        lm_cfg = adapter.lm_config(model)
        chunk = chunk if chunk is not None else resolve_chunk(config, model, adapter)
        if config.retention_spec.needs_gate and gate is None:
            gate = resolve_gate(config, model, adapter)
        head_dim = getattr(lm_cfg, "head_dim", None) or lm_cfg.hidden_size // lm_cfg.num_attention_heads
        return cls(config, lm_cfg.num_hidden_layers, chunk=chunk, rotary=find_rotary(adapter.decoder_owner(model)),
                   head_dim=head_dim, gate=gate, soft=soft)

    # ------------------------------------------------------------------ Cache API
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        q = key_states.shape[-2]
        if layer_idx == 0:
            self._block_tokens = q
        elif q != self._block_tokens:
            raise TokenCountMismatchError(
                f"KV-Efficient cache: layer {layer_idx} received {q} new tokens but layer 0 received "
                f"{self._block_tokens} in the same forward. Chunks and the shared attention mask need every layer "
                "to store the same tokens; a technique that drops tokens inside the LM (TokenPruneConfig) cannot "
                "be combined with KVEfficientConfig."
            )
        out = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        if layer_idx == len(self.layers) - 1 and self.retention.spec.evicts:
            n = self.layers[0].ready_chunks()
            if n:
                self._compress(n)
        return out

    def reset(self) -> None:
        """New episode: every layer's storage, summaries, utilities and LSTM state are cleared."""
        for layer in self.layers:
            layer.clear()
        self._block_tokens = None

    def observe_attention(self, layer_idx: int, probs: torch.Tensor) -> None:
        """Attention probabilities ``[B, H, q, N]`` of the last forward of ``layer_idx`` (H2O-like retention)."""
        self.retention.observe(self.layers[layer_idx].view(), probs)

    # ------------------------------------------------------------------ compression (all layers at once)
    def _compress(self, n: int) -> None:
        """Drop, or summarise, the ``n`` oldest full raw chunks of every layer; the retention policy says which
        summaries stay and the cache applies it."""
        layers, c, s = self.layers, self.chunk, self.slots
        top = layers[0]  # every layer holds the same layout (same tokens, same counts)
        p, k, start = top.n_protected, top.n_summaries, top.raw_start
        end, stored = start + n * c, top.stored
        # position the oldest raw token is rotated at: logical, or (re-indexed) its slot
        first = start if top.reindexed else top.seen - (top.stored - start)
        chunk_pos = torch.arange(first, first + n * c, device=top.device).view(n, c)  # [n, C]
        dev = top.device
        tail_pos = torch.arange(end, stored, device=dev)  # re-indexed: where the raw tail is rotated now
        first_id = top.n_chunks
        ids = torch.arange(first_id, first_id + n, device=top.device)  # [n]
        for layer in layers:
            layer.n_chunks += n
        if not self.retention.spec.summarises:  # streaming: the chunks just leave
            for layer in layers:
                layer.commit(torch.cat([layer.keys[:, :, :start], layer.keys[:, :, end:]], -2),
                             torch.cat([layer.values[:, :, :start], layer.values[:, :, end:]], -2))
                if layer.reindexed:
                    self._move_to_slots(layer, torch.cat([torch.arange(start, device=dev), tail_pos]))
            return
        seg_k = torch.stack([layer.keys[:, :, start:end] for layer in layers])  # [L, B, H, n*C, d]
        seg_v = torch.stack([layer.values[:, :, start:end] for layer in layers])
        sk, sv, sk_plain, sv_plain, rep = self.summarise(seg_k.flatten(0, 1), seg_v.flatten(0, 1), chunk_pos)
        shape = (len(layers), -1, *sk.shape[1:])  # [L, B, H, n, s, d]
        sk, sv, sk_plain, sv_plain = (t.view(shape) for t in (sk, sv, sk_plain, sv_plain))
        closed = ClosedChunks(tuple(layer.view() for layer in layers), first_id, n, sk_plain, sv_plain)
        keep = self.retention.on_chunks_closed(closed)  # [L, k'] ascending per layer, or None = keep all
        b, h, d, dv = seg_k.shape[1], seg_k.shape[2], seg_k.shape[-1], seg_v.shape[-1]
        for i, layer in enumerate(layers):
            k_all = torch.cat([layer.keys[:, :, p:start].reshape(b, h, k, s, d), sk[i]], dim=2)  # [B, H, k+n, s, d]
            v_all = torch.cat([layer.values[:, :, p:start].reshape(b, h, k, s, dv), sv[i]], dim=2)
            pos, cid = torch.cat([layer.summary_pos, rep]), torch.cat([layer.chunk_ids, ids])  # [k+n]
            if keep is not None:
                k_all, v_all = k_all.index_select(2, keep[i]), v_all.index_select(2, keep[i])
                pos, cid = pos[keep[i]], cid[keep[i]]
            layer.summary_pos, layer.chunk_ids = pos, cid
            layer.commit(torch.cat([layer.keys[:, :, :p], k_all.flatten(2, 3), layer.keys[:, :, end:]], dim=-2),
                         torch.cat([layer.values[:, :, :p], v_all.flatten(2, 3), layer.values[:, :, end:]], dim=-2))
            if layer.reindexed:
                # where each kept summary slot is rotated now: old summaries at their slots, new ones at rep
                slot_pos = torch.cat([torch.arange(p, start, device=dev).view(k, s), rep.view(n, 1).expand(n, s)])
                if keep is not None:
                    slot_pos = slot_pos.index_select(0, keep[i])
                self._move_to_slots(layer, torch.cat([torch.arange(p, device=dev), slot_pos.flatten(), tail_pos]))
                layer.summary_pos = p + s * torch.arange(layer.n_summaries, device=dev)  # each summary's first slot

    def _move_to_slots(self, layer: ChunkedGatedLayer, rotated_at: torch.Tensor) -> None:
        """Re-indexed positions: re-rotate ``layer``'s keys from ``rotated_at`` [N] to their slots 0 .. N-1."""
        slots = torch.arange(layer.stored, device=rotated_at.device)
        moved = (rotated_at != slots).nonzero().flatten()  # the prefix and everything before the first eviction stay
        if moved.numel() == 0:
            return
        lo = int(moved[0])  # every slot after the first moved one has moved (evictions only shift slots down)
        like = layer.keys.new_empty(0, dtype=torch.float32)
        cos, sin = self.rope.cos_sin(torch.cat([rotated_at[lo:], slots[lo:]]), like)  # [2 (N - lo), d]
        m = layer.stored - lo
        plain = remove_rotation(layer.keys[:, :, lo:].float(), cos[:m], sin[:m])  # [B, H, N - lo, d]
        moved_keys = apply_rotation(plain, cos[m:], sin[m:]).to(layer.keys.dtype)
        layer.commit(torch.cat([layer.keys[:, :, :lo], moved_keys], dim=-2), layer.values)

    def summarise(self, seg_k: torch.Tensor, seg_v: torch.Tensor, chunk_pos: torch.Tensor):
        """Raw chunks -> RoPE-correct summaries.

        seg_k/seg_v: [B', H, n*C, d] (keys rotated at ``chunk_pos`` [n, C]). Returns rotated summary keys and
        values [B', H, n, s, d] (cache dtype), the position-free keys and values (float32, for the gate) and the
        representative positions [n].
        """
        b, h, _, d = seg_k.shape
        n, c = chunk_pos.shape
        like = seg_k.new_empty(0, dtype=torch.float32)
        rep = representative_positions(chunk_pos)  # [n]
        cos, sin = self.rope.cos_sin(torch.cat([chunk_pos.flatten(), rep]), like)  # [n*C + n, d], one rotary call
        k_plain = remove_rotation(seg_k.float(), cos[: n * c], sin[: n * c]).view(b, h, n, c, d)  # [B', H, n, C, d]
        v = seg_v.float().view(b, h, n, c, seg_v.shape[-1])
        w = self.aggregator.weights(k_plain, v)  # [B', H, n, s, C]
        sk_plain, sv = w @ k_plain, w @ v  # [B', H, n, s, d]
        rcos, rsin = cos[n * c:].unsqueeze(1), sin[n * c:].unsqueeze(1)  # [n, 1, d]: every slot at its chunk centre
        sk = apply_rotation(sk_plain, rcos, rsin)
        return sk.to(seg_k.dtype), sv.to(seg_v.dtype), sk_plain, sv, rep

    # ------------------------------------------------------------------ measurement helpers
    def stored_tokens(self) -> list[int]:
        """Slots held per layer."""
        return [layer.stored for layer in self.layers]

    def kv_bytes(self) -> int:
        """Bytes held by the key and value tensors of every layer."""
        return int(sum(t.nbytes for layer in self.layers if layer.is_initialized for t in (layer.keys, layer.values)))

    def retained_chunks(self, layer_idx: int = 0) -> list[int]:
        """Ids (0 = first chunk of the episode) of the chunks whose summaries ``layer_idx`` holds."""
        return self.layers[layer_idx].chunk_ids.tolist()
