"""``TokenPruneConfig``: EfficientVLA's task-aware + diversity visual-token selection (arXiv 2506.10100, Sec. 3.3).

At decoder layer K (``layer``, default 2; counted among the *current* layers, i.e. after layer pruning) every
token of the observation block is processed; from layer K+1 on only the ``keep_tokens`` selected visual tokens
(plus every non-visual token of the block) remain. They keep their original order and position ids, and the
dropped ones never enter the KV cache of layers > K (layers <= K cache everything), so in history mode later
frames see the kept tokens only from layer K+1 on. The cognition token stays last, which is what the policy reads.

Selection (``method="efficientvla"``, paper Eqs. 2-5), see :func:`select_visual_tokens`:
relevance r -> min-max normalised s; ``k_key`` top-s tokens; ``floor(alpha * K_aug)`` next-highest s;
the rest of the budget by diversity ``1 - max_k cos(v_j, v_key_k)``, one-shot top-k.

Relevance, our layout decision (the spec's, as the paper's direction is impossible in a causal decoder): the
reference policy keeps the instruction as a KV-cache *prefix* (needed for history mode), so instruction tokens
never attend to later visual tokens. We therefore score the visual keys with the instruction tokens' layer-K
queries: ``r_i = sum_j mean_h softmax_i(q_j . k_i / sqrt(d))``, the softmax running over the visual keys i of
the current observation. q_j (post-RoPE, at their own positions) is captured once per episode, while the
instruction prefix runs (a pre-hook on layer K recomputes ``q_proj`` through the adapter); k_i is read from
layer K's KV cache right after layer K ran. Only this [H, L_instr, N] matmul is extra: every layer keeps SDPA.
Cosine features: the visual tokens' hidden states output by layer K.

Baselines through the same config:
  ``"fastv"``: score = attention probability the block's *last* token (the cognition token) gives each visual
  token at layer K (softmax over every key it sees, heads averaged); top ``keep_tokens``.
  ``"random"``: a uniformly random subset from a ``torch.Generator`` seeded with ``seed`` at apply and at every
  episode reset (so each episode, and each ``predict_action``, sees the same subset sequence).
  ``"diversity"``: diversity-only, i.e. ``k_key`` key tokens by relevance, then every other slot by diversity
  to them (``alpha = 0``).

Several images per observation (pi0's cameras): ``keep_tokens`` is the budget per image (the adapter's
``visual_tokens`` counts one image), and ``keep_tokens x images`` tokens are chosen jointly over all of them.

Mechanism: a forward pre-hook on layer K (query capture), a forward hook on layer K returning the shortened
hidden states, and pre-hooks on layers > K subsetting ``position_embeddings``, ``position_ids`` and the
``attention_mask`` (rows = kept queries, columns = that layer's cached past + the kept new tokens). Decoder
stacks coupled to the LM (``ModelAdapter.coupled_decoders``: pi0's action expert, whose layer i attends to the
LM's cache slot i) get a pre-hook on each layer reading a slot of a layer > K: its mask keeps the columns of the
prefix tokens that slot holds, so every flow step attends to the shortened prefix.
Only observation blocks are pruned; other forwards (the instruction prefix, the whole-history training
forward, ``generate()``'s decode steps) keep all their tokens, and layers > K then read the columns of their
shorter cache from the mask. On transformers VLMs (:mod:`vlaccel.adapters.hf_vlm`) the observation block is a
forward with image tokens, the instruction is the text after the image in the same block, and the per-episode
reset happens at each new sequence; outputs (logits) then cover the kept positions only.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F

from vlaccel.config import TechniqueConfig
from vlaccel.transformers_compat import forward_cache

__all__ = ["TokenPruneConfig", "select_visual_tokens", "instruction_relevance"]

METHODS = ("efficientvla", "fastv", "random", "diversity")
PAPER_LAYER = 2  # the decoder layer whose attention scores the tokens in EfficientVLA
_USES_KEY = ("efficientvla", "diversity")


@dataclasses.dataclass(frozen=True)
class TokenPruneConfig(TechniqueConfig):
    """Keep ``keep_tokens`` visual tokens per observation after decoder layer ``layer``.

    Valid ``keep_tokens``: (k_key, N] for efficientvla / diversity, [1, N] for fastv / random, where N is the
    policy's visual tokens per image (per observation for a one-image policy); ``keep_tokens == N`` is neutral. ``seed`` is used by "random" only.
    ``keep_fraction`` states the kept share instead (the paper keeps 56 of 256), resolved at apply time to
    ``max(min_keep, round_half_up(N * keep_fraction))``. ``layer=None`` is the paper's layer 2, or on a decoder
    too shallow for it (counting layer pruning applied with it) the last layer that still has a later one.
    Never combined with KV-Efficient's chunked cache (declared there).
    """

    keep_tokens: int | None = None
    layer: int | None = 2
    k_key: int = 4
    alpha: float = 0.5
    method: str = "efficientvla"
    seed: int = 0

    keep_fraction: float | None = None

    name = "token_prune"
    handler = "vlaccel.techniques.token_prune:TokenPruneHandler"
    order = 30
    requires = ("decoder_layers", "visual_tokens")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if (self.keep_tokens is None) == (self.keep_fraction is None):
            raise ValueError("TokenPruneConfig needs exactly one of keep_tokens=N or keep_fraction=F")
        if self.keep_fraction is not None and (isinstance(self.keep_fraction, bool) or not isinstance(
                self.keep_fraction, (int, float)) or not 0 < self.keep_fraction <= 1):
            raise ValueError(f"keep_fraction must be in (0, 1] (the share of visual tokens kept), got "
                             f"{self.keep_fraction!r}")
        for field in ("keep_tokens", "layer", "k_key", "seed"):
            value = getattr(self, field)
            if not isinstance(value, int) and not (value is None and field in ("keep_tokens", "layer")):
                raise ValueError(f"TokenPruneConfig.{field} must be an integer, got {value!r}")
        if self.layer is not None and self.layer < 0:
            raise ValueError(f"layer must be >= 0 (the decoder layer whose attention scores the tokens), got {self.layer}")
        if self.k_key < 1:
            raise ValueError(f"k_key must be >= 1, got {self.k_key}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] (share of the budget after the key tokens chosen by relevance), "
                             f"got {self.alpha!r}")
        if self.keep_tokens is not None and self.keep_tokens < self.min_keep():
            raise ValueError(f"keep_tokens={self.keep_tokens} is too small: method {self.method!r} needs "
                             f"keep_tokens >= {self.min_keep()}" + (" (> k_key)" if self.method in _USES_KEY else ""))

    def min_keep(self) -> int:
        return self.k_key + 1 if self.method in _USES_KEY else 1

    def resolve(self, model: Any, adapter: Any, pending: tuple = ()) -> TokenPruneConfig:
        from vlaccel.techniques.layer_prune import planned_layers

        keep, layer = self.keep_tokens, self.layer
        if keep is None:
            keep = max(self.min_keep(), int(adapter.visual_tokens(model) * self.keep_fraction + 0.5))
        if layer is None:
            own = adapter.token_prune_handler(model)  # a model pruned by its adapter's handler names its layer
            layer = own.DEFAULT_LAYER if own is not None else max(0, min(PAPER_LAYER, planned_layers(
                model, adapter, pending) - 2))
        return dataclasses.replace(self, keep_tokens=keep, layer=layer, keep_fraction=None)

    def is_neutral(self, model: Any, adapter: Any) -> bool:
        return self.keep_tokens >= adapter.visual_tokens(model)


# ---------------------------------------------------------------------------------------------- selection (pure)
def _descending(scores: torch.Tensor) -> torch.Tensor:
    """Indices sorting scores [B, N] high to low; ties keep the lower index first."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices


def select_visual_tokens(relevance: torch.Tensor, features: torch.Tensor, keep: int, k_key: int = 4,
                         alpha: float = 0.5) -> torch.Tensor:
    """EfficientVLA token selection (paper Eqs. 3-5). Returns LongTensor [B, keep], ascending.

    relevance: [B, N] task relevance r; features: [B, N, D] for the cosine diversity; k_key <= keep <= N.
      s = (r - min r) / (max r - min r)          (all zero when r is constant)
      V_key  = k_key highest s
      V_task = floor(alpha * (keep - k_key)) next-highest s
      V_div  = the remaining keep - k_key - K_task tokens of highest 1 - max_{k in V_key} cos(v_j, v_k),
               chosen among the others in one shot (not greedily)
    Ties always go to the lower token index. ``keep == k_key`` returns just the key tokens.
    """
    b, n = relevance.shape
    if not k_key <= keep <= n:
        raise ValueError(f"keep={keep} must be in [k_key={k_key}, N={n}]")
    lo, hi = relevance.amin(-1, keepdim=True), relevance.amax(-1, keepdim=True)
    s = (relevance - lo) / (hi - lo).clamp_min(torch.finfo(relevance.dtype).tiny)  # [B, N] in [0, 1]
    k_task = math.floor(alpha * (keep - k_key))
    by_s = _descending(s)  # [B, N]
    chosen = by_s[:, : k_key + k_task]  # [B, K_key + K_task]
    k_div = keep - k_key - k_task
    if k_div > 0:
        unit = F.normalize(features.float(), dim=-1)  # [B, N, D]
        key = unit.gather(1, by_s[:, :k_key, None].expand(-1, -1, unit.shape[-1]))  # [B, K_key, D]
        diversity = 1.0 - (unit @ key.transpose(1, 2)).amax(-1)  # [B, N]
        diversity = diversity.scatter(1, chosen, float("-inf"))  # only the rest compete
        chosen = torch.cat([chosen, _descending(diversity)[:, :k_div]], dim=1)
    return chosen.sort(dim=-1).values


def instruction_relevance(queries: torch.Tensor, keys: torch.Tensor, scaling: float) -> torch.Tensor:
    """r_i = sum_j mean_h softmax_i(q_j . k_i * scaling): queries [B, H, L, d], keys [B, H_kv, N, d] -> [B, N].

    The softmax runs over the N visual keys; KV heads are repeated for grouped-query attention.
    """
    keys = keys.repeat_interleave(queries.shape[1] // keys.shape[1], dim=1)  # [B, H, N, d]
    probs = torch.softmax((queries.float() @ keys.float().transpose(-1, -2)) * scaling, dim=-1)  # [B, H, L, N]
    return probs.mean(1).sum(1)  # [B, N]


def _last_token_attention(query: torch.Tensor, keys: torch.Tensor, scaling: float,
                          mask_row: torch.Tensor | None) -> torch.Tensor:
    """FastV score: attention probs of one query [B, H, 1, d] over all keys [B, H_kv, S, d], heads averaged -> [B, S]."""
    keys = keys.repeat_interleave(query.shape[1] // keys.shape[1], dim=1)
    logits = (query.float() @ keys.float().transpose(-1, -2)) * scaling  # [B, H, 1, S]
    if mask_row is not None:  # [B, 1|H, 1, S] bool (True = visible) or additive float
        logits = logits.masked_fill(~mask_row, float("-inf")) if mask_row.dtype == torch.bool else logits + mask_row
    return torch.softmax(logits, dim=-1).mean(1)[:, 0]  # [B, S]


# ---------------------------------------------------------------------------------------------- hooks
def _layer_keys(cache: Any, idx: int) -> torch.Tensor:
    """Keys [B, H_kv, S, d] held by ``cache`` for layer ``idx`` (transformers v5 ``cache.layers[idx].keys``)."""
    keys = getattr(getattr(cache, "layers", [None] * (idx + 1))[idx], "keys", None) if cache is not None else None
    if not isinstance(keys, torch.Tensor):
        raise RuntimeError("token pruning reads layer K's keys from the KV cache; run the LM with a transformers "
                           f"Cache exposing .layers[i].keys (got {type(cache).__name__})")
    return keys


def _gather_seq(x: torch.Tensor, idx: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """x [B|1, T, ...] gathered along ``dim`` with idx [B, T'] (x's batch is broadcast)."""
    idx = idx.view(*idx.shape, *([1] * (x.dim() - dim - 1)))
    shape = list(x.shape)
    shape[0], shape[dim] = idx.shape[0], idx.shape[1]
    return x.expand(idx.shape[0], *x.shape[1:]).gather(dim, idx.expand(shape))


class _TokenPruner:
    """Hook state; see the module docstring for the data flow."""

    def __init__(self, model: Any, config: TokenPruneConfig, adapter: Any):
        self.model, self.config, self.adapter = model, config, adapter
        self.layers = list(adapter.decoder_layers(model))
        self.k = config.layer
        attn = adapter.attention_module(model, self.layers[self.k])
        self.attn_idx = attn.layer_idx  # this layer's slot in the KV cache
        self.next_idx = adapter.attention_module(model, self.layers[self.k + 1]).layer_idx
        self.scaling = float(getattr(attn, "scaling", attn.head_dim ** -0.5))
        self.per_image = adapter.visual_tokens(model)
        pruned_slots = {adapter.attention_module(model, layer).layer_idx for layer in self.layers[self.k + 1:]}
        self.readers = [layer for stack in adapter.coupled_decoders(model) for layer in stack.layers
                        if adapter.attention_module(model, layer).layer_idx in pruned_slots]
        self.reader_mask: tuple[Any, torch.Tensor] | None = None  # (the mask given, the narrowed one) of this step
        self.handles: list[Any] = []
        self.instr_q: torch.Tensor | None = None  # [B, H, L_instr, d], captured during the prefix
        self.generator: torch.Generator | None = None
        self.columns: torch.Tensor | None = None  # [B, P]: full-sequence positions held by layers > K's cache
        self.fwd: dict[str, Any] | None = None  # the current forward's context
        self.reset()

    # -- lifecycle
    def install(self) -> None:
        layer = self.layers[self.k]
        self.handles.append(layer.register_forward_pre_hook(self._pre_k, with_kwargs=True))
        self.handles.append(layer.register_forward_hook(self._post_k, with_kwargs=True))
        for later in self.layers[self.k + 1:]:
            self.handles.append(later.register_forward_pre_hook(self._pre_later, with_kwargs=True))
        for reader in self.readers:
            self.handles.append(reader.register_forward_pre_hook(self._pre_reader, with_kwargs=True))
        self.handles.append(self.adapter.register_reset_hook(self.model, self.reset))
        self.handles.append(self.adapter.track_layout(self.model))

    def reset(self) -> None:
        self.instr_q, self.columns, self.fwd, self.reader_mask = None, None, None, None
        if self.config.method == "random":
            self.generator = torch.Generator().manual_seed(self.config.seed)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.reset()

    # -- layer K, before: capture queries
    def _pre_k(self, layer, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]  # [B, T, D]
        layout = self.adapter.token_layout(self.model)
        self.fwd = {"layout": layout, "mask": kwargs.get("attention_mask"), "cache": forward_cache(kwargs)}
        if layout is None:
            return None
        cos, sin = kwargs["position_embeddings"]  # [B|1, T, d]
        if self.config.method in _USES_KEY and layout.kind in ("prefix", "observation") and layout.instruction is not None:
            # the instruction is a prefix (reference VLA) or the text of the observation's own block (VLMs)
            sl = layout.instruction
            self.instr_q = self.adapter.attention_queries(self.model, layer, hidden[:, sl], (cos[:, sl], sin[:, sl]))
        elif self._prunes(layout) and self.config.method == "fastv":
            self.fwd["last_q"] = self.adapter.attention_queries(self.model, layer, hidden[:, -1:],
                                                                 (cos[:, -1:], sin[:, -1:]))  # [B, H, 1, d]
        return None

    def _budget(self, visual: slice) -> int:
        """Visual tokens kept of this block's span: ``keep_tokens`` per image."""
        return self.config.keep_tokens * max(1, (visual.stop - visual.start) // self.per_image)

    def _prunes(self, layout: Any) -> bool:
        return (layout is not None and layout.kind == "observation" and layout.visual is not None
                and layout.visual.stop - layout.visual.start > self._budget(layout.visual))

    # -- layer K, after: score, select, shorten
    def _post_k(self, layer, args, kwargs, output):
        hidden = output[0] if isinstance(output, tuple) else output  # [B, T, D]
        fwd, cache = self.fwd, forward_cache(kwargs)
        if fwd is None:
            return None
        b, t = hidden.shape[:2]
        past_full = self._past_full(fwd["mask"], cache, t)
        previous = self._cached_columns(cache, b, past_full, hidden.device)
        if not self._prunes(fwd["layout"]):
            if previous is not None:
                every = torch.arange(t, device=hidden.device).expand(b, t)  # [B, T]
                if previous.shape[1] != past_full:  # layers > K hold fewer tokens (e.g. generate()'s decode steps)
                    fwd["keep"], fwd["mask"] = every, self._later_mask(fwd["mask"], every, previous, past_full)
                else:
                    self.fwd = None
                self.columns = torch.cat([previous, past_full + every], 1)
            else:
                self.fwd = None
            return None
        vis = fwd["layout"].visual
        sel = self._select(hidden, vis, cache, fwd, past_full)  # [B, keep] within the visual span
        keep = torch.cat([torch.arange(vis.start, device=hidden.device).expand(b, -1), vis.start + sel,
                          torch.arange(vis.stop, t, device=hidden.device).expand(b, -1)], dim=1)  # [B, T']
        fwd["keep"] = keep
        fwd["mask"] = self._later_mask(fwd["mask"], keep, previous, past_full)
        if previous is not None:
            self.columns = torch.cat([previous, past_full + keep], dim=1)
        short = hidden.gather(1, keep[..., None].expand(-1, -1, hidden.shape[-1]))  # [B, T', D]
        return (short, *output[1:]) if isinstance(output, tuple) else short

    def _select(self, hidden, vis, cache, fwd, past_full) -> torch.Tensor:
        cfg, n, keep = self.config, vis.stop - vis.start, self._budget(vis)
        b = hidden.shape[0]
        if cfg.method == "random":
            return torch.rand(b, n, generator=self.generator).argsort(-1)[:, :keep].sort(-1).values.to(hidden.device)
        keys = _layer_keys(cache, self.attn_idx)  # [B, H_kv, S, d], this block included
        if cfg.method == "fastv":
            mask = fwd["mask"]
            row = mask[:, :, -1:, :] if isinstance(mask, torch.Tensor) else None
            probs = _last_token_attention(fwd["last_q"], keys, self.scaling, row)  # [B, S]
            score = probs[:, past_full + vis.start: past_full + vis.stop]  # [B, N]
            return _descending(score)[:, :keep].sort(-1).values
        if self.instr_q is None:
            raise RuntimeError("TokenPruneConfig(method=%r) scores visual tokens with the instruction's queries, "
                               "captured when the instruction prefix runs: call policy.reset(instruction) (or "
                               "predict_action) after vlaccel.apply" % cfg.method)
        seq = keys.shape[2]
        vis_keys = keys[:, :, seq - hidden.shape[1] + vis.start: seq - hidden.shape[1] + vis.stop]  # [B, H_kv, N, d]
        relevance = instruction_relevance(self.instr_q, vis_keys, self.scaling)  # [B, N]
        alpha = cfg.alpha if cfg.method == "efficientvla" else 0.0
        return select_visual_tokens(relevance, hidden[:, vis], keep, cfg.k_key, alpha)

    # -- bookkeeping of what layers > K hold
    @staticmethod
    def _past_full(mask: Any, cache: Any, t: int) -> int:
        """Cached tokens before this block, in the full (unpruned, layer-0) sequence."""
        if isinstance(mask, torch.Tensor):
            return mask.shape[-1] - t
        return cache.get_seq_length() - t if cache is not None else 0

    def _cached_columns(self, cache: Any, b: int, past_full: int, device: torch.device) -> torch.Tensor | None:
        """Full-sequence positions [B, P] currently in layers > K's cache (None without a cache)."""
        if cache is None:
            return None
        held = cache.get_seq_length(self.next_idx)
        if held == 0:
            return torch.zeros(b, 0, dtype=torch.long, device=device)
        if self.columns is not None and self.columns.shape == (b, held):
            return self.columns
        if held == past_full:  # prefilled without pruning (e.g. before apply)
            return torch.arange(past_full, device=device).expand(b, -1)
        raise RuntimeError(f"layer {self.k + 1}'s KV cache holds {held} tokens, which token pruning did not put there; "
                           "was the cache edited by another technique, or filled before vlaccel.apply?")

    @staticmethod
    def _later_mask(mask: Any, keep: torch.Tensor, previous: torch.Tensor | None, past_full: int) -> Any:
        """The mask for layers > K: rows = kept queries, columns = their cached past + kept new tokens."""
        if previous is None:  # no cache: nothing in the past
            previous = keep.new_zeros(keep.shape[0], 0)
        if not isinstance(mask, torch.Tensor):
            if previous.shape[1] and keep.shape[1] > 1:
                raise RuntimeError("token pruning needs an explicit attention mask when the block has a cached past")
            return None  # no past (SDPA's is_causal over the kept tokens is exact), or one query that sees it all
        columns = torch.cat([previous, past_full + keep], dim=1)  # [B, P + T']
        mask = mask.expand(keep.shape[0], *mask.shape[1:])  # [B, 1|H, T, S]
        rows = mask.gather(2, keep[:, None, :, None].expand(-1, mask.shape[1], -1, mask.shape[3]))  # [B, h, T', S]
        return rows.gather(3, columns[:, None, None, :].expand(-1, mask.shape[1], keep.shape[1], -1))

    # -- layers > K: shorter block
    def _pre_later(self, layer, args, kwargs):
        fwd = self.fwd
        if fwd is None or "keep" not in fwd:
            return None
        keep = fwd["keep"]
        cos, sin = kwargs["position_embeddings"]
        kwargs["position_embeddings"] = (_gather_seq(cos, keep), _gather_seq(sin, keep))  # [B, T', d]
        if isinstance(kwargs.get("position_ids"), torch.Tensor):
            kwargs["position_ids"] = _gather_seq(kwargs["position_ids"], keep)  # [B, T']
        kwargs["attention_mask"] = fwd["mask"]
        return args, kwargs


    # -- coupled stacks (pi0's expert): layers reading a slot of a layer > K see the kept prefix columns only
    def _pre_reader(self, layer, args, kwargs):
        mask, columns = kwargs.get("attention_mask"), self.columns
        if columns is None:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]  # [B, S, D]: this block (state + action chunk)
        if not isinstance(mask, torch.Tensor):
            raise RuntimeError(f"token pruning narrows the attention mask of {type(layer).__name__}, which reads the "
                               "pruned prefix, and this forward passed none; use attention 'sdpa' or 'eager'")
        past_full = mask.shape[-1] - hidden.shape[1]  # the prefix as layer 0's slot holds it (every token)
        if columns.shape[1] == past_full:
            return None  # nothing pruned in this prefix
        self._drop_previous_step(layer, forward_cache(kwargs), columns.shape[1])
        if self.reader_mask is None or self.reader_mask[0] is not mask:  # one narrowing per step, shared by layers
            every = torch.arange(hidden.shape[1], device=mask.device).expand(columns.shape[0], -1)
            keep = torch.cat([columns, past_full + every], dim=1)  # [B, P' + S]
            full = mask.expand(keep.shape[0], *mask.shape[1:])  # [B, 1|H, S, P + S]
            narrowed = full.gather(3, keep[:, None, None, :].expand(-1, full.shape[1], full.shape[2], -1))
            self.reader_mask = (mask, narrowed)
        kwargs["attention_mask"] = self.reader_mask[1]
        return args, kwargs

    def _drop_previous_step(self, layer, cache: Any, prefix: int) -> None:
        """Leave ``layer``'s cache slot holding the ``prefix`` kept prefix tokens only.

        After each flow step pi0's ``sample_actions`` crops the cache back to the prefix: transformers 5.20 removes
        the tokens the step added from every slot (``crop(prefix_length - get_seq_length())``), but 5.5 (LeRobot
        0.6.1's 5.5.4) crops every slot to layer 0's absolute prefix length (``crop(prefix_length)``), so a slot
        of a layer > K, which holds fewer prefix tokens, keeps (part of) the previous step's state and action
        tokens. A negative ``crop`` removes that many tokens on both releases; on 5.20 there is none to remove.
        """
        if cache is None:
            return
        slot = cache.layers[self.adapter.attention_module(self.model, layer).layer_idx]
        stale = slot.get_seq_length() - prefix
        if stale > 0:
            slot.crop(-stale)


class TokenPruneHandler:
    def validate(self, model: Any, config: TokenPruneConfig, adapter: Any, pending: tuple = ()) -> None:
        from vlaccel.techniques.layer_prune import planned_layers

        own = adapter.token_prune_handler(model)  # a model whose own layer loop bypasses layer hooks (SmolVLA)
        if own is not None:
            return own.validate(model, config, adapter, pending)

        n = adapter.visual_tokens(model)  # raises for models without visual tokens
        self._check_layer(config, planned_layers(model, adapter, pending))
        lo = config.min_keep()
        if not lo <= config.keep_tokens <= n:
            raise ValueError(f"keep_tokens={config.keep_tokens} is outside [{lo}, {n}] for method {config.method!r}: "
                             f"this policy has N={n} visual tokens per observation"
                             + (f" and k_key={config.k_key} key tokens" if config.method in _USES_KEY else ""))
        impl = getattr(adapter.lm_config(model), "_attn_implementation", "sdpa")
        if impl not in ("sdpa", "eager"):
            raise NotImplementedError(f"token pruning rebuilds tensor attention masks; attention implementation "
                                      f"{impl!r} is not supported (use 'sdpa' or 'eager')")

    @staticmethod
    def _check_layer(config: TokenPruneConfig, total: int) -> None:
        if not 0 <= config.layer < total - 1:
            raise ValueError(f"layer={config.layer} is outside [0, {total - 2}]: the decoder has {total} layers "
                             "and pruning needs at least one layer after the scoring layer")

    def apply(self, model: Any, config: TokenPruneConfig, adapter: Any, prepared: None = None) -> Any:
        own = adapter.token_prune_handler(model)
        if own is not None:
            return own.apply(model, config, adapter, prepared)
        pruner = _TokenPruner(model, config, adapter)
        pruner.install()  # also when neutral: keeping every token goes through the same hooks
        return pruner
